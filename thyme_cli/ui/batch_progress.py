"""`thyme batch`'s display on stderr: a progress bar (or one line per item) and the summary table."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from thyme_cli.ui.console import err_console


class Summary(Protocol):
    """What the summary table shows (batch.run.BatchSummary has it)."""

    @property
    def total(self) -> int: ...
    @property
    def skipped(self) -> int: ...
    @property
    def counts(self) -> Mapping[str, int]: ...
    @property
    def seconds(self) -> float: ...
    @property
    def processed(self) -> int: ...


class BatchProgress:
    """A rich progress bar on a terminal; one plain line per item otherwise (both on stderr)."""

    def __init__(self, total: int, done_before: int) -> None:
        self.total = total
        self.done = done_before
        self.counts: dict[str, int] = {"answered": 0, "no_answer": 0, "failed": 0}
        self.console = err_console()
        self.started = time.perf_counter()
        self._progress: Any = None
        if self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]batch"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[counts]}"),
                console=self.console,
                transient=False,
            )
            self._task = self._progress.add_task("batch", total=total, completed=done_before, counts=self._counts())
            self._progress.start()

    def _counts(self) -> str:
        c = self.counts
        return f"answered {c['answered']} · no answer {c['no_answer']} · failed {c['failed']}"

    def item(self, record: dict[str, Any], kind: str) -> None:
        self.done += 1
        self.counts[kind] += 1
        if self._progress is not None:
            self._progress.update(self._task, completed=self.done, counts=self._counts())
            return
        seconds = record.get("timings", {}).get("item_s", 0.0)
        detail = record.get("error") or (record.get("answer") or "")[:60].replace("\n", " ")
        self.console.print(
            f"[{self.done}/{self.total}] {record['id']}: {kind} ({seconds:.1f} s) {detail}",
            markup=False,
            highlight=False,
        )

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


def print_batch_summary(summary: Summary, output: str, runs_root: Path) -> None:
    from rich.table import Table

    console = err_console()
    table = Table(title="batch summary", title_justify="left")
    table.add_column("")
    table.add_column("items", justify="right")
    for label, key in (("answered", "answered"), ("no answer", "no_answer"), ("failed", "failed")):
        table.add_row(label, str(summary.counts.get(key, 0)))
    if summary.skipped:
        table.add_row("done earlier (skipped)", str(summary.skipped))
    table.add_row("total", str(summary.total))
    console.print(table)
    per_item = summary.seconds / summary.processed if summary.processed else 0.0
    console.print(
        f"{summary.processed} item(s) in {summary.seconds:.1f} s ({per_item:.2f} s/item); "
        f"results: {output}; runs: {runs_root}",
        markup=False,
        highlight=False,
    )
