"""Virtual environments thyme manages apart from its own (the converter's, vLLM's).

Each is created on first use, completed by pip, and ready when its marker file records the
requirements it was installed with; one setup at a time holds its lock.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thyme_cli.errors import ThymeError


@dataclass(frozen=True)
class ManagedVenv:
    """Where one managed environment lives and how its setup reports a folder it cannot create."""

    path: Path
    marker: str  # the JSON file that records {"requirements": [...], "versions": {...}}
    label: str  # "the converter environment", for messages
    env_var: str  # the variable that moves it elsewhere
    error: type[ThymeError]

    @property
    def python(self) -> Path:
        return self.path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")

    @property
    def log(self) -> Path:
        """The setup log, next to the environment (it outlives a failed setup)."""
        return self.path.parent / f"{self.path.name}-setup.log"

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Make the parent folder, then hold the environment's lock while the caller sets it up."""
        from filelock import FileLock

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise self.error(
                f"cannot create {self.label} in {self.path}: {e.strerror}",
                hint=f"set {self.env_var} to a writable folder",
            ) from None
        with FileLock(str(self.path.parent / f".{self.path.name}.lock")):
            yield

    def create_command(self) -> list[str]:
        """`python -m venv` with thyme's own interpreter."""
        return [sys.executable, "-m", "venv", str(self.path)]

    def pip_install(self, requirements: list[str], *options: str) -> list[str]:
        return [str(self.python), "-m", "pip", "install", "--disable-pip-version-check", *options, *requirements]

    def read_marker(self) -> dict[str, Any] | None:
        try:
            data = json.loads((self.path / self.marker).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def forget(self) -> None:
        """Not ready any more (an install is about to change it)."""
        (self.path / self.marker).unlink(missing_ok=True)

    def record(self, requirements: list[str], versions: dict[str, Any]) -> None:
        """Ready: installed with REQUIREMENTS, running VERSIONS."""
        data = {"requirements": requirements, "versions": versions}
        (self.path / self.marker).write_text(json.dumps(data, indent=2), encoding="utf-8")
