"""Many questions in a row without a jail boot each: a pool of jailed fork servers ("zygotes").

A jail serves ONE question at a time, and a question gets it only after the zygote has confirmed
that the last one's processes and files are gone (docs/sandbox.md, "the sandbox pool").
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import tempfile
import threading
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from thyme_cli.defaults import STEP_TIMEOUT_S
from thyme_cli.errors import UsageError
from thyme_cli.sandbox.host.backends import WORKER_MARKER, Backend, Stage, WorkerSpec
from thyme_cli.sandbox.host.closing import Closing
from thyme_cli.sandbox.host.factory import check_hello, open_sandbox, select_backend
from thyme_cli.sandbox.host.launch import Launched, close_fds
from thyme_cli.sandbox.host.limits import Limits, step_timeout
from thyme_cli.sandbox.host.session import STAGE_PREFIX, WorkerSandbox, last_meaningful_line, remove_stage
from thyme_cli.sandbox.jail import wire

POOL_ENV = "THYME_SANDBOX_POOL"
SEND_TIMEOUT_S = 10.0  # control frames are tiny: a zygote that cannot take one is broken
MAX_IDLE_JAILS = 4  # jails kept warm beyond the ones in use


class JailBroken(wire.ProtocolError):
    """The zygote died, refused, or could not confirm a clean-up: its jail is not reused."""


def pool_enabled() -> bool:
    return os.environ.get(POOL_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


class ZygoteJail:
    """One jail with a zygote, driven over its control socket. Used by one question at a time."""

    def __init__(self, backend: Backend, limits: Limits, tag: str) -> None:
        self.tag = tag
        self.marker = WORKER_MARKER + tag
        root = Path(tempfile.mkdtemp(prefix=f"{STAGE_PREFIX}{os.getpid()}-"))
        self.stage = Stage(root=root, image_name="")
        self._owed: deque[str] = deque()  # replies the zygote owes us, in order
        self._spare: socket.socket | None = None  # our end of the next question's child
        self._spare_pid: int | None = None
        self.broken: str | None = None
        self.used = False  # has served a question (a fresh jail failing is not "transparent")
        try:
            self.stage.input_dir.mkdir(mode=0o755)  # the inbox: holds the current question's image
            spec = WorkerSpec(stage=self.stage, limits=limits, tag=tag, zygote=True)
            self.launched = Launched(backend.plan(spec))
        except BaseException:
            remove_stage(self.stage)
            raise
        try:
            self._queue_spawn()  # processed as soon as the zygote has imported everything
        except (OSError, wire.ProtocolError) as exc:
            self.broken = f"could not reach the zygote: {exc}"

    # -- control socket ------------------------------------------------------------------------

    def _send(self, message: dict[str, Any], fds: list[int] | None = None) -> None:
        sock = self.launched.sock
        sock.settimeout(SEND_TIMEOUT_S)
        try:
            wire.send(sock, message, fds)
        finally:
            with contextlib.suppress(OSError):
                sock.settimeout(None)

    def _queue_spawn(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._send({"op": "spawn"}, [theirs.fileno()])
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._spare, self._spare_pid = ours, None
        self._owed.append("spawned")

    def recycle(self) -> None:
        """The question is done with the jail: kill everything in it, wipe, pre-fork the next child.
        Does not wait; `take_child` reads the confirmations."""
        self._close_spare()
        self._send({"op": "reset"})
        self._owed.append("clean")
        self._queue_spawn()

    def wait_started(self, deadline: float) -> dict[str, Any]:
        """The zygote's hello (it has imported everything and installed its limits)."""
        if self.launched.hello is not None:
            return self.launched.hello
        hello, _ = self.launched.wait_hello(max(0.0, deadline - time.monotonic()), want_fd=False)
        problem = check_hello(hello)
        if problem is None and not hello.get("zygote"):
            problem = "the jailed process is not a zygote"
        if problem is None and hello.get("pid") != 1:
            problem = f"the zygote is not the jail's PID 1 (pid {hello.get('pid')})"
        if problem:
            self.broken = problem
            raise JailBroken(problem)
        return hello

    def take_child(self, deadline: float) -> tuple[socket.socket, int]:
        """Wait until the jail is clean and its next child forked; returns our end and its pid."""
        if self.broken:
            raise JailBroken(self.broken)
        self.wait_started(deadline)
        while self._owed:
            expected = self._owed[0]
            try:
                msg, _ = self.launched.reader.read(deadline)
            except wire.FrameTimeout:
                self.broken = f"the zygote did not confirm {expected!r} in time"
                raise JailBroken(self.broken) from None
            self._owed.popleft()
            if msg.get("op") != expected or msg.get("error") or (expected == "clean" and not msg.get("ok")):
                self.broken = f"the zygote answered {expected!r} with {msg.get('error') or msg.get('op')!r}"
                raise JailBroken(self.broken)
            if expected == "spawned":
                pid = msg.get("pid")
                self._spare_pid = pid if isinstance(pid, int) else None
        if self._spare is None or self._spare_pid is None:
            self.broken = "no child was forked"
            raise JailBroken(self.broken)
        sock, pid = self._spare, self._spare_pid
        self._spare, self._spare_pid = None, None
        return sock, pid

    def child_status(self, pid: int) -> int | None:
        """The wait status of a dead child of this jail (None: alive, unknown, or jail broken)."""
        if self.broken or self._owed or not self.alive():
            return None
        try:
            self._send({"op": "status", "pid": pid})
            msg, _ = self.launched.reader.read(time.monotonic() + SEND_TIMEOUT_S)
        except (OSError, wire.ProtocolError) as exc:
            self.broken = f"the zygote did not answer: {exc}"
            return None
        status = msg.get("status")
        return status if msg.get("op") == "status" and isinstance(status, int) else None

    # -- the question's input image --------------------------------------------------------------

    def place_image(self, stage: Stage) -> None:
        """Show a question's input (read-only, at /mnt/data/input/<name>): only once the jail is
        clean, so that no process of an earlier question can ever see it."""
        dest = self.stage.input_dir / stage.image_name
        with contextlib.suppress(FileNotFoundError):
            dest.unlink()
        try:
            os.link(stage.input_dir / stage.image_name, dest)
        except OSError:
            shutil.copyfile(stage.input_dir / stage.image_name, dest)
            dest.chmod(0o444)

    def remove_image(self, stage: Stage) -> None:
        with contextlib.suppress(OSError):
            (self.stage.input_dir / stage.image_name).unlink()

    # -- lifetime ----------------------------------------------------------------------------------

    def alive(self) -> bool:
        return self.broken is None and self.launched.alive()

    def _close_spare(self) -> None:
        if self._spare is not None:
            with contextlib.suppress(OSError):
                self._spare.close()
            self._spare, self._spare_pid = None, None

    def kill(self) -> None:
        """The whole jail: zygote, children, everything they started (see launch.Launched)."""
        self._close_spare()
        self.launched.close()
        remove_stage(self.stage)


