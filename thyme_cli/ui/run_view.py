"""`thyme runs show`: a saved run rendered in the terminal the way it looked live.

The trace is played back through the same LiveRenderer `thyme ask` uses (model text, code panels,
outputs, image previews), after the input image, then the summary and the answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from thyme_cli.question.trace import Trace

if TYPE_CHECKING:
    from rich.console import Console

    from thyme_cli.ui.render import LiveRenderer


def _show_crops(trace: Trace, run_dir: Path, renderer: LiveRenderer, console: Console) -> None:
    """The numbered crop boxes: listed, and drawn over the input image (saved as crops.png)."""
    from rich.text import Text

    from thyme_cli.ui.crop_boxes import annotated_png, describe

    lines = describe(trace)
    if not lines:
        return
    console.print(Text("where the model looked:", style="bold"))
    for line in lines:
        console.print(Text("  " + line))
    png = annotated_png(trace, run_dir)
    if png is not None:
        path = run_dir / "crops.png"
        try:
            path.write_bytes(png)
        except OSError:
            return
        renderer.show_image(path)


def show_run(trace: Trace, run_dir: Path, console: Console, previews: str | None) -> None:
    """Play TRACE back on CONSOLE."""
    from rich.text import Text

    from thyme_cli.sandbox.base import ExecResult
    from thyme_cli.ui.render import LiveRenderer, print_summary, terminal_safe

    renderer = LiveRenderer(run_dir, console=console, previews=previews)
    console.print(Text.assemble(("question: ", "bold"), terminal_safe(trace.question)))
    console.print(
        Text(
            f"model {trace.model} ({trace.protocol} protocol), sandbox {trace.sandbox}, {trace.started_at}", style="dim"
        )
    )
    renderer.show_image(run_dir / trace.image)
    _show_crops(trace, run_dir, renderer, console)
    for turn in trace.turns:
        renderer.text(turn.text)
        step = next((s for s in trace.steps if s.turn == turn.index), None)
        if step is not None:
            renderer.step_started(step.index, step.code)
            renderer.step_finished(step, ExecResult())
        else:
            renderer.text("\n")
    print_summary(trace, run_dir, console=console)
    if trace.answer is not None:
        from rich.panel import Panel

        console.print(
            Panel(Text(terminal_safe(trace.answer)), title="answer", title_align="left", border_style="green bold")
        )
    else:
        console.print(Text(f"no answer: {terminal_safe(trace.stop_detail)}", style="red"))
