"""The jailed worker: one Python per question, PIL/cv2/numpy imported once, code steps over a socket.

Started by a launcher (nsjail, bwrap or plain) as
    python -I -S -B -X utf8 -c BOOTSTRAP <code_root> <config-json> thyme-worker:<tag>
it drops privileges if asked (bwrap run as root), closes every inherited fd, points fd 0 at
/dev/null and fds 1/2 at capture files, imports the libraries, sets hard rlimits, installs the
seccomp filter, passes the host an fd of its output directory, and then runs steps in ONE
namespace so variables persist between the steps of a question (as Thyme was trained).

Everything here is trusted code that runs before the model's; after the first step nothing this
process says can be trusted, so the host re-checks whatever it is told.
"""

from __future__ import annotations

import builtins
import contextlib
import gc
import io
import json
import linecache
import os
import signal
import socket
import sys
import time
import traceback
from typing import Any, NoReturn

from thyme_cli.sandbox import crops, helpers, protocol, repair

BOOTSTRAP = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from thyme_cli.sandbox.worker import main; main(sys.argv[2])"
)
CODE_FILENAME = "<string>"
MAX_ERROR_LINES = 20
MAX_ERROR_CHARS = 4000
TRUNCATION_NOTE = "[output truncated: {n} more bytes]"


class CappedSink(io.RawIOBase):
    """Keeps the first `cap` bytes written and counts the rest: a stdout flood costs nothing."""

    def __init__(self, cap: int) -> None:
        super().__init__()
        self.cap = cap
        self.data = bytearray()
        self.dropped = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        size = len(view)
        room = self.cap - len(self.data)
        if room > 0:
            self.data += view[:room]
        self.dropped += max(0, size - max(room, 0))
        return size


def _text_stream(sink: CappedSink) -> io.TextIOWrapper:
    return io.TextIOWrapper(
        io.BufferedWriter(sink, buffer_size=8192),
        encoding="utf-8",
        errors="backslashreplace",
        write_through=True,
    )


def cap_output(parts: list[bytes], extra_dropped: int, cap: int) -> str:
    """Join captured byte chunks, keep `cap` bytes, and say how many more there were."""
    data = b"".join(parts)
    dropped = extra_dropped + max(0, len(data) - cap)
    text = data[:cap].decode("utf-8", "replace")
    if dropped:
        text = (text + "\n" if text and not text.endswith("\n") else text) + TRUNCATION_NOTE.format(n=dropped)
    return text


def format_error(exc: BaseException) -> str:
    """The traceback lines that point at the model's code, plus the exception itself."""
    te = traceback.TracebackException.from_exception(exc, capture_locals=False)
    te.__cause__ = None
    te.__context__ = None
    te.stack = traceback.StackSummary.from_list([f for f in te.stack if f.filename == CODE_FILENAME])
    lines = "".join(te.format()).rstrip("\n").split("\n")
    text = "\n".join(lines[-MAX_ERROR_LINES:])
    return text[-MAX_ERROR_CHARS:]


def _exit(*_args: Any) -> NoReturn:
    raise SystemExit(_args[0] if _args else None)


