"""`thyme batch`: many images, one model load, JSONL out, resumable and shardable."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from thyme_cli import defaults as d
from thyme_cli.commands import flags as o
from thyme_cli.errors import UsageError
from thyme_cli.ui.console import handle_errors


@handle_errors
def batch(
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Directories (recursive), globs, manifests (.jsonl/.csv with image, question, id, "
            "answer), image files, or '-' for image paths on stdin."
        ),
    ],
    question: Annotated[
        str | None,
        typer.Option("--question", "-q", help="The question for every image (manifests may carry their own)."),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option("--output", "-o", help="JSONL results file, or '-' for stdout (default: results.jsonl)."),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted batch: skip items already in -o.")
    ] = False,
    shard: Annotated[
        str | None, typer.Option("--shard", help="Process only shard i of N (i/N, 1-based), for N machines.")
    ] = None,
    jobs: Annotated[
        int,
        typer.Option(
            "--jobs",
            "-j",
            min=1,
            max=256,
            help="Items in flight at once: parallel requests to a remote server, or with a "
            "local model sequences of one llama.cpp context decoded together.",
        ),
    ] = 1,
    runs: o.RunsOpt = None,
    model: o.ModelOpt = None,
    backend: o.BackendOpt = o.Backend.local,
    base_url: o.BaseUrlOpt = None,
    api_model: o.ApiModelOpt = None,
    protocol: o.ProtocolOpt = None,
    sandbox: o.SandboxOpt = o.SandboxChoice.auto,
    step_timeout: o.StepTimeoutOpt = d.STEP_TIMEOUT_S,
    step_images: o.StepImagesOpt = None,
    question_images: o.QuestionImagesOpt = None,
    keep_images: o.KeepImagesOpt = o.KeepImages.all,
    on_error: o.OnErrorOpt = o.OnError.show,
    max_turns: o.MaxTurnsOpt = d.MAX_TURNS,
    samples: o.SamplesOpt = d.SAMPLES,
    max_tokens: o.MaxTokensOpt = d.MAX_TOKENS,
    temperature: o.TemperatureOpt = d.TEMPERATURE,
    top_p: o.TopPOpt = d.TOP_P,
    top_k: o.TopKOpt = d.TOP_K,
    seed: o.SeedOpt = d.SEED,
    ctx: o.CtxOpt = None,
    max_image_tokens: o.MaxImageTokensOpt = None,
    gpu_layers: o.GpuLayersOpt = None,
    threads: o.ThreadsOpt = None,
    flash_attn: o.FlashAttnOpt = None,
    chat_format: o.ChatFormatOpt = None,
    chat_template: o.ChatTemplateOpt = None,
    yes: o.YesOpt = False,
    script: o.ScriptOpt = None,
) -> None:
    """Ask questions about many images with one model load; one JSON line per item.

    Exit codes: 0 all items processed, 1 some items failed, 2 bad usage, 130 interrupted (resumable).
    """
    flags = o.RunFlags.of(locals())
    from thyme_cli.batch.execute import execute_batch
    from thyme_cli.batch.inputs import collect_items

    if inputs.count("-") > 1:
        raise UsageError("'-' (stdin) may be given only once")
    stdin = sys.stdin if "-" in inputs else None
    items = collect_items(inputs, question, stdin=stdin)
    o.warn_if_unsandboxed(sandbox)
    model_settings, question_settings = flags.settings()
    summary = execute_batch(
        items,
        output=output or "results.jsonl",
        resume=resume,
        shard=shard,
        runs=runs,
        jobs=jobs,
        model_settings=model_settings,
        question_settings=question_settings,
        assume_yes=yes,
        interactive=sys.stdin.isatty() and sys.stderr.isatty() and stdin is None,
    )
    if summary.counts.get("failed"):
        raise typer.Exit(1)
