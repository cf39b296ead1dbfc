"""`thyme batch`: many images, one model load, JSONL out, resumable and shardable."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from thyme_cli.commands import flags as o
from thyme_cli.errors import UsageError
from thyme_cli.ui.console import handle_errors


@handle_errors
@o.with_run_flags()
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
    resume: o.ResumeOpt = False,
    shard: o.ShardOpt = None,
    jobs: o.JobsOpt = 1,
    runs: o.RunsOpt = None,
    *,
    flags: o.RunFlags,
) -> None:
    """Ask questions about many images with one model load; one JSON line per item.

    Exit codes: 0 all items processed, 1 some items failed, 2 bad usage, 130 interrupted (resumable).
    """
    from thyme_cli.batch.execute import execute_batch
    from thyme_cli.batch.inputs import collect_items

    if inputs.count("-") > 1:
        raise UsageError("'-' (stdin) may be given only once")
    stdin = sys.stdin if "-" in inputs else None
    items = collect_items(inputs, question, stdin=stdin)
    o.warn_if_unsandboxed(flags.sandbox)
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
        assume_yes=flags.yes,
        interactive=sys.stdin.isatty() and sys.stderr.isatty() and stdin is None,
    )
    if summary.counts.get("failed"):
        raise typer.Exit(1)
