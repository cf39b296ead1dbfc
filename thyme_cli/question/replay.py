"""Re-run a saved trace's code steps in a fresh sandbox, without a model: the work behind `thyme replay`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from thyme_cli.question.assemble import prepare_input
from thyme_cli.question.trace import Step

if TYPE_CHECKING:
    from thyme_cli.question.loop import AgentEvents
    from thyme_cli.question.settings import QuestionSettings


@dataclass
class Replayed:
    """What a replay ran, on which image, and where its new images are."""

    trace_path: Path
    image: Path
    run_dir: Path
    steps: list[Step]

    @property
    def failed(self) -> list[int]:
        """The indexes of the steps that raised or timed out."""
        return [s.index for s in self.steps if s.error or s.timed_out]


def replay_trace(
    trace_path: Path,
    settings: QuestionSettings,
    events: Callable[[Path], AgentEvents],
    *,
    image: Path | None = None,
    out: Path | None = None,
    trace_read: Callable[[], None] = lambda: None,
) -> Replayed:
    """Run every code step of the trace at trace_path (a trace.json or its run directory) again, on
    its own input image or on `image`, into `out` (default: a new run directory). events(run_dir)
    gives the display that hears about each step; trace_read() is called before anything is made."""
    from thyme_cli.question.trace import read_trace

    trace = read_trace(trace_path)
    run_of_trace = trace_path if trace_path.is_dir() else trace_path.parent
    source = image.expanduser() if image else run_of_trace / trace.image
    trace_read()
    created = out is None or not out.exists()
    run_dir = _run_dir(out, trace.question)
    input_image = prepare_input(source, run_dir, label=str(source), remove_on_error=created)
    steps = _run_steps([(s.index, s.code) for s in trace.steps], input_image.path, run_dir, settings, events)
    return Replayed(trace_path, source, run_dir, steps)


def _run_dir(out: Path | None, question: str) -> Path:
    """--out DIR, or a new run directory named after the trace's question."""
    from thyme_cli import paths
    from thyme_cli.question.trace import new_run_dir, prepare_out_dir

    return prepare_out_dir(out) if out else new_run_dir(paths.runs_dir(), "replay-" + question)


def _run_steps(
    code_steps: list[tuple[int, str]],
    image: Path,
    run_dir: Path,
    settings: QuestionSettings,
    events_for: Callable[[Path], AgentEvents],
) -> list[Step]:
    """The steps run one after the other in one sandbox on the checked input image."""
    from thyme_cli.sandbox.host.factory import open_sandbox

    events = events_for(run_dir)
    steps: list[Step] = []
    with open_sandbox(
        settings.sandbox,
        image=image,
        images_dir=run_dir / "images",
        timeout_s=settings.step_timeout_s,
        limits=settings.limits,
    ) as box:
        for index, code in code_steps:
            events.step_started(index, code)
            result = box.run(code)
            step = Step.from_result(index, code, result, run_dir, crops=False)
            events.step_finished(step, result)
            steps.append(step)
    return steps
