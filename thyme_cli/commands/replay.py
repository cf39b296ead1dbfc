"""`thyme replay TRACE.json [--image OTHER]`: re-run a saved trace's code steps, without a model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from thyme_cli import defaults as d
from thyme_cli.commands import flags as o
from thyme_cli.errors import EXIT_RUNTIME
from thyme_cli.ui.console import handle_errors


@handle_errors
def replay(
    trace_path: Annotated[Path, typer.Argument(metavar="TRACE", help="A trace.json, or a run directory holding one.")],
    image: Annotated[
        Path | None, typer.Option("--image", help="Run the steps on this image instead of the trace's own.")
    ] = None,
    sandbox: o.SandboxOpt = o.SandboxChoice.auto,
    step_timeout: o.StepTimeoutOpt = d.STEP_TIMEOUT_S,
    step_images: o.StepImagesOpt = None,
    question_images: o.QuestionImagesOpt = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Where to put the new images (default: a new run directory).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as one JSON object.")] = False,
) -> None:
    """Re-execute a saved run's code steps in the sandbox and print each result.

    For debugging a run, and for checking what a trace's code does on another image.
    Exits 1 when any step fails.
    """
    settings = o.RunFlags.of(locals()).question_settings()
    from thyme_cli.question.loop import QuietEvents
    from thyme_cli.question.replay import replay_trace
    from thyme_cli.ui.render import LiveRenderer

    replayed = replay_trace(
        trace_path,
        settings,
        lambda run_dir: QuietEvents() if as_json else LiveRenderer(run_dir),
        image=image,
        out=out,
        trace_read=lambda: o.warn_if_unsandboxed(sandbox),
    )
    if as_json:
        payload = {
            "trace": str(trace_path),
            "image": str(replayed.image),
            "run_dir": str(replayed.run_dir),
            "steps": [vars(s) for s in replayed.steps],
            "failed_steps": replayed.failed,
        }
        typer.echo(json.dumps(payload, ensure_ascii=False))
    else:
        typer.echo(
            f"replayed {len(replayed.steps)} step(s) of {trace_path} on {replayed.image}; "
            f"{len(replayed.failed)} failed; images in {replayed.run_dir / 'images'}",
            err=True,
        )
    if replayed.failed:
        raise typer.Exit(EXIT_RUNTIME)
