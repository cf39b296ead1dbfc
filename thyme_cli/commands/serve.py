"""`thyme serve`: a local vLLM (CPU build, in an environment thyme manages) for --backend openai.

For trying the remote backend, and batch --jobs N, on a machine without a GPU. The server runs in
the foreground (Ctrl-C stops it); point thyme at it from another shell with
``--backend openai --base-url http://HOST:PORT/v1``. On a GPU machine run vLLM itself (docs/remote.md).
"""

from __future__ import annotations

import os

import typer

from thyme_cli.errors import UsageError
from thyme_cli.ui.console import handle_errors, info


@handle_errors
def serve(
    ctx: typer.Context,
    model: str | None = typer.Argument(
        None,
        help="A Hugging Face checkpoint: a local folder or a Hub repo id (e.g. Kwai-Keye/Thyme-RL; vLLM downloads it).",
    ),
    name: str | None = typer.Option(None, "--name", help="The model name the server answers to (default: MODEL)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="Port to listen on."),
    max_model_len: int = typer.Option(16384, "--max-model-len", min=512, help="Context length in tokens."),
    max_images: int = typer.Option(
        8,
        "--max-images",
        min=1,
        help="Most images in one request (the question's image plus the crops of its code steps).",
    ),
    max_pixels: int | None = typer.Option(
        None,
        "--max-pixels",
        min=3136,
        help="Resize larger images to at most this many pixels (Thyme trained with 2408448).",
    ),
    kv_cache_gib: int = typer.Option(4, "--kv-cache-gib", min=1, help="Memory for vLLM's KV cache on CPU (GiB)."),
    setup: bool = typer.Option(False, "--setup", help="Only create (or check) the vLLM environment."),
) -> None:
    """Serve a model with vLLM's CPU build for `--backend openai` (extra vLLM flags go after `--`).

    The API key, if any, comes from THYME_API_KEY (the same variable thyme's client reads).
    """
    from thyme_cli.models.serve.vllm_env import cpu_env, ensure_vllm, serve_args, setup_vllm

    if setup:
        env = setup_vllm(info)
        info(f"vLLM ready: {env.python} (" + ", ".join(f"{k} {v}" for k, v in env.versions.items()) + ")")
        return
    if model is None:
        raise UsageError("give the checkpoint to serve (a folder or a Hub repo id)", hint="see `thyme serve --help`")
    env = ensure_vllm(info)
    args = serve_args(
        model,
        name=name or model,
        host=host,
        port=port,
        max_model_len=max_model_len,
        max_images=max_images,
        max_pixels=max_pixels,
    )
    cmd = env.server_cmd(*args, *ctx.args)
    key = os.environ.get("THYME_API_KEY", "").strip() or None
    info(
        f"starting vLLM {env.versions.get('vllm', '')} on http://{host}:{port}/v1 "
        f"(model name {name or model}); Ctrl-C stops it"
    )
    os.execve(cmd[0], cmd, cpu_env(kv_cache_gib, key))
