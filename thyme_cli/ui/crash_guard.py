"""One clear line, and no half-made run directory, when native code kills the process.

llama.cpp runs in thyme's own process; a fault in its kernels (SIGILL, SIGSEGV, an abort) kills
Python with no exception to catch, leaving a bare "Illegal instruction" from the shell and the
run directories made so far. ``guard()`` forks at the start of `ask` / `batch`: the child goes on
to run the command exactly as before, the parent only waits. If the child dies by a signal, the
parent removes the run directories the child announced that never got their trace.json and
prints one line. The known crash (AMX kernels on VMs that do not enable them) is avoided before it
happens by engine/cpu_probe; this covers the unknown ones.

The guard stays off where forking cannot help or would break things: in-process test runners
(stdout is not a real file), platforms without fork, and when THYME_CRASH_GUARD=0.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import NoReturn

ENV = "THYME_CRASH_GUARD"
_announce_fd: int | None = None


def _usable() -> bool:
    if os.environ.get(ENV, "1").strip() in ("0", "false", "no", "off") or not hasattr(os, "fork"):
        return False
    try:
        sys.stdout.fileno()
        sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True


def guard(command: str) -> None:
    """Fork; return in the child (which runs the command); in the parent, wait and exit as it did."""
    global _announce_fd
    if _announce_fd is not None or not _usable():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        os.set_blocking(write_fd, False)  # never wait on the parent: a full pipe drops the note
        _die_with_parent()
        _announce_fd = write_fd
        return
    os.close(write_fd)
    status = _wait(pid)
    # Read after the wait (a process the child started may still hold the pipe open).
    os.set_blocking(read_fd, False)
    announced = _read(read_fd)
    if not os.WIFSIGNALED(status):
        os._exit(os.waitstatus_to_exitcode(status))
    signum = os.WTERMSIG(status)
    if signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGKILL, signal.SIGPIPE):
        _end_as_stopped(signum)
    removed = _remove_unfinished(announced.decode(errors="replace").splitlines())
    _report_crash(command, signum, removed)
    os._exit(1)


def _end_as_stopped(signum: int) -> NoReturn:
    """The child was stopped from outside: the parent ends the same way."""
    if signum != signal.SIGKILL:
        signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
        os.kill(os.getpid(), signum)
    os._exit(128 + signum)


def _report_crash(command: str, signum: int, removed: list[str]) -> None:
    """One line for a native crash: the signal, the run dirs removed, what to try."""
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    note = (
        f"; removed the unfinished run directory {removed[0]}"
        if len(removed) == 1
        else f"; removed {len(removed)} unfinished run directories"
        if removed
        else ""
    )
    sys.stderr.write(
        f"error: thyme {command} crashed inside native code ({name}){note}. "
        f"Run `thyme doctor`; THYME_EXTRA_BUFTS=0 loads models without llama.cpp's CPU extra buffer types\n"
    )


def _read(fd: int) -> bytes:
    data = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except (BlockingIOError, InterruptedError):
            return data
        if not chunk:
            return data
        data += chunk


def _wait(pid: int) -> int:
    """Wait for the child, passing on the signals a process sends us (kill, timeout); the ones a
    terminal sends (Ctrl-C, hang-up) reach the child by itself, as it is in the same process group."""
    waited = {signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        info = signal.sigwaitinfo(waited)
        if info.si_signo != signal.SIGCHLD and info.si_code <= 0:  # SI_USER, SI_QUEUE, SI_TKILL: from a process
            os.kill(pid, info.si_signo)


def _die_with_parent() -> None:
    """Linux: the child gets SIGKILL should the guarding parent be killed outright."""
    import ctypes
    import ctypes.util

    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG


def announce_run_dir(path: Path) -> None:
    """Tell the guarding parent about a run directory this process made (removed after a crash if
    it has no trace.json by then)."""
    if _announce_fd is not None:
        with contextlib.suppress(OSError):
            os.write(_announce_fd, f"{path}\n".encode())


def _remove_unfinished(paths: list[str]) -> list[str]:
    """Remove announced directories holding no finished run (trace.json) at their top or one level
    down (a batch's runs folder); the latest first, so a batch's unfinished item goes before its folder."""
    removed = []
    for raw in reversed(paths):
        path = Path(raw)
        if path.is_dir() and not (path / "trace.json").exists() and not any(path.glob("*/trace.json")):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(raw)
    return removed
