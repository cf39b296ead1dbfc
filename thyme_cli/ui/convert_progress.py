"""What a person sees while a model converts: one numbered line per phase, and a bar inside it.

On a terminal each long phase draws a rich bar (bytes written by the converter, tensors done by
the quantizer); in logs and CI each phase prints its start line and, at the end, how long it took.
Downloads reuse the downloader's own progress (hub_progress).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from thyme_cli.ui.console import err_console, info

if TYPE_CHECKING:
    import rich.progress

    from thyme_cli.ui.hub_progress import Progress


class PhaseDisplay:
    """Numbered phases ("[2/6] convert the language model"), each with an optional live bar."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled = enabled
        self.total = total
        self.index = 0
        self._started = 0.0
        self._bar: rich.progress.Progress | None = None
        self._task: rich.progress.TaskID | None = None

    def note(self, message: str) -> None:
        if self.enabled:
            if self._bar is not None:
                self._bar.console.print(message, markup=False, highlight=False)
            else:
                info(message)

    def begin(self, title: str) -> None:
        self.index += 1
        self._started = time.monotonic()
        self.note(f"[{self.index}/{self.total}] {title}")

    def skip(self, title: str, why: str) -> None:
        self.index += 1
        self.note(f"[{self.index}/{self.total}] {title}: {why}")

    def end(self, detail: str = "") -> None:
        self._close_bar()
        took = time.monotonic() - self._started
        self.note(f"      done in {took:.1f} s" + (f": {detail}" if detail else ""))

    def downloads(self) -> Progress:
        from thyme_cli.ui.hub_progress import make_progress

        return make_progress(self.enabled)

    def on_event(self, unit: str) -> Any:
        """A callback for a step's events that drives a bar counted in UNIT ('bytes' or 'tensors')."""

        def handle(event: dict[str, Any]) -> None:
            if event.get("event") == "note":
                self.note(f"      {event.get('message', '')}")
            elif event.get("event") == "progress":
                self._update(int(event.get("done") or 0), event.get("total"), unit)

        return handle

    def _update(self, done: int, total: int | None, unit: str) -> None:
        if not self.enabled or not err_console().is_terminal:
            return
        if self._bar is None:
            from rich import progress as rp

            counter = rp.DownloadColumn() if unit == "bytes" else rp.MofNCompleteColumn()
            self._bar = rp.Progress(
                rp.TextColumn("      "),
                rp.BarColumn(),
                counter,
                rp.TextColumn(unit if unit != "bytes" else ""),
                rp.TimeElapsedColumn(),
                console=err_console(),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task("", total=total)
        assert self._task is not None
        self._bar.update(self._task, completed=done, total=total)

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
            self._task = None

    def close(self) -> None:
        self._close_bar()
