"""One transient status line for the long silent parts of a question: image encoding and prefill.

On a CPU a 7B model spends tens of seconds encoding a photo and evaluating the prompt before the
first token appears; without a word on screen that looks like a hang. On a terminal a spinner
line says what is running ("encoding image (2451 tokens)", "prefill 1024/2600 tokens (39%)") and
disappears when text starts to stream. Elsewhere (logs, pipes) a plain line is written once per
image and once per long prefill, so logs stay short.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

# A prefill shorter than this is not worth a line (observations, the closing of a turn).
MIN_PREFILL_TOKENS = 256


class ProgressLine:
    """Receives engine progress (stage, done, total) and shows it on ``console``."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._status: Any = None
        self._started = 0.0
        self._total = 0

    def update(self, stage: str, done: int, total: int) -> None:
        if stage == "encode":
            self._show(f"encoding image ({total} tokens)")
            self._started, self._total = time.perf_counter(), 0
            return
        if total < MIN_PREFILL_TOKENS:
            return
        if self._total != total:  # a new feed starts
            self._started, self._total = time.perf_counter(), total
        if done >= total:
            if not self.console.is_terminal:
                seconds = time.perf_counter() - self._started
                self.console.print(f"prefill: {total} tokens in {seconds:.1f} s", style="dim", highlight=False)
            self.stop()
            self._total = 0
            return
        self._show(f"prefill {done}/{total} tokens ({100 * done // total}%)", plain=False)

    def _show(self, text: str, *, plain: bool = True) -> None:
        if not self.console.is_terminal:
            if plain:
                self.console.print(text, style="dim", highlight=False)
            return
        if self._status is None:
            self._status = self.console.status(text, spinner="dots")
            self._status.start()
        else:
            self._status.update(text)

    def stop(self) -> None:
        """Take the line away (text is about to stream, or the question moved on)."""
        if self._status is not None:
            self._status.stop()
            self._status = None
