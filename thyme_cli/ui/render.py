"""Showing a run to a person as it happens: streamed thinking, code panels, results, images.

Everything here goes to stderr; stdout is kept for the answer (or JSON) so pipelines stay clean.
rich drops colour for NO_COLOR and for non-terminals, so logs stay readable. Terminals that can
show images (kitty, iTerm2, WezTerm) get a small inline preview of each new image.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from thyme_cli.question.trace import Step, Trace
from thyme_cli.sandbox.base import ExecResult
from thyme_cli.ui.console import err_console, human_size
from thyme_cli.ui.progress_line import ProgressLine

if TYPE_CHECKING:
    from rich.console import Console

CODE_OPEN = "<code>"
# What starts text that is shown as a code panel instead of prose (fences: the generic protocol).
CODE_OPENERS = (CODE_OPEN, "```python", "```py\n")
MAX_SHOWN_OUTPUT_LINES = 20
# Control characters other than newline and tab, C1 controls included: model text and sandbox
# output must never drive the terminal (escape sequences can retitle, recolour or spoof).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def terminal_safe(text: str) -> str:
    """Text with control characters shown as visible escapes (e.g. \\x1b), for terminals."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class LiveRenderer:
    """Agent events -> a readable live transcript on stderr."""

    def __init__(self, run_dir: Path, console: Console | None = None, previews: str | None = "auto") -> None:
        self.console = console or err_console()
        self.run_dir = run_dir
        # "kitty" / "iterm" / "sixel" / "halfblock" draw thumbnails; None shows paths only; "auto" detects.
        self.previews = inline_image_protocol() if previews == "auto" else previews
        self._held = ""  # text that might be the start of "<code>" or of a ```python fence
        self._in_code = False
        self._code = ""  # held-back text of the code block being written (shown as a panel if it runs)
        self._at_line_start = True
        self._progress = ProgressLine(self.console)

    def progress(self, stage: str, done: int, total: int) -> None:
        """Engine progress during long feeds (image encoding, prefill): a transient status line."""
        self._progress.update(stage, done, total)

    # -- streamed model text: prose is shown dim; code is held back and shown as a panel instead
    def text(self, chunk: str) -> None:
        self._progress.stop()
        if self._in_code:
            self._code += chunk
            if _continues_after_close(self._code):  # no step came of it (inline code): it was prose
                self._release_code()
            return
        buffer = self._held + chunk
        self._held = ""
        starts = [(pos, opener) for opener in CODE_OPENERS if (pos := buffer.find(opener)) >= 0]
        if starts:
            pos, _opener = min(starts)
            self._emit(buffer[:pos])
            self._in_code = True
            self._code = buffer[pos:]
            return
        keep = max(_partial_suffix(buffer, opener) for opener in CODE_OPENERS)
        self._emit(buffer[: len(buffer) - keep])
        self._held = buffer[len(buffer) - keep :]

    def _release_code(self) -> None:
        """Show held-back "code" as prose after all (no step ran it)."""
        held, self._code, self._in_code = self._code, "", False
        closer = "</code>" if held.startswith(CODE_OPEN) else "```"
        end = held.find(closer, 3)
        if end < 0:
            self._emit(held)
            return
        self._emit(held[: end + len(closer)])
        self.text(held[end + len(closer) :])  # what follows may open a real block

    def _emit(self, text: str) -> None:
        if not text:
            return
        from rich.text import Text

        self.console.print(Text(terminal_safe(text), style="dim"), end="")
        self._at_line_start = text.endswith("\n")

    def _newline(self) -> None:
        if not self._at_line_start:
            self.console.print()
            self._at_line_start = True

    def step_started(self, index: int, code: str) -> None:
        from rich.panel import Panel
        from rich.syntax import Syntax

        self._held = self._code = ""
        self._progress.stop()
        self._newline()
        # soft_wrap=False: the consoles soft-wrap plain text, which would crop a panel's long lines
        self.console.print(
            Panel(
                Syntax(terminal_safe(code), "python", theme="ansi_dark", word_wrap=True),
                title=f"step {index}: code",
                title_align="left",
                border_style="cyan",
            ),
            soft_wrap=False,
        )

    def step_finished(self, step: Step, result: ExecResult) -> None:
        from rich.text import Text

        self._in_code = False
        status = "timed out" if step.timed_out else ("error" if step.error else "ok")
        style = "green" if status == "ok" else "red"
        self.console.print(Text.assemble((f"step {step.index}: {status}", style), f" in {step.duration_s:.2f} s"))
        output = step.stdout.rstrip()
        if output:
            lines = output.splitlines()
            shown = "\n".join(lines[:MAX_SHOWN_OUTPUT_LINES])
            if len(lines) > MAX_SHOWN_OUTPUT_LINES:
                shown += f"\n... ({len(lines) - MAX_SHOWN_OUTPUT_LINES} more lines in the trace)"
            self.console.print(Text(terminal_safe(shown)), style="default")
        if step.error:
            self.console.print(Text(terminal_safe(step.error.rstrip()), style="red"))
        for rel in step.images:
            self._show_image(self.run_dir / rel)
        self._at_line_start = True

    def show_image(self, path: Path) -> None:
        """One image line (path, size) and, where the terminal can, a thumbnail."""
        self._show_image(path)

    def _show_image(self, path: Path) -> None:
        from rich.text import Text

        from thyme_cli import step_images

        held = step_images.pending_image(path)  # still being compressed in the background: do not wait
        size = held.size if held is not None else image_size(path)
        dims = f"{size[0]}x{size[1]}" if size else ""
        stored = "" if held is not None else human_size(_file_size(path))
        self.console.print(
            Text.assemble(("image: ", "magenta"), str(path), f" ({', '.join(p for p in (dims, stored) if p)})")
        )
        if self.previews:
            step_images.wait(path)
            from thyme_cli.ui.term_images import show

            show(self.console, path, self.previews)

    def note(self, message: str) -> None:
        from rich.text import Text

        self._progress.stop()
        if self._in_code:  # e.g. a code block cut by the token budget: show what the model wrote
            self._release_code()
        self._newline()
        self.console.print(Text(terminal_safe(message), style="yellow italic"))


