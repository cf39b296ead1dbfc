"""Run one conversion step in a child process: keep its whole output in a log, act on its events.

Every heavy step (the converter in its own environment, llama.cpp's quantizer, the load check)
runs as a child that prints ``@@thyme {json}`` event lines among its ordinary log lines. The
parent writes everything to the step's log file, hands events to a callback (progress), and turns
a failure (non-zero exit, a signal, an ``error`` event) into one ThymeError naming the log.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from thyme_cli.errors import ThymeError
from thyme_cli.models.convert.worker import EVENT_PREFIX

Event = dict[str, Any]


class ConversionError(ThymeError):
    """A conversion step failed; the message says which and why, the hint where the log is."""


def child_env() -> dict[str, str]:
    """The environment for a step: no network for the Hub libraries (everything is on disk by then)."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", PYTHONUNBUFFERED="1")
    return env


def _last_line(log_lines: list[str]) -> str:
    for line in reversed(log_lines):
        text = line.strip()
        if text and not text.startswith(EVENT_PREFIX):
            return text[:300]
    return ""


def run_step(
    cmd: list[str],
    log_path: Path,
    *,
    what: str,
    on_event: Callable[[Event], None] | None = None,
    hint: str | None = None,
) -> list[Event]:
    """Run CMD to the end; return its events, or raise ConversionError('<what> failed: ...')."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w", encoding="utf-8") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        try:
            proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                encoding="utf-8",
                errors="replace",
                env=child_env(),
            )
        except OSError as e:
            raise ConversionError(f"{what} failed: cannot start {cmd[0]}: {e.strerror}", hint=hint) from None
        events, tail, rc = _follow(proc, log, on_event)
    if rc == 0 and not any(e.get("event") == "error" for e in events):
        return events
    where = f"the full log is in {log_path}"
    raise ConversionError(f"{what} failed: {_reason(events, tail, rc)}", hint=f"{hint}; {where}" if hint else where)


def _follow(
    proc: subprocess.Popen[str], log: TextIO, on_event: Callable[[Event], None] | None
) -> tuple[list[Event], list[str], int]:
    """Copy the child's output into LOG until it exits; returns its events, its last lines and its exit status."""
    assert proc.stdout is not None
    events: list[Event] = []
    tail: list[str] = []
    try:
        for line in proc.stdout:
            log.write(line)
            tail = [*tail[-40:], line]
            if line.startswith(EVENT_PREFIX):
                try:
                    event = json.loads(line[len(EVENT_PREFIX) :])
                except ValueError:
                    continue
                events.append(event)
                if on_event is not None:
                    on_event(event)
        return events, tail, proc.wait()
    except BaseException:  # Ctrl-C reaches the child too; do not leave it running on any exit
        proc.kill()
        proc.wait()
        raise


def _reason(events: list[Event], tail: list[str], rc: int) -> str:
    """Why a step failed: its own error event, else the signal or exit status and its last log line."""
    error = next((e for e in reversed(events) if e.get("event") == "error"), None)
    if error is not None and error.get("message"):
        return str(error["message"])
    if rc < 0:
        return f"the process was killed by signal {-rc}" + (f" after: {_last_line(tail)}" if _last_line(tail) else "")
    return _last_line(tail) or f"exit status {rc}"
