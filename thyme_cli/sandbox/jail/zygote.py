"""The jailed fork server ("zygote") behind SandboxPool: one jail, a fresh child per question.

It must stay PID 1 of its jail, single-threaded, non-dumpable and free of question data: the
isolation between the questions of a jail rests on it (docs/sandbox.md, "the sandbox pool").
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import resource
import select
import signal
import socket
import stat
import time
from typing import Any, NoReturn

from thyme_cli.sandbox.jail import startup, wire, worker

PR_SET_DUMPABLE = 4
RESET_DEADLINE_S = 10.0  # killing and wiping; the host gives up on the jail after its own deadline
MAX_WIPE_ENTRIES = 200_000  # beyond this the jail is cheaper to replace than to clean
STATUS_WAIT_S = 1.0  # how long a "status" request waits for a dying child
IDLE_REAP_S = 0.25  # how often an idle zygote reaps orphans that were reparented to it


# --- control frames, with the fds that ride on them ------------------------------------------------


def _recv_exact(sock: socket.socket, size: int, fds: list[int], *, allow_eof: bool) -> bytes | None:
    """Exactly `size` bytes (never more, so fds sent with the next frame stay with it)."""
    data = bytearray()
    while len(data) < size:
        chunk, new_fds, _flags, _addr = socket.recv_fds(sock, size - len(data), 4)
        fds.extend(new_fds)
        if not chunk:
            if allow_eof and not data:
                return None
            raise wire.ProtocolError("connection closed in the middle of a frame")
        data += chunk
    return bytes(data)


def recv_frame(sock: socket.socket) -> tuple[dict[str, Any], list[int]] | None:
    """The next control frame and the fds passed with it; None on EOF."""
    fds: list[int] = []
    try:
        header = _recv_exact(sock, wire.HEADER.size, fds, allow_eof=True)
        if header is None:
            return None
        (size,) = wire.HEADER.unpack(header)
        if size > wire.MAX_FRAME_BYTES:
            raise wire.ProtocolError(f"frame of {size} bytes exceeds {wire.MAX_FRAME_BYTES}")
        payload = _recv_exact(sock, size, fds, allow_eof=False)
        assert payload is not None
        return wire.decode(payload), fds
    except BaseException:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        raise


# --- the zygote -----------------------------------------------------------------------------------


def _catchable_signals() -> list[signal.Signals]:
    return [s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP)]


def _signals_for_init() -> None:
    """No handlers at all: as PID 1 every signal from inside the jail is then simply dropped.
    (Python installs one for SIGINT; a child could otherwise raise KeyboardInterrupt in here.)"""
    for sig in _catchable_signals():
        with contextlib.suppress(OSError, ValueError):
            signal.signal(sig, signal.SIG_DFL)


def _shared_writable_mappings() -> list[str]:
    """Memory a forked child would share with the zygote (and its later children)."""
    found = []
    with open("/proc/self/maps") as fh:
        for line in fh:
            fields = line.split()
            if len(fields) > 1 and fields[1][1] == "w" and fields[1][3] == "s":
                found.append(line.strip())
    return found


class Zygote:
    def __init__(self, sock: socket.socket, cfg: dict[str, Any], modules: dict[str, Any]) -> None:
        self.sock = sock
        self.cfg = cfg
        self.modules = modules
        self.exited: dict[int, int] = {}  # pid -> wait status, of children reaped so far

    def serve(self) -> NoReturn:
        while True:
            ready, _, _ = select.select([self.sock], [], [], IDLE_REAP_S)
            if not ready:
                self._reap()
                continue
            try:
                frame = recv_frame(self.sock)
            except (OSError, wire.ProtocolError):
                os._exit(0)
            if frame is None:
                os._exit(0)  # the host went away: the jail goes with us (we are its init)
            msg, fds = frame
            op = msg.get("op")
            if op == "spawn":
                reply = self._spawn(msg, fds)
            else:
                for fd in fds:
                    os.close(fd)
                if op == "reset":
                    reply = self._reset()
                elif op == "status":
                    reply = {"op": "status", "status": self._status(msg.get("pid"))}
                else:
                    reply = {"op": "error", "error": f"unknown op {op!r}"}
            try:
                wire.send(self.sock, reply)
            except (OSError, wire.ProtocolError):
                os._exit(0)
            self._reap()

    def _reap(self) -> bool:
        """Collect exited children; True while some are still alive."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            if pid == 0:
                return True
            self.exited[pid] = status
            if len(self.exited) > 256:
                del self.exited[next(iter(self.exited))]

    def _status(self, pid: object) -> int | None:
        """A child's wait status. The host asks when the child's socket closed, which happens in
        the kernel's exit path just before the child becomes reapable: allow it a moment."""
        if not isinstance(pid, int) or pid <= 1:
            return None
        deadline = time.monotonic() + STATUS_WAIT_S
        while True:
            self._reap()
            if pid in self.exited or time.monotonic() > deadline:
                return self.exited.get(pid)
            time.sleep(0.001)

    def _spawn(self, msg: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            return {"op": "spawned", "error": f"spawn needs exactly one fd, got {len(fds)}"}
        try:
            pid = os.fork()
        except OSError as exc:
            os.close(fds[0])
            return {"op": "spawned", "error": f"fork failed: {exc}"}
        if pid == 0:
            try:
                _question_child(self.sock, fds[0], self.cfg, self.modules)
            finally:
                os._exit(70)
        os.close(fds[0])
        return {"op": "spawned", "pid": pid}

    def _reset(self) -> dict[str, Any]:
        """Kill every other process in the jail, then empty /tmp and the output directory."""
        deadline = time.monotonic() + RESET_DEADLINE_S
        while True:
            with contextlib.suppress(OSError):
                os.kill(-1, signal.SIGKILL)  # as PID 1: everyone in the jail but us; ESRCH when alone
            if not self._reap():
                break  # no children: every process of the jail descends from us, so we are alone
            if time.monotonic() > deadline:
                return {"op": "clean", "ok": False, "error": "processes survived SIGKILL"}
            time.sleep(0.0005)
        self.exited.clear()
        removed = 0
        for top in (str(self.cfg["tmp_dir"]), str(self.cfg["out_root"])):
            try:
                removed += empty_dir(top, MAX_WIPE_ENTRIES - removed, deadline)
            except OSError as exc:
                return {"op": "clean", "ok": False, "error": f"could not empty {top}: {exc}"}
        return {"op": "clean", "ok": True, "removed": removed}


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def empty_dir(path: str, budget: int, deadline: float) -> int:
    """Remove everything below `path` (not `path` itself), never following a symlink; returns the
    number of entries removed. Only for when nothing else runs in the jail: the tree is the last
    question's, owned by our uid, with any permissions it liked (directories are chmod-ed 0700
    first). Iterative and fd-based; raises OSError when the tree is too large or too deep for
    the budget, the deadline or RLIMIT_NOFILE: the host then replaces the whole jail."""
    removed = 0
    stack: list[tuple[int, str | None]] = [(os.open(path, _DIR_FLAGS), None)]
    try:
        while stack:
            fd, _name = stack[-1]
            names = os.listdir(fd)
            if not names:
                stack.pop()
                os.close(fd)
                if stack and _name is not None:
                    os.rmdir(_name, dir_fd=stack[-1][0])
                    removed += 1
                continue
            for name in names:
                removed += 1
                if removed > budget or time.monotonic() > deadline:
                    raise OSError(errno.E2BIG, "too many files to clean up")
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    if st.st_mode & 0o700 != 0o700:
                        os.chmod(name, 0o700, dir_fd=fd)  # a directory (lstat said so), not a link
                    stack.append((os.open(name, _DIR_FLAGS, dir_fd=fd), name))
                    removed -= 1  # counted when its rmdir succeeds
                    break
                os.unlink(name, dir_fd=fd)
    finally:
        for fd, _ in stack:
            with contextlib.suppress(OSError):
                os.close(fd)
    return removed


# --- a question's child ---------------------------------------------------------------------------


def _question_child(control: socket.socket, fd: int, cfg: dict[str, Any], modules: dict[str, Any]) -> NoReturn:
    """Forked from the zygote: become one question's worker (trusted set-up, then model code)."""
    qsock: socket.socket | None = None
    try:
        control.detach()  # its fd is closed below; the object must never close a reused number
        startup.close_inherited_fds({0, 1, 2, fd})
        qsock = socket.socket(fileno=fd)
        _reset_fork_state(cfg, modules)
        own = _await_assignment(qsock, cfg)
        hello = startup.hello_frame(rlimit_cpu=resource.getrlimit(resource.RLIMIT_CPU)[1], out_root=own["out_root"])
        startup.send_hello(qsock, hello, own)
        runner = worker.Runner(own, modules)
    except BaseException:
        import traceback

        startup.fatal(qsock, traceback.format_exc())
    worker.serve(qsock, runner)


def _reset_fork_state(cfg: dict[str, Any], modules: dict[str, Any]) -> None:
    """Undo what fork shares with the zygote: signal dispositions, CPU time, capture files, numpy's
    random state."""
    for sig in _catchable_signals():
        with contextlib.suppress(OSError, ValueError):
            signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as a fresh Python
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # as the worker: EFBIG instead of death
    cpu = cfg.get("rlimits", {}).get("CPU")
    if cpu is not None:
        startup.apply_rlimits({"CPU": int(cpu)})  # per process: this child starts at zero
    startup.redirect_stdio(str(cfg["tmp_dir"]))  # fresh capture files: reset emptied /tmp
    numpy = modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()  # else every question would draw the zygote's numbers


def _await_assignment(qsock: socket.socket, cfg: dict[str, Any]) -> dict[str, Any]:
    """The host assigns this child to a question (its image path); anything else ends the child."""
    msg = wire.recv_blocking(qsock)
    if msg is None or msg.get("op") != "assign" or not isinstance(msg.get("image_path"), str):
        os._exit(0)
    return {**cfg, "image_path": msg["image_path"]}


def _warm_up(modules: dict[str, Any]) -> None:
    """Do once here what every question's first step would otherwise pay for (lazy imports)."""
    numpy = modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()  # its first call imports and sets up the seeding machinery (~10 ms)
    image = modules.get("Image")
    if image is not None:
        image.init()  # every Pillow format plugin, imported on first use otherwise


def serve(sock: socket.socket, cfg: dict[str, Any], modules: dict[str, Any], hello: dict[str, Any]) -> NoReturn:
    """Called by main.main after the common start-up; never returns."""
    os.chdir("/")
    _warm_up(modules)
    if os.getpid() != 1:
        raise RuntimeError(f"the zygote must be PID 1 of its jail, not {os.getpid()}")
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:
        raise RuntimeError(f"the zygote has {threads} threads; forking it would be unsafe")
    shared = _shared_writable_mappings()
    if shared:
        raise RuntimeError(f"writable shared memory would be inherited by every question: {shared[:3]}")
    _signals_for_init()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)
    for name in startup.CAPTURE:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(str(cfg["tmp_dir"]), name))
    hello = {**hello, "zygote": True, "threads": threads}
    wire.send(sock, hello)
    Zygote(sock, cfg, modules).serve()
