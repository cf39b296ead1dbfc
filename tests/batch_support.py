"""Killing a running `thyme batch` with SIGKILL at random moments, then resuming it: the harness
the exactly-once journal tests share."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path


def _lines_in(out: Path) -> int:
    return out.read_text().count("\n") if out.exists() else 0


def kill_9_then_resume(
    args: list[str],
    out: Path,
    *,
    kills: int,
    seed: int,
    max_pause_s: float,
    progress_timeout_s: float,
    finish_timeout_s: float,
    attempts: int,
) -> int:
    """Run `thyme <args>` (with --resume after the first start); ``kills`` times, wait until it
    has written a new line to ``out`` (or ``progress_timeout_s``), let it run a random pause of
    up to ``max_pause_s`` more and SIGKILL its process group. Then let it finish; it must exit 0.
    Returns the kills made."""
    rng = random.Random(seed)
    made = 0
    for attempt in range(attempts):
        proc = subprocess.Popen(
            [sys.executable, "-m", "thyme_cli.cli", *args, *(["--resume"] if attempt else [])],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        before = _lines_in(out)
        deadline = time.monotonic() + progress_timeout_s
        while made < kills and proc.poll() is None and time.monotonic() < deadline and _lines_in(out) == before:
            time.sleep(0.02)
        try:
            proc.wait(timeout=rng.uniform(0.0, max_pause_s) if made < kills else finish_timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            made += 1
            continue
        assert proc.returncode == 0, proc.stderr.read().decode() if proc.stderr else ""
        return made
    raise AssertionError("the batch never finished")
