"""Running many items with one loaded model: each item's result is a JSON line and a run dir.

A failing item (bad image, sandbox error, engine error) is recorded and the batch goes on.
Ctrl-C stops after writing what finished; the output file is then resumable with --resume.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thyme_cli.agent import QuietEvents
from thyme_cli.batch_inputs import Item
from thyme_cli.batch_journal import Journal
from thyme_cli.errors import ThymeError
from thyme_cli.runner import LoadedModel, QuestionSettings, ask_one, prepare_input
from thyme_cli.trace import Trace


@dataclass
class BatchSummary:
    total: int
    skipped: int = 0  # already done in an earlier run (--resume)
    counts: Counter[str] = field(default_factory=Counter)  # answered / no_answer / failed
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def processed(self) -> int:
        return sum(self.counts.values())


def item_dir_name(item: Item) -> str:
    """A stable, filesystem-safe directory name for an item (same id -> same dir)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(item.id).name or item.id).strip("-")[:40] or "item"
    return f"{slug}-{hashlib.sha256(item.id.encode()).hexdigest()[:10]}"


def outcome(record: dict[str, Any]) -> str:
    if record.get("error"):
        return "failed"
    return "answered" if record.get("answer") is not None else "no_answer"


def _record(item: Item, run_dir: Path, trace: Trace | None, error: str | None, seconds: float) -> dict[str, Any]:
    record: dict[str, Any] = {"id": item.id, "image": item.image, "question": item.question}
    if item.expected is not None:
        record["expected"] = item.expected
    if trace is not None:
        record.update(
            answer=trace.answer,
            stop_reason=trace.stop_reason,
            stop_detail=trace.stop_detail,
            model=trace.model,
            steps=[{"code": s.code, "error": s.error, "timed_out": s.timed_out, "images": s.images}
                   for s in trace.steps],
            counters=trace.counters,
            timings={**trace.timings, "item_s": round(seconds, 3)},
        )
    else:
        record.update(answer=None, stop_reason="error", steps=[], timings={"item_s": round(seconds, 3)})
    record["error"] = error
    record["run_dir"] = str(run_dir)
    return record


def run_item(model: LoadedModel, item: Item, runs_root: Path, settings: QuestionSettings) -> dict[str, Any]:
    """One item, never raising for item-level failures: they become the record's `error`."""
    started = time.perf_counter()
    run_dir = runs_root / item_dir_name(item)
    if run_dir.exists():  # left by an attempt that was killed before its line was written
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    trace: Trace | None = None
    error: str | None = None
    try:
        image = prepare_input(Path(item.image), run_dir, label=item.image, remove_on_error=False)
        trace = ask_one(model, image, item.question, run_dir, settings, QuietEvents())
        if trace.stop_reason == "error":
            error = trace.stop_detail
    except ThymeError as e:
        error = e.message
    except Exception as e:  # one broken item must not end a batch of thousands
        error = f"unexpected {type(e).__name__}: {e}"
    return _record(item, run_dir, trace, error, time.perf_counter() - started)


def run_batch(
    items: list[Item],
    model: LoadedModel,
    settings: QuestionSettings,
    journal: Journal,
    runs_root: Path,
    on_item: Callable[[dict[str, Any]], None],
) -> BatchSummary:
    """Process every item not already in the journal, in order."""
    summary = BatchSummary(total=len(items))
    started = time.perf_counter()
    try:
        for item in items:
            if item.id in journal.done_ids:
                summary.skipped += 1
                continue
            record = run_item(model, item, runs_root, settings)
            journal.append(record)
            summary.counts[outcome(record)] += 1
            on_item(record)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        summary.seconds = time.perf_counter() - started
    return summary
