"""Starting and stopping one worker process tree, whatever launcher is in front of it.

SIGKILL to the launcher's process group takes the whole jail down. The parent-death signal fires
when the THREAD that started the jail exits: open a sandbox from a thread that outlives it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from thyme_cli.sandbox.jail import wire


@dataclass
class LaunchPlan:
    """How to start one worker: argv and the few Popen knobs that differ between launchers."""

    argv: list[str]
    env: dict[str, str]
    cwd: str = "/"
    needs_pdeathsig: bool = False
    user: int | None = None
    group: int | None = None
    extra_groups: list[int] | None = None
    notes: dict[str, Any] = field(default_factory=dict)


@functools.cache
def _setpriv() -> str | None:
    """setpriv (util-linux) if it supports --pdeathsig."""
    path = shutil.which("setpriv", path="/usr/bin:/bin:/usr/sbin:/sbin")
    if not path:
        return None
    try:
        done = subprocess.run(
            [path, "--pdeathsig", "KILL", "--", "/bin/true"],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return path if done.returncode == 0 else None


def _prctl_pdeathsig() -> None:  # pragma: no cover - runs in the forked child
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def close_fds(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class Launched:
    """A started worker: the launcher process, our end of the socket, and its stderr file."""

    def __init__(self, plan: LaunchPlan) -> None:
        argv = list(plan.argv)
        preexec: Callable[[], None] | None = None
        if plan.needs_pdeathsig:
            setpriv = _setpriv()
            if setpriv:
                argv = [setpriv, "--pdeathsig", "KILL", "--", *argv]
            else:
                preexec = _prctl_pdeathsig
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.errfile: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the worker
        self.started = time.monotonic()
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=theirs.fileno(),
                stdout=theirs.fileno(),
                stderr=self.errfile,
                close_fds=True,
                start_new_session=True,
                env=plan.env,
                cwd=plan.cwd,
                preexec_fn=preexec,
                user=plan.user,
                group=plan.group,
                extra_groups=plan.extra_groups,
            )
        except BaseException:
            ours.close()
            self.errfile.close()
            raise
        finally:
            theirs.close()
        self.sock = ours
        self.reader = wire.FrameReader(ours)
        self.hello: dict[str, Any] | None = None
        self.ready_at: float | None = None

    def wait_hello(self, timeout_s: float, want_fd: bool) -> tuple[dict[str, Any], list[int]]:
        """The worker's first frame and the fds it passed (its output dir, its /tmp); raises
        protocol errors (died, timed out) to the caller."""
        msg, fds = self.reader.read(time.monotonic() + timeout_s, want_fds=want_fd)
        if msg.get("op") != "hello":
            close_fds(fds)
            raise wire.ProtocolError(str(msg.get("error") or f"unexpected first frame {msg.get('op')!r}"))
        self.hello = msg
        self.ready_at = time.monotonic()
        return msg, fds

    def alive(self) -> bool:
        return self.proc.poll() is None

    def idle_ok(self) -> bool:
        """Between steps the worker says nothing: a readable socket means it died (EOF) or that
        something in the jail is writing to it. Either way it cannot take the next step."""
        if not self.alive():
            return False
        readable, _, _ = select.select([self.sock], [], [], 0)
        return not readable

    def kill(self) -> None:
        """SIGKILL the launcher's process group and reap it. Idempotent."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        with contextlib.suppress(OSError):
            self.sock.close()

    def close(self) -> None:
        self.kill()
        with contextlib.suppress(OSError):
            self.errfile.close()

    def stderr_text(self, limit: int = 8192) -> str:
        """What the launcher (and the worker before it redirected its stderr) printed."""
        try:
            self.errfile.flush()
            size = self.errfile.seek(0, os.SEEK_END)
            self.errfile.seek(max(0, size - limit))
            return self.errfile.read().decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""

    def exit_code(self) -> int | None:
        """The launcher's exit status (negative: killed by that signal), None while it runs."""
        return self.proc.poll()

    def exit_description(self) -> str:
        code = self.proc.poll()
        if code is None:
            return "still running"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit status {code}"
