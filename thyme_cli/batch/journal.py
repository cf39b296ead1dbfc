"""The batch output file: one JSON line per item, appended and flushed as each item ends.

Exactly-once across crashes: a line is written with a single write() of the whole line, so after a
`kill -9` the file holds complete lines plus at most one torn tail. `--resume` cuts that tail off,
skips every id that already has a line, and redoes the rest.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from thyme_cli.errors import UsageError


class Journal:
    """Append-only JSONL of finished items (a file, or stdout for `-o -`)."""

    def __init__(self, path: Path | None, *, resume: bool) -> None:
        self.path = path
        self.done_ids: set[str] = set()
        self.dropped_tail = 0
        if path is None:
            if resume:
                raise UsageError("--resume needs an output file (-o FILE), not stdout")
            self._fd = sys.stdout.fileno()
            self._own_fd = False
            return
        if path.exists() and path.stat().st_size > 0 and not resume:
            raise UsageError(
                f"{path} already exists; nothing was overwritten",
                hint="add --resume to continue that batch, or choose another -o",
            )
        if path.exists() and resume:
            self._recover(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._own_fd = True

    def _recover(self, path: Path) -> None:
        """Read the finished ids; cut off a torn last line left by a crash."""
        data = path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            self.dropped_tail = len(data) - end
            with path.open("r+b") as f:
                f.truncate(end)
        for n, line in enumerate(data[:end].splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                self.done_ids.add(str(record["id"]))
            except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
                raise UsageError(f"{path}:{n} is not a thyme batch line; cannot resume from this file") from None

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        written = os.write(self._fd, line)
        while written < len(line):  # only pipes split writes; keep going until the line is out
            written += os.write(self._fd, line[written:])
        self.done_ids.add(str(record["id"]))

    def close(self) -> None:
        if self._own_fd:
            os.close(self._fd)
            self._own_fd = False
