"""What `thyme models pull` downloaded, and from which commit: reproducible pulls.

A branch such as `main` moves; the commit a pull got does not. Each successful Hub pull is recorded
in ``<data dir>/pulls.json`` (name -> repo, revision asked for, commit, files, time), `models info`
shows it, and pinning it (``revision = "<commit>"`` in the config entry) gets the same bytes again.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from thyme_cli import paths


def pulls_file() -> Path:
    return paths.data_dir() / "pulls.json"


def read_pulls() -> dict[str, dict[str, Any]]:
    """Every recorded pull; an unreadable file counts as none (it is only a record)."""
    try:
        data = json.loads(pulls_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}


def record_pull(name: str, *, repo: str, revision: str, commit: str, files: list[str]) -> None:
    """Remember that NAME was pulled from REPO at COMMIT (atomically)."""
    records = read_pulls()
    records[name] = {
        "repo": repo,
        "revision": revision,
        "commit": commit,
        "files": files,
        "pulled_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    path = pulls_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(records, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def forget_pull(name: str) -> None:
    records = read_pulls()
    if records.pop(name, None) is not None:
        path = pulls_file()
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(records, indent=2), encoding="utf-8")
        os.replace(tmp, path)