class PooledChild:
    """One question's forked worker, as WorkerSandbox drives it (see session.WorkerHandle).

    Created lazily: the jail is taken in wait_hello (the first step), not when the question is
    opened, so a prefetched question never holds a jail while another one runs in it."""

    def __init__(self, pool: SandboxPool, stage: Stage, image_path: str) -> None:
        self._pool = pool
        self._stage = stage
        self._image_path = image_path
        self._jail: ZygoteJail | None = None
        self._sock: socket.socket | None = None
        self._reader: wire.FrameReader | None = None
        self.pid: int | None = None  # in the jail's PID namespace
        self.hello: dict[str, Any] | None = None
        self.started = time.monotonic()
        self.ready_at: float | None = None
        self._status: int | None = None
        self._launcher_stderr = ""

    @property
    def sock(self) -> socket.socket:
        assert self._sock is not None, "the child has not started"
        return self._sock

    @property
    def reader(self) -> wire.FrameReader:
        assert self._reader is not None, "the child has not started"
        return self._reader

    @property
    def jail(self) -> ZygoteJail | None:
        return self._jail

    def wait_hello(self, timeout_s: float, want_fd: bool) -> tuple[dict[str, Any], list[int]]:
        self.started = time.monotonic()
        msg, fds = self._start_child(self.started + timeout_s, want_fd)
        problem = None if msg.get("op") == "hello" else str(msg.get("error") or f"unexpected frame {msg.get('op')!r}")
        problem = problem or check_hello(msg)
        if problem:
            close_fds(fds)
            raise wire.ProtocolError(problem)
        self.hello = msg
        self.ready_at = time.monotonic()
        return msg, fds

    def _start_child(self, deadline: float, want_fd: bool) -> tuple[dict[str, Any], list[int]]:
        """Take a jail's fresh child and assign it this question; returns the child's first frame.
        A jail that served questions before and died meanwhile is replaced, until the deadline."""
        while True:
            try:
                jail = self._pool._acquire()
            except OSError as exc:
                raise wire.ProtocolError(f"the sandbox pool could not start a jail: {exc}") from None
            used = jail.used
            try:
                sock, pid = jail.take_child(deadline)
            except (OSError, wire.ProtocolError) as exc:
                self._discard(jail)
                if not used or time.monotonic() >= deadline:
                    raise wire.ProtocolError(f"the sandbox pool's jail could not start: {exc}") from None
                continue  # the zygote of a jail that served questions before died: take another
            self._jail, self._sock, self.pid = jail, sock, pid
            self._reader = wire.FrameReader(sock)
            jail.used = True
            try:
                return self._assign(sock, deadline, want_fd)
            except (OSError, wire.ProtocolError) as exc:
                if not used or time.monotonic() >= deadline:
                    if isinstance(exc, wire.ProtocolError):
                        raise
                    raise wire.ProtocolError(f"the sandbox child could not start: {exc}") from None
                # a zygote that served questions before died just after forking this child
                with contextlib.suppress(OSError):
                    sock.close()
                self._jail = self._sock = self._reader = None
                self.pid = None
                self._discard(jail)

    def _discard(self, jail: ZygoteJail) -> None:
        """Give up a jail that failed us, keeping its launcher's last words for the error."""
        self._launcher_stderr = jail.launched.stderr_text()
        self._pool._discard(jail)

    def _assign(self, sock: socket.socket, deadline: float, want_fd: bool) -> tuple[dict[str, Any], list[int]]:
        """Give the fresh child its question's image; its first frame (hello) comes back."""
        assert self._jail is not None and self._reader is not None
        self._jail.place_image(self._stage)
        sock.settimeout(SEND_TIMEOUT_S)
        wire.send(sock, {"op": "assign", "image_path": self._image_path})
        sock.settimeout(None)
        return self._reader.read(deadline, want_fds=want_fd)

    def idle_ok(self) -> bool:
        if self._jail is None or self._sock is None or not self._jail.alive():
            return False
        readable, _, _ = select.select([self._sock], [], [], 0)
        return not readable

    def kill(self) -> None:
        """After a failure: note how the child ended (for the error message), then hand back."""
        if self._jail is not None and self.pid is not None and self._status is None:
            self._status = self._jail.child_status(self.pid)
        self.close()

    def close(self) -> None:
        """Hand the jail back: the zygote kills the child and all it started and wipes the jail."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        jail, self._jail = self._jail, None
        if jail is None:
            return
        jail.remove_image(self._stage)
        if jail.alive():
            try:
                jail.recycle()
            except (OSError, wire.ProtocolError) as exc:
                jail.broken = f"could not recycle: {exc}"
        self._pool._release(jail)  # kills it unless it is alive and recycling

    def stderr_text(self, limit: int = 8192) -> str:
        if self._jail is not None:
            return self._jail.launched.stderr_text(limit)
        return self._launcher_stderr[-limit:]

    def exit_code(self) -> int | None:
        """Shell style, as nsjail reports a killed worker: 128 + signal."""
        status = self._status
        if status is None:
            return None
        if os.WIFSIGNALED(status):
            return 128 + os.WTERMSIG(status)
        return os.WEXITSTATUS(status) if os.WIFEXITED(status) else None

    def exit_description(self) -> str:
        status = self._status
        if status is None:
            return "ended"
        if os.WIFSIGNALED(status):
            try:
                return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
            except ValueError:
                return f"killed by signal {os.WTERMSIG(status)}"
        return f"exit status {os.WEXITSTATUS(status)}"


class PooledSandbox(WorkerSandbox):
    """A WorkerSandbox whose workers are children forked in one of the pool's jails."""

    def __init__(self, pool: SandboxPool, *, image: Path, images_dir: Path) -> None:
        self._pool = pool
        super().__init__(pool._backend, image=image, images_dir=images_dir, timeout_s=pool.timeout_s,
                         limits=pool.limits)  # fmt: skip

    def _spawn(self) -> None:
        self._spawns += 1
        self._worker = PooledChild(self._pool, self._stage, self.image_path)
        self.worker_start_s = None

    @property
    def child(self) -> PooledChild | None:
        return self._worker if isinstance(self._worker, PooledChild) else None

    @property
    def worker_marker(self) -> str:
        """Marks the processes of the jail this question runs in (its zygote and children)."""
        self.wait_ready()
        child = self.child
        assert child is not None and child.jail is not None
        return child.jail.marker

    @property
    def worker_pid(self) -> int | None:
        """Host pid of the launcher of the jail this question runs in."""
        child = self.child
        jail = child.jail if child is not None else None
        return jail.launched.proc.pid if jail is not None else None