def _continues_after_close(code: str) -> bool:
    """True when held-back code was closed and the model went on writing (so no step ran it)."""
    tag = code.startswith(CODE_OPEN)
    closer = "</code>" if tag else "```"
    body = code[len(CODE_OPEN) :] if tag else code[3:]
    end = body.find(closer)
    return end >= 0 and bool(body[end + len(closer) :].strip())


def _partial_suffix(text: str, tag: str) -> int:
    """How many trailing characters of text could be the beginning of tag."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


def _file_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def image_size(path: Path) -> tuple[int, int] | None:
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.size
    except OSError:
        return None


def inline_image_protocol(stream: TextIO | None = None) -> str | None:
    """How to preview images on STREAM (stderr by default): 'kitty', 'iterm', 'sixel', 'halfblock',
    or None when it is not a colour terminal (see thyme_cli.ui.term_images)."""
    from thyme_cli.ui.term_images import choose

    return choose(stream or sys.stderr)


def print_summary(trace: Trace, run_dir: Path, console: Console | None = None, verbose: bool = False) -> None:
    """After the run: timings and where the run directory is (stderr)."""
    from rich.text import Text

    console = console or err_console()
    t = trace.timings
    console.print()
    for note in trace.notes:
        console.print(Text(f"note: {terminal_safe(note)}", style="yellow"))
    console.print(
        Text(
            f"{len(trace.steps)} step(s), {t.get('total_s', 0):.1f} s "
            f"(model {t.get('model_s', 0):.1f} s, sandbox {t.get('sandbox_s', 0):.1f} s); "
            f"{trace.stop_detail}; run saved in {run_dir}",
            style="dim",
        )
    )
    if verbose and trace.counters:
        c = trace.counters
        console.print(
            Text(
                f"tokens evaluated {c.get('tokens_evaluated')}, generated {c.get('tokens_generated')}, "
                f"images encoded {c.get('images_encoded')}; image encoding {c.get('image_encode_s', 0):.2f} s, "
                f"prefill {c.get('prefill_s', 0):.2f} s, decode {c.get('decode_s', 0):.2f} s "
                f"({c.get('decode_tokens_per_s', 0):.1f} tok/s)",
                style="dim",
            )
        )


def print_answer(trace: Trace, quiet: bool) -> None:
    """The answer on stdout, set apart for people; bare for --quiet and for pipes."""
    from thyme_cli.ui.console import out_console

    answer = trace.answer or ""
    console = out_console()
    if quiet or not console.is_terminal:
        sys.stdout.write((terminal_safe(answer) if console.is_terminal else answer) + "\n")
        sys.stdout.flush()
        return
    from rich.panel import Panel
    from rich.text import Text

    console.print(
        Panel(Text(terminal_safe(answer)), title="answer", title_align="left", border_style="green bold"),
        soft_wrap=False,
    )
