"""Past runs: finding, naming, listing and deleting the run directories thyme leaves behind.

A run is a directory holding a trace.json: ``<runs dir>/<time>-<slug>/`` for `thyme ask`, and
``<runs dir>/<time>-batch.../<item>/`` for each `thyme batch` item. Its short id is the first
characters of a hash of its path below the runs dir, so it never changes while the run stays
where it is, and is the same on every listing.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from thyme_cli.errors import UsageError

ID_LENGTH = 7
MIN_PREFIX = 4
_AGE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_UNIT_S = {"": 86400.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


@dataclass(frozen=True)
class RunInfo:
    """One run as `thyme runs list` shows it."""

    id: str
    path: Path
    started_at: str
    model: str
    question: str
    answer: str | None
    stop_reason: str
    steps: int
    seconds: float
    written_ns: int = 0  # when trace.json was last written: orders runs started in the same second

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "run_dir": str(self.path),
            "started_at": self.started_at,
            "model": self.model,
            "question": self.question,
            "answer": self.answer,
            "stop_reason": self.stop_reason,
            "steps": self.steps,
            "seconds": self.seconds,
        }


def run_id(run_dir: Path, base: Path | None = None) -> str:
    """The short id of RUN_DIR: a hash of its path relative to the runs dir (absolute outside it)."""
    from thyme_cli import paths

    base = base or paths.runs_dir()
    try:
        key = run_dir.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        key = str(run_dir.resolve())
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:ID_LENGTH]


def _trace_files(base: Path) -> list[Path]:
    """trace.json of every ask run (depth 1) and batch item (depth 2) under BASE."""
    if not base.is_dir():
        return []
    return [*base.glob("*/trace.json"), *base.glob("*/*/trace.json")]


def read_info(trace_file: Path, base: Path) -> RunInfo | None:
    """What the list shows of one run; None for a trace.json that is not readable (skipped, not fatal)."""
    try:
        data = json.loads(trace_file.read_text(encoding="utf-8"))
        written_ns = trace_file.stat().st_mtime_ns
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict) or "question" not in data:
        return None
    timings_raw, steps_raw = data.get("timings"), data.get("steps")
    timings: dict[str, Any] = timings_raw if isinstance(timings_raw, dict) else {}
    steps: list[Any] = steps_raw if isinstance(steps_raw, list) else []
    started = str(data.get("started_at") or "")
    if not started:
        started = datetime.fromtimestamp(written_ns / 1e9, UTC).isoformat(timespec="seconds")
    answer = data.get("answer")
    return RunInfo(
        id=run_id(trace_file.parent, base),
        path=trace_file.parent,
        started_at=started,
        model=str(data.get("model", "?")),
        question=str(data.get("question", "")),
        answer=answer if isinstance(answer, str) else None,
        stop_reason=str(data.get("stop_reason", "")),
        steps=len(steps),
        seconds=float(timings.get("total_s", 0.0) or 0.0),
        written_ns=written_ns,
    )


def list_runs(base: Path | None = None) -> list[RunInfo]:
    """Every readable run under the runs dir, newest first."""
    from thyme_cli import paths

    base = base or paths.runs_dir()
    runs = [info for f in _trace_files(base) if (info := read_info(f, base)) is not None]
    return sorted(runs, key=lambda r: (started_time(r), r.written_ns, str(r.path)), reverse=True)


def started_time(run: RunInfo) -> datetime:
    try:
        moment = datetime.fromisoformat(run.started_at)
    except ValueError:
        return datetime.fromtimestamp(0, UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def resolve_run(name: str, base: Path | None = None) -> Path:
    """The run directory NAME stands for: a directory (or its trace.json), or an id (a prefix will do)."""
    from thyme_cli import paths

    base = base or paths.runs_dir()
    path = Path(name).expanduser()
    if path.name == "trace.json" and path.is_file():
        return path.parent
    if (path / "trace.json").is_file():
        return path
    if (base / name / "trace.json").is_file():
        return base / name
    key = name.strip().lower()
    if re.fullmatch(r"[0-9a-f]+", key) and len(key) >= MIN_PREFIX:
        found = [r for r in list_runs(base) if r.id.startswith(key)]
        if len(found) == 1:
            return found[0].path
        if len(found) > 1:
            raise UsageError(
                f"run id {name!r} is ambiguous ({', '.join(r.id for r in found[:5])})",
                hint="give more characters of the id",
            )
    if path.is_dir():
        raise UsageError(f"{name} holds no trace.json: not a thyme run")
    raise UsageError(f"no run {name!r}", hint="see `thyme runs list` for ids, or give the run directory")


def parse_age(text: str) -> float:
    """Seconds in an age such as 30d, 12h, 2w, 90m, 45s (a bare number means days)."""
    m = _AGE_RE.fullmatch(text)
    if m is None:
        raise UsageError(f"--older-than {text!r} is not an age", hint="e.g. 30d, 12h, 2w")
    return float(m.group(1)) * _UNIT_S[m.group(2).lower()]


def older_than(seconds: float, base: Path | None = None, now: datetime | None = None) -> list[RunInfo]:
    """Runs that started more than SECONDS ago."""
    now = now or datetime.now(UTC)
    return [r for r in list_runs(base) if (now - started_time(r)).total_seconds() > seconds]


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def delete_run(run_dir: Path) -> int:
    """Delete one run directory (only a directory holding a trace.json); returns the bytes freed."""
    if not (run_dir / "trace.json").is_file():
        raise UsageError(f"{run_dir} holds no trace.json: not deleting it")
    freed = dir_bytes(run_dir)
    shutil.rmtree(run_dir)
    return freed