class SandboxPool(Closing):
    """Jails with warm zygotes; `open` gives each question a fresh forked child. Thread-safe."""

    def __init__(self, backend: Backend, *, timeout_s: float, limits: Limits) -> None:
        self.timeout_s = step_timeout(timeout_s)
        self._backend = backend
        self.backend: str = backend.name
        self.limits = limits
        self.pooled = True
        self._lock = threading.Lock()
        self._idle: list[ZygoteJail] = []
        self._busy: set[ZygoteJail] = set()
        self._closed = False
        self.jails_started = 0
        # Jails are launched from this one long-lived thread: the parent-death signal that takes
        # a jail down with thyme fires when the THREAD that started it exits (see launch.py).
        self._launcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="thyme-sandbox-pool")

    def start(self) -> None:
        """Boot the first jail and wait for its zygote; raises if the zygote cannot start here."""
        jail = self._launch()
        try:
            jail.wait_started(time.monotonic() + self.limits.start_timeout_s)
        except (OSError, wire.ProtocolError) as exc:
            detail = last_meaningful_line(jail.launched.stderr_text()) or str(exc)
            self._discard(jail)
            raise wire.ProtocolError(detail) from None
        self._release(jail)

    def open(self, *, image: Path, images_dir: Path) -> WorkerSandbox:
        """A question's sandbox. Cheap: stages a private copy of the image, starts nothing."""
        if self._closed:
            raise UsageError("the sandbox pool is closed")
        return PooledSandbox(self, image=Path(image), images_dir=Path(images_dir))

    def _launch(self) -> ZygoteJail:
        tag = "pool-" + uuid.uuid4().hex[:12]
        jail = self._launcher.submit(ZygoteJail, self._backend, self.limits, tag).result()
        with self._lock:
            self.jails_started += 1
            self._busy.add(jail)
            if self._closed:
                self._busy.discard(jail)
                jail.kill()
                raise JailBroken("the sandbox pool is closed")
        return jail

    def _acquire(self) -> ZygoteJail:
        """An idle jail (still to be confirmed clean by take_child), or a new one."""
        stale: list[ZygoteJail] = []
        found: ZygoteJail | None = None
        with self._lock:
            if self._closed:
                raise JailBroken("the sandbox pool is closed")
            while self._idle:
                jail = self._idle.pop()
                if jail.alive():
                    found = jail
                    self._busy.add(jail)
                    break
                stale.append(jail)
        for jail in stale:
            jail.kill()
        return found if found is not None else self._launch()

    def _release(self, jail: ZygoteJail) -> None:
        with self._lock:
            self._busy.discard(jail)
            keep = not self._closed and jail.alive() and len(self._idle) < MAX_IDLE_JAILS
            if keep:
                self._idle.append(jail)
        if not keep:
            jail.kill()

    def _discard(self, jail: ZygoteJail) -> None:
        with self._lock:
            self._busy.discard(jail)
        jail.kill()

    @property
    def jails(self) -> list[ZygoteJail]:
        with self._lock:
            return [*self._idle, *self._busy]

    def close(self) -> None:
        """Kill every jail (questions still running in one fail their next step)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            jails = [*self._idle, *self._busy]
            self._idle.clear()
            self._busy.clear()
        for jail in jails:
            jail.kill()
        self._launcher.shutdown(wait=False)


class PerQuestionPool(Closing):
    """The same interface, one jail per question (open_sandbox): THYME_SANDBOX_POOL=0, `none`, or
    a machine where the zygote cannot start (`reason` says why)."""

    def __init__(self, backend: str, *, timeout_s: float, limits: Limits, reason: str = "") -> None:
        self.backend = backend
        self.timeout_s = timeout_s
        self.limits = limits
        self.reason = reason
        self.pooled = False

    def open(self, *, image: Path, images_dir: Path) -> WorkerSandbox:
        return open_sandbox(self.backend, image=Path(image), images_dir=Path(images_dir),
                            timeout_s=self.timeout_s, limits=self.limits)  # fmt: skip

    def close(self) -> None:
        return None


def open_pool(
    backend: str = "auto", *, timeout_s: float = STEP_TIMEOUT_S, limits: Limits | None = None
) -> SandboxPool | PerQuestionPool:
    """Sandboxes for many questions in a row. Boots the first jail (so a zygote that cannot start
    here falls back to one jail per question right away); raises SandboxUnavailable like
    open_sandbox when no backend starts."""
    lim = limits or Limits()
    lim.validate()
    step_timeout(timeout_s)
    chosen = select_backend(backend)
    if not chosen.jailed:
        return PerQuestionPool(chosen.name, timeout_s=timeout_s, limits=lim, reason="no jail: nothing to share")
    if not pool_enabled():
        return PerQuestionPool(chosen.name, timeout_s=timeout_s, limits=lim, reason=f"{POOL_ENV}=0")
    pool = SandboxPool(chosen, timeout_s=timeout_s, limits=lim)
    try:
        pool.start()
    except (OSError, wire.ProtocolError) as exc:
        pool.close()
        return PerQuestionPool(chosen.name, timeout_s=timeout_s, limits=lim, reason=f"zygote failed: {exc}")
    return pool
