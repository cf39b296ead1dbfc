"""Download progress on stderr: a rich bar on a terminal, plain lines otherwise, or nothing.

The downloader only calls the small ``Progress`` interface, so it neither knows nor cares whether a
person is watching; logs and CI get a few readable lines instead of bar redraws.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Protocol

from thyme_cli.ui.console import err_console, human_size, info

if TYPE_CHECKING:
    import rich.progress


class Progress(Protocol):
    def start(self, label: str, total: int | None, initial: int) -> None: ...
    def advance(self, n: int) -> None: ...
    def restart(self) -> None: ...
    def finish(self) -> None: ...
    def note(self, message: str) -> None: ...
    def close(self) -> None: ...


class Silent:
    """For library callers that asked for no progress."""

    def start(self, label: str, total: int | None, initial: int) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def restart(self) -> None:
        pass

    def finish(self) -> None:
        pass

    def note(self, message: str) -> None:
        pass

    def close(self) -> None:
        pass


class PlainLines(Silent):
    """One line when a file starts (or resumes) and one when it is verified: readable in logs."""

    def start(self, label: str, total: int | None, initial: int) -> None:
        size = human_size(total) if total is not None else "unknown size"
        resume = f", resuming at {human_size(initial)}" if initial else ""
        info(f"downloading {label} ({size}{resume})")

    def note(self, message: str) -> None:
        info(message)


class RichBar(Silent):
    """A rich progress bar with size, speed and time left."""

    def __init__(self) -> None:
        from rich import progress as rp

        self._bar: rich.progress.Progress = rp.Progress(
            rp.TextColumn("{task.description}"),
            rp.BarColumn(),
            rp.DownloadColumn(),
            rp.TransferSpeedColumn(),
            rp.TimeRemainingColumn(),
            console=err_console(),
            transient=False,
        )
        self._task: rich.progress.TaskID | None = None
        self._bar.start()

    def start(self, label: str, total: int | None, initial: int) -> None:
        self._task = self._bar.add_task(label, total=total, completed=initial)

    def advance(self, n: int) -> None:
        if self._task is not None:
            self._bar.advance(self._task, n)

    def restart(self) -> None:
        if self._task is not None:
            self._bar.reset(self._task)

    def finish(self) -> None:
        self._task = None

    def note(self, message: str) -> None:
        self._bar.console.print(message, markup=False, highlight=False)

    def close(self) -> None:
        self._bar.stop()


def make_progress(enabled: bool) -> Progress:
    """A bar when stderr is a terminal (unless HF_HUB_DISABLE_PROGRESS_BARS), else plain lines; or nothing."""
    if not enabled:
        return Silent()
    bars_off = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "").strip().upper() in ("1", "ON", "YES", "TRUE")
    if err_console().is_terminal and not bars_off:
        return RichBar()
    return PlainLines()
