"""Running many items with one loaded model: each item's result is a JSON line and a run dir.

A failing item (bad image, sandbox error, engine error) is recorded and the batch goes on.
Ctrl-C stops after writing what finished; the output file is then resumable with --resume.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thyme_cli.batch.inputs import Item
from thyme_cli.batch.journal import Journal
from thyme_cli.batch.run_storage import prune_step_images
from thyme_cli.errors import BackendUnavailable, ThymeError
from thyme_cli.question.assemble import ask_one, open_question_sandbox, open_sandbox_pool, prepare_input
from thyme_cli.question.input_image import InputImage
from thyme_cli.question.loop import QuietEvents
from thyme_cli.question.settings import QuestionSettings
from thyme_cli.question.trace import Trace, write_trace
from thyme_cli.ui.crash_guard import announce_run_dir

if TYPE_CHECKING:
    from thyme_cli.models.loading import LoadedModel
    from thyme_cli.sandbox.host.pool import PerQuestionPool, SandboxPool
    from thyme_cli.sandbox.host.session import WorkerSandbox

    Pool = SandboxPool | PerQuestionPool


@dataclass
class BatchSummary:
    total: int
    skipped: int = 0  # already done in an earlier run (--resume)
    counts: Counter[str] = field(default_factory=Counter)  # answered / no_answer / failed
    seconds: float = 0.0
    interrupted: bool = False
    stopped_by: str | None = None  # why the batch stopped early when it was not Ctrl-C

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
            steps=[
                {"code": s.code, "error": s.error, "timed_out": s.timed_out, "images": s.images, "crops": s.crops}
                for s in trace.steps
            ],
            counters=trace.counters,
            timings={**trace.timings, "item_s": round(seconds, 3)},
        )
    else:
        record.update(answer=None, stop_reason="error", steps=[], timings={"item_s": round(seconds, 3)})
    record["error"] = error
    record["run_dir"] = str(run_dir)
    return record


@dataclass
class PreparedItem:
    """An item whose input image is checked and whose sandbox is already booting."""

    item: Item
    run_dir: Path
    prep_s: float
    image: InputImage | None = None
    sandbox: WorkerSandbox | None = None
    error: str | None = None

    def discard(self) -> None:
        if self.sandbox is not None:
            self.sandbox.close()


def prepare_item(item: Item, runs_root: Path, settings: QuestionSettings, pool: Pool | None = None) -> PreparedItem:
    """Check the image and open the sandbox (its worker boots in the background, or is forked
    from the pool's warm jail at its first step); never raises."""
    started = time.perf_counter()
    run_dir = runs_root / item_dir_name(item)
    if run_dir.exists():  # left by an attempt that was killed before its line was written
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    announce_run_dir(run_dir)
    prepared = PreparedItem(item, run_dir, 0.0)
    try:
        from thyme_cli.question.pdf import page_source

        source, label = page_source(item.image)  # a PDF page (doc.pdf#p3) is rendered first
        prepared.image = prepare_input(source, run_dir, label=label, remove_on_error=False, link=True)
        prepared.sandbox = open_question_sandbox(prepared.image, run_dir, settings, pool)
    except ThymeError as e:
        prepared.error = e.message
    except Exception as e:  # one broken item must not end a batch of thousands
        prepared.error = f"unexpected {type(e).__name__}: {e}"
    prepared.prep_s = time.perf_counter() - started
    return prepared


def finish_item(model: LoadedModel, prepared: PreparedItem, settings: QuestionSettings) -> dict[str, Any]:
    """Run a prepared item to its record; item-level failures become the record's `error`."""
    started = time.perf_counter()
    item, trace, error = prepared.item, None, prepared.error
    if prepared.image is not None and error is None:
        try:
            trace = ask_one(
                model,
                prepared.image,
                item.question,
                prepared.run_dir,
                settings,
                QuietEvents(),
                sandbox=prepared.sandbox,
            )
            if trace.stop_reason == "error":
                error = trace.stop_detail
            if prune_step_images(trace, prepared.run_dir, settings.keep_images):
                write_trace(trace, prepared.run_dir)
        except BackendUnavailable:
            prepared.discard()
            shutil.rmtree(prepared.run_dir, ignore_errors=True)
            raise  # not the item's fault: stop the batch; --resume redoes this item
        except ThymeError as e:
            error = e.message
        except Exception as e:
            error = f"unexpected {type(e).__name__}: {e}"
    prepared.discard()
    seconds = prepared.prep_s + time.perf_counter() - started
    return _record(item, prepared.run_dir, trace, error, seconds)


def run_item(
    model: LoadedModel, item: Item, runs_root: Path, settings: QuestionSettings, pool: Pool | None = None
) -> dict[str, Any]:
    """One item from start to record (used where items run concurrently)."""
    return finish_item(model, prepare_item(item, runs_root, settings, pool), settings)


def group_by_image(items: list[Item]) -> list[Item]:
    """Items that name the same image, one after the other (in the order each image first
    appears): the engine keeps the last question's image in its context, so the next question
    about it neither encodes nor evaluates it again."""
    groups: dict[str, list[Item]] = {}
    for item in items:
        groups.setdefault(item.image, []).append(item)
    return [item for group in groups.values() for item in group]


def run_batch(
    items: list[Item],
    model: LoadedModel,
    settings: QuestionSettings,
    journal: Journal,
    runs_root: Path,
    on_item: Callable[[dict[str, Any]], None],
    *,
    jobs: int = 1,
    group_images: bool = True,
) -> BatchSummary:
    """Process every item not already in the journal; up to ``jobs`` at a time (items about the
    same image one after the other unless ``group_images`` is off: eval keeps its items' order)."""
    summary = BatchSummary(total=len(items))
    todo = _todo(items, journal, group_images)
    summary.skipped = len(items) - len(todo)
    started = time.perf_counter()

    def finish(record: dict[str, Any]) -> None:
        journal.append(record)
        summary.counts[outcome(record)] += 1
        on_item(record)

    pool: Pool | None = None
    try:
        pool = _open_pool(settings) if todo else None
        if jobs <= 1:
            _run_in_turn(todo, model, settings, runs_root, finish, pool)
        else:
            _run_concurrently(todo, model, settings, runs_root, jobs, finish, pool)
    except KeyboardInterrupt:
        summary.interrupted = True
    except BackendUnavailable as e:
        summary.interrupted = True
        summary.stopped_by = e.message
    finally:
        if pool is not None:
            pool.close()
        summary.seconds = time.perf_counter() - started
    return summary


def _todo(items: list[Item], journal: Journal, group_images: bool) -> list[Item]:
    """The items not already in the journal (from an earlier run), grouped by image when asked."""
    todo = [item for item in items if item.id not in journal.done_ids]
    return group_by_image(todo) if group_images else todo


def _open_pool(settings: QuestionSettings) -> Pool | None:
    """The batch's warm sandbox jail; None when it cannot start (each item then records why)."""
    try:
        return open_sandbox_pool(settings)
    except ThymeError:
        return None


def _run_in_turn(
    todo: list[Item],
    model: LoadedModel,
    settings: QuestionSettings,
    runs_root: Path,
    finish: Callable[[dict[str, Any]], None],
    pool: Pool | None = None,
) -> None:
    """One item at a time, the next one prepared (image checked, sandbox booting) meanwhile."""
    upcoming = prepare_item(todo[0], runs_root, settings, pool) if todo else None
    try:
        for index in range(len(todo)):
            current = upcoming
            assert current is not None
            upcoming = prepare_item(todo[index + 1], runs_root, settings, pool) if index + 1 < len(todo) else None
            finish(finish_item(model, current, settings))
    finally:
        if upcoming is not None:
            upcoming.discard()


def _run_concurrently(
    todo: list[Item],
    model: LoadedModel,
    settings: QuestionSettings,
    runs_root: Path,
    jobs: int,
    finish: Callable[[dict[str, Any]], None],
    pool: Pool | None = None,
) -> None:
    """Keep ``jobs`` items in flight; results are recorded in the order they finish.

    On Ctrl-C no new item starts; the ones in flight finish and are recorded, so nothing that
    was paid for is lost.
    """
    pending = iter(todo)
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="thyme-item") as executor:
        running: set[Future[dict[str, Any]]] = set()
        try:
            for item in itertools.islice(pending, jobs):
                running.add(executor.submit(run_item, model, item, runs_root, settings, pool))
            while running:
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    finish(future.result())
                    nxt = next(pending, None)
                    if nxt is not None:
                        running.add(executor.submit(run_item, model, nxt, runs_root, settings, pool))
        except (KeyboardInterrupt, BackendUnavailable):
            # Record what finishes; items that hit the dead server raise again and stay unrecorded.
            for future in as_completed(running):
                with contextlib.suppress(BackendUnavailable):
                    finish(future.result())
            raise