class Runner:
    """Owns the namespace shared by the steps of one question."""

    def __init__(self, cfg: dict[str, Any], modules: dict[str, Any]) -> None:
        self.image_path: str = cfg["image_path"]
        self.max_output: int = int(cfg["max_output"])
        self.tmp_dir: str = cfg["tmp_dir"]
        self.jailed = bool(cfg.get("jailed"))
        self.pid = os.getpid()
        self._size: tuple[int, int] | None = None
        self.ns: dict[str, Any] = {
            "__name__": "__main__",
            "__builtins__": builtins,
            "exit": _exit,
            "quit": _exit,
            "image_path": self.image_path,
            repair.CROP_HELPER: helpers.thyme_crop,
            repair.SLICE_HELPER: helpers.thyme_slice,
            **modules,
        }
        self.crops = crops.install(self.image_path, modules)  # where the code looks, for the trace

    def _image_size(self) -> tuple[int, int] | None:
        """The input's (width, height), read once: upstream clamps literal boxes against it."""
        if self._size is None:
            self._size = (0, 0)
            image_module = self.ns.get("Image")
            if image_module is not None:
                with contextlib.suppress(Exception), image_module.open(self.image_path) as im:
                    self._size = (int(im.width), int(im.height))
        return self._size if all(self._size) else None

    def run(self, msg: dict[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        step = int(msg["step"])
        out_dir = str(msg["out_dir"])
        code = str(msg["code"])
        notes: list[str] = []
        try:
            os.makedirs(out_dir, exist_ok=True)
            os.chdir(out_dir)
        except OSError as exc:  # e.g. the code filled the output tmpfs: still run, so it can clean up
            notes.append(f"[thyme: could not create the output directory {out_dir}: {exc.strerror}]")
        os.environ["THYME_OUTPUT_DIR"] = out_dir
        _truncate_capture()
        self.crops.take()  # a fresh list for this step
        # Upstream's exec gets `temp_output_dir` as a local (written with a trailing slash).
        self.ns.setdefault("temp_output_dir", out_dir.rstrip("/") + "/")
        fixed = repair.repair(
            code,
            repair.RepairContext(image_path=self.image_path, output_dir=out_dir, image_size=self._image_size()),
        )
        for directory in fixed.make_dirs:
            with contextlib.suppress(OSError):
                os.makedirs(directory, exist_ok=True)
        out_sink, err_sink = CappedSink(self.max_output), CappedSink(self.max_output)
        out_text, err_text = _text_stream(out_sink), _text_stream(err_sink)
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = out_text, err_text
        error: str | None = None
        try:
            if fixed.syntax_error is not None:
                raise fixed.syntax_error
            assert fixed.tree is not None
            linecache.cache[CODE_FILENAME] = (
                len(fixed.source),
                None,
                fixed.source.splitlines(True),
                CODE_FILENAME,
            )
            compiled = compile(fixed.tree, CODE_FILENAME, "exec")
            exec(compiled, self.ns)
        except SystemExit as exc:
            if exc.code not in (None, 0):
                error = f"SystemExit: {exc.code}"
        except BaseException as exc:
            try:
                error = format_error(exc)
            except BaseException:  # e.g. MemoryError while formatting
                error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
            del exc
        finally:
            if os.getpid() != self.pid:
                os._exit(0)  # a process the code forked must never return into the worker loop
            for stream in (out_text, err_text):
                with contextlib.suppress(Exception):
                    stream.flush()
            sys.stdout, sys.stderr = saved
        self._reap_strays()
        if error is not None and "MemoryError" in error:
            gc.collect()
        fd_out, fd_err = _read_capture(self.tmp_dir, self.max_output)
        processed = self.ns.get("processed_path")
        return {
            "op": "result",
            "step": step,
            "stdout": cap_output(
                [bytes(out_sink.data), fd_out[0]], out_sink.dropped + fd_out[1], self.max_output
            ),
            "stderr": cap_output(
                [bytes(err_sink.data), fd_err[0], "".join("\n" + n for n in notes).encode()],
                err_sink.dropped + fd_err[1],
                self.max_output,
            ),
            "error": error,
            "processed_path": processed[:4096] if isinstance(processed, str) else None,
            "applied": fixed.applied,
            "crops": self.crops.take(),
            "duration_s": time.monotonic() - started,
        }

    def _reap_strays(self) -> None:
        """Kill whatever the step left running in the jail (daemons, forks): inside a PID namespace
        kill(-1) reaches exactly the jail's other processes. Never without a jail: there it would
        mean every process of the user."""
        if not self.jailed:
            return
        with contextlib.suppress(OSError):
            os.kill(-1, signal.SIGKILL)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                time.sleep(0.001)


_CAPTURE = (".thyme-stdout", ".thyme-stderr")


def _redirect_stdio(tmp_dir: str) -> None:
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    for fd, name in zip((1, 2), _CAPTURE, strict=True):
        path = os.path.join(tmp_dir, name)
        new = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        os.dup2(new, fd)
        os.close(new)


def _truncate_capture() -> None:
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)


def _read_capture(tmp_dir: str, cap: int) -> tuple[tuple[bytes, int], tuple[bytes, int]]:
    """What C code and child processes wrote to fds 1 and 2 during the step: (head, bytes beyond)."""
    results: list[tuple[bytes, int]] = []
    for name in _CAPTURE:
        try:
            fd = os.open(os.path.join(tmp_dir, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            results.append((b"", 0))
            continue
        try:
            size = os.fstat(fd).st_size
            head = os.pread(fd, cap, 0)
            results.append((head, max(0, size - len(head))))
        except OSError:
            results.append((b"", 0))
        finally:
            os.close(fd)
    return results[0], results[1]


def _close_inherited_fds(keep: set[int]) -> list[int]:
    """Close every fd we did not ask for; report which ones the launcher let through."""
    try:
        listed = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        listed = list(range(3, 1024))
    found = []
    for fd in sorted(listed):
        if fd in keep:
            continue
        try:
            os.fstat(fd)
        except OSError:
            continue  # the listing's own directory fd, already closed
        found.append(fd)
        with contextlib.suppress(OSError):
            os.close(fd)
    return found


def _drop_privileges(uid: int, gid: int) -> None:
    """Become uid:gid for good (bwrap started as root): drop the bounding set, groups, ids."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_drop = 24
    for cap in range(64):
        if libc.prctl(pr_capbset_drop, cap, 0, 0, 0) != 0:
            break  # EINVAL past the last capability
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid) or os.getgroups():
        raise RuntimeError("could not drop privileges")
    try:
        os.setresuid(0, 0, 0)
    except PermissionError:
        return
    raise RuntimeError("privileges could be regained after dropping them")


def _die_with_parent() -> None:
    """(Re)arm SIGKILL on the launcher's death: the kernel clears it whenever credentials change,
    and the bwrap-as-root path changes them right here. Without it a busy worker would outlive a
    killed launcher (PID namespace teardown needs its init, i.e. us, to die first)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


_RLIMITS = {
    "AS": "RLIMIT_AS",
    "CPU": "RLIMIT_CPU",
    "FSIZE": "RLIMIT_FSIZE",
    "NOFILE": "RLIMIT_NOFILE",
    "NPROC": "RLIMIT_NPROC",
    "CORE": "RLIMIT_CORE",
}


def _apply_rlimits(limits: dict[str, int]) -> None:
    import resource

    for key, value in limits.items():
        which = getattr(resource, _RLIMITS[key])
        _soft, hard = resource.getrlimit(which)
        target = int(value) if hard == resource.RLIM_INFINITY else min(int(value), hard)
        resource.setrlimit(which, (target, target))


def _status_fields(*names: str) -> dict[str, str]:
    try:
        with open("/proc/self/status") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key in names:
            out[key] = value.strip()
    return out


def _fast_png_by_default(image_module: Any) -> None:
    """PNGs saved in the jail are temporary (the host re-encodes every one), so compressing them
    hard is wasted work: zlib level 1 unless the code asks for a level (or optimize) itself."""
    from PIL import PngImagePlugin

    plain_save = PngImagePlugin._save

    def save(im: Any, fp: Any, filename: Any) -> None:
        if "optimize" not in im.encoderinfo:
            im.encoderinfo.setdefault("compress_level", 1)
        plain_save(im, fp, filename)

    image_module.register_save("PNG", save)


def _preload(cfg: dict[str, Any]) -> dict[str, Any]:
    """Import what Thyme's code expects to find already imported (the slow part of a start)."""
    import cmath
    import collections
    import datetime
    import itertools
    import json as json_mod
    import math
    import random
    import re
    import shutil
    import string

    import cv2
    import numpy
    import PIL
    from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps, UnidentifiedImageError

    cv2.setNumThreads(int(cfg.get("cv2_threads", 2)))
    _fast_png_by_default(Image)
    return {
        "os": os,
        "math": math,
        "random": random,
        "json": json_mod,
        "re": re,
        "string": string,
        "numpy": numpy,
        "np": numpy,
        "Image": Image,
        "ImageDraw": ImageDraw,
        "ImageEnhance": ImageEnhance,
        "ImageFilter": ImageFilter,
        "ImageOps": ImageOps,
        "cv2": cv2,
        # Upstream's exec also reaches these without an import (its builtins dict holds them).
        "PIL": PIL,
        "UnidentifiedImageError": UnidentifiedImageError,
        "itertools": itertools,
        "time": time,
        "datetime": datetime,
        "cmath": cmath,
        "collections": collections,
        "shutil": shutil,
    }


def _fatal(sock: socket.socket | None, text: str) -> NoReturn:
    if sock is not None:
        with contextlib.suppress(OSError):
            protocol.send(sock, {"op": "fatal", "error": text[-MAX_ERROR_CHARS:]})
    with contextlib.suppress(OSError):
        os.write(2, text.encode("utf-8", "replace")[-MAX_ERROR_CHARS:])
    os._exit(70)


def main(raw_config: str) -> NoReturn:
    started = time.monotonic()
    sock: socket.socket | None = None
    try:
        cfg = json.loads(raw_config)
        sock = socket.socket(fileno=os.dup(0))
        if cfg.get("drop_to"):
            uid, gid = cfg["drop_to"]
            _drop_privileges(int(uid), int(gid))
        _die_with_parent()
        # Below the model's threads: a worker booting for the next batch item, or a runaway step,
        # must not starve llama.cpp (whose threads spin-wait on each other) on a small machine.
        os.nice(int(cfg.get("nice", 0)))
        inherited = _close_inherited_fds({0, 1, 2, sock.fileno()})
        _redirect_stdio(cfg["tmp_dir"])
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        sys.path.extend(p for p in cfg["sys_path"] if p not in sys.path)
        modules = {} if cfg.get("probe") else _preload(cfg)
        imported = time.monotonic()
        zygote = bool(cfg.get("zygote"))
        rlimits = dict(cfg.get("rlimits", {}))
        if zygote:
            rlimits.pop("CPU", None)  # per process: each question's child sets it on itself
        _apply_rlimits(rlimits)
        if cfg.get("seccomp"):
            from thyme_cli.sandbox import seccomp

            seccomp.install()
            if zygote:
                from thyme_cli.sandbox.zygote import install_ipc_filter

                install_ipc_filter()
        hello: dict[str, Any] = {
            "op": "hello",
            "pid": os.getpid(),
            "ids": [os.getuid(), os.geteuid(), os.getgid(), os.getegid()],
            "groups": os.getgroups(),
            "inherited_fds": inherited,
            "status": _status_fields("CapEff", "CapPrm", "NoNewPrivs", "Seccomp"),
            "python": sys.version.split()[0],
            "import_s": imported - started,
            "out_root": cfg["out_root"],
        }
        if cfg.get("probe"):
            protocol.send(sock, hello)
            os._exit(0)
        if zygote:
            from thyme_cli.sandbox import zygote as zygote_mod

            zygote_mod.serve(sock, cfg, modules, hello)
        root_fd = os.open(cfg["out_root"], os.O_RDONLY | os.O_DIRECTORY)
        tmp_fd = os.open(cfg["tmp_dir"], os.O_RDONLY | os.O_DIRECTORY)  # the host counts its files
        protocol.send(sock, hello, fds=[root_fd, tmp_fd])
        os.close(root_fd)
        os.close(tmp_fd)
        runner = Runner(cfg, modules)
    except BaseException:
        _fatal(sock, traceback.format_exc())
    _serve(sock, runner)


def _serve(sock: socket.socket, runner: Runner) -> NoReturn:
    while True:
        try:
            msg = protocol.recv_blocking(sock)
        except (OSError, protocol.ProtocolError):
            os._exit(0)
        if msg is None:
            os._exit(0)
        if msg.get("op") == "run":
            try:
                reply = runner.run(msg)
            except BaseException as exc:  # a bug of ours, or the code broke the worker's state
                if os.getpid() != runner.pid:
                    os._exit(0)
                reply = {"op": "result", "step": msg.get("step"), "error": f"sandbox worker error: {exc!r}"}
        else:
            reply = {"op": "error", "error": f"unknown op {msg.get('op')!r}"}
        try:
            protocol.send(sock, reply)
        except (OSError, protocol.ProtocolError):
            os._exit(0)
