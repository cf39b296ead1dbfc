"""The record of one question: steps, turns, answer, counters; saved as trace.json in a run dir.

The format is documented in docs/trace-format.md; `thyme replay` reads it back. Paths inside a
trace are relative to the run directory so a run directory can be moved or shared whole.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from thyme_cli import __version__
from thyme_cli.errors import UsageError

if TYPE_CHECKING:
    from thyme_cli.sandbox.base import ExecResult

TRACE_VERSION = 1

RunStopReason = Literal["answered", "answered_untagged", "no_answer", "truncated", "error"]


@dataclass
class Step:
    """One code step: what ran and what came back."""

    index: int
    code: str
    stdout: str = ""
    stderr: str = ""
    error: str | None = None
    timed_out: bool = False
    images: list[str] = field(default_factory=list)  # relative to the run directory
    duration_s: float = 0.0
    turn: int = 0  # the model turn whose code this step ran
    crops: list[dict[str, Any]] = field(default_factory=list)  # {"box": [x0, y0, x1, y1], "via": ...}

    @classmethod
    def from_result(
        cls, index: int, code: str, result: ExecResult, run_dir: Path, *, turn: int = 0, crops: bool = True
    ) -> Step:
        """The record of a code step the sandbox ran; image paths relative to the run directory.
        crops=False: leave the cropped boxes out (`thyme replay` reports none)."""
        images = [str(p.relative_to(run_dir)) if p.is_relative_to(run_dir) else str(p) for p in result.images]
        return cls(
            index,
            code,
            result.stdout,
            result.stderr,
            result.error,
            result.timed_out,
            images,
            result.duration_s,
            turn,
            crops=result.crops if crops else [],
        )


@dataclass
class Turn:
    """One model generation: its text and why it stopped."""

    index: int
    text: str
    stop_reason: str
    n_tokens: int
    seconds: float
    discarded: bool = False  # --on-error retry threw this turn's failed step away and asked again


@dataclass
class Trace:
    question: str
    image: str  # the input image as saved in the run directory (relative)
    image_source: str  # where the user's image came from ("-" for stdin)
    image_size: tuple[int, int]
    model: str
    protocol: str
    sandbox: str
    answer: str | None = None
    stop_reason: RunStopReason = "no_answer"
    stop_detail: str = ""
    steps: list[Step] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    counters: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    # --samples N: every trajectory (answer, vote, mean token log-probability, its run dir under
    # samples/) and the votes per normalised answer; empty for a single trajectory.
    samples: list[dict[str, Any]] = field(default_factory=list)
    votes: dict[str, int] = field(default_factory=dict)
    thyme_version: str = __version__
    trace_version: int = TRACE_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trace:
        steps = [Step(**s) for s in data.get("steps", [])]
        turns = [Turn(**t) for t in data.get("turns", [])]
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k not in ("steps", "turns")}
        known["image_size"] = tuple(known.get("image_size", (0, 0)))
        return cls(steps=steps, turns=turns, **known)


def write_trace(trace: Trace, run_dir: Path) -> Path:
    """Write trace.json atomically (a crash never leaves half a file)."""
    path = run_dir / "trace.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(trace.to_dict(), indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_trace(path: Path) -> Trace:
    """Load a trace.json (or the trace.json inside a run directory)."""
    if path.is_dir():
        path = path / "trace.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path}: no such trace file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{path} is not a readable trace: {e}") from None
    if not isinstance(data, dict) or "steps" not in data or "question" not in data:
        raise UsageError(f"{path} is not a thyme trace (no question/steps)")
    try:
        return Trace.from_dict(data)
    except TypeError as e:
        raise UsageError(f"{path} is not a valid thyme trace: {e}") from None


def _slug(text: str, limit: int = 32) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
    return slug[:limit].rstrip("-") or "question"


def new_run_dir(base: Path, question: str) -> Path:
    """A fresh, never-reused directory under base: <UTC time>-<question slug>[-n]."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    base.mkdir(parents=True, exist_ok=True)
    name = f"{stamp}-{_slug(question)}"
    for n in range(1000):
        candidate = base / (name if n == 0 else f"{name}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise UsageError(f"cannot create a new run directory under {base}")


def prepare_out_dir(out: Path) -> Path:
    """Use the user's --out DIR; refuse to mix a new run into a directory holding another run."""
    if (out / "trace.json").exists():
        raise UsageError(
            f"{out} already holds a run (trace.json); nothing was overwritten", hint="choose another --out"
        )
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    return out
