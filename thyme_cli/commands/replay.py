"""`thyme replay TRACE.json [--image OTHER]`: re-run a saved trace's code steps, without a model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

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
    step_timeout: o.StepTimeoutOpt = 30.0,
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
    from thyme_cli import paths
    from thyme_cli.question.assemble import prepare_input
    from thyme_cli.question.loop import QuietEvents
    from thyme_cli.question.trace import Step, new_run_dir, prepare_out_dir, read_trace
    from thyme_cli.sandbox.host.factory import open_sandbox
    from thyme_cli.ui.render import LiveRenderer

    limits = o.sandbox_limits(step_images, question_images)
    trace = read_trace(trace_path)
    run_of_trace = trace_path if trace_path.is_dir() else trace_path.parent
    source = image.expanduser() if image else run_of_trace / trace.image
    o.warn_if_unsandboxed(sandbox)
    created = out is None or not out.exists()
    run_dir = prepare_out_dir(out) if out else new_run_dir(paths.runs_dir(), "replay-" + trace.question)
    input_image = prepare_input(source, run_dir, label=str(source), remove_on_error=created)
    events = QuietEvents() if as_json else LiveRenderer(run_dir)
    results: list[Step] = []
    with open_sandbox(
        sandbox.value, image=input_image.path, images_dir=run_dir / "images", timeout_s=step_timeout, limits=limits
    ) as box:
        for old in trace.steps:
            events.step_started(old.index, old.code)
            result = box.run(old.code)
            images = [str(p.relative_to(run_dir)) for p in result.images]
            step = Step(
                old.index,
                old.code,
                result.stdout,
                result.stderr,
                result.error,
                result.timed_out,
                images,
                result.duration_s,
            )
            events.step_finished(step, result)
            results.append(step)
    failed = [s.index for s in results if s.error or s.timed_out]
    if as_json:
        payload = {
            "trace": str(trace_path),
            "image": str(source),
            "run_dir": str(run_dir),
            "steps": [vars(s) for s in results],
            "failed_steps": failed,
        }
        typer.echo(json.dumps(payload, ensure_ascii=False))
    else:
        typer.echo(
            f"replayed {len(results)} step(s) of {trace_path} on {source}; "
            f"{len(failed)} failed; images in {run_dir / 'images'}",
            err=True,
        )
    if failed:
        raise typer.Exit(EXIT_RUNTIME)
