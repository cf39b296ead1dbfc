"""The jailed worker: one Python per question, code steps over a socket, one namespace for all steps.

Everything here runs before the model's code; after the first step nothing this process says can
be trusted, so the host re-checks whatever it is told.
"""

from __future__ import annotations

import builtins
import contextlib
import gc
import io
import linecache
import os
import signal
import socket
import sys
import time
import traceback
from typing import Any, NoReturn

from thyme_cli.sandbox.jail import crops, helpers, repair, startup, wire

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


def _compile(fixed: repair.Repaired) -> Any:
    """The repaired code, compiled under CODE_FILENAME (its source cached for tracebacks)."""
    if fixed.syntax_error is not None:
        raise fixed.syntax_error
    assert fixed.tree is not None
    linecache.cache[CODE_FILENAME] = (len(fixed.source), None, fixed.source.splitlines(True), CODE_FILENAME)
    return compile(fixed.tree, CODE_FILENAME, "exec")


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
        """One step: repair the code, run it in the shared namespace, kill what it left running,
        and report what it printed and where it looked."""
        started = time.monotonic()
        step = int(msg["step"])
        out_dir = str(msg["out_dir"])
        notes = self._enter_step(out_dir)
        fixed = self._repair(str(msg["code"]), out_dir)
        out_sink, err_sink = CappedSink(self.max_output), CappedSink(self.max_output)
        error = self._execute(fixed, out_sink, err_sink)
        self._reap_strays()
        if error is not None and "MemoryError" in error:
            gc.collect()
        fd_out, fd_err = startup.read_capture(self.tmp_dir, self.max_output)
        processed = self.ns.get("processed_path")
        return {
            "op": "result",
            "step": step,
            "stdout": cap_output([bytes(out_sink.data), fd_out[0]], out_sink.dropped + fd_out[1], self.max_output),
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

    def _enter_step(self, out_dir: str) -> list[str]:
        """Make the output folder the cwd and start the step's captures afresh; returns notes."""
        notes: list[str] = []
        try:
            os.makedirs(out_dir, exist_ok=True)
            os.chdir(out_dir)
        except OSError as exc:  # e.g. the code filled the output tmpfs: still run, so it can clean up
            notes.append(f"[thyme: could not create the output directory {out_dir}: {exc.strerror}]")
        os.environ["THYME_OUTPUT_DIR"] = out_dir
        startup.truncate_capture()
        self.crops.take()  # a fresh list for this step
        # Upstream's exec gets `temp_output_dir` as a local (written with a trailing slash).
        self.ns.setdefault("temp_output_dir", out_dir.rstrip("/") + "/")
        return notes

    def _repair(self, code: str, out_dir: str) -> repair.Repaired:
        """Upstream's fixes to the code (repair.py), and the folders its paths need."""
        fixed = repair.repair(
            code,
            repair.RepairContext(image_path=self.image_path, output_dir=out_dir, image_size=self._image_size()),
        )
        for directory in fixed.make_dirs:
            with contextlib.suppress(OSError):
                os.makedirs(directory, exist_ok=True)
        return fixed

    def _execute(self, fixed: repair.Repaired, out_sink: CappedSink, err_sink: CappedSink) -> str | None:
        """exec the code with sys.stdout/stderr captured; returns the error text, if any."""
        out_text, err_text = _text_stream(out_sink), _text_stream(err_sink)
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = out_text, err_text
        error: str | None = None
        try:
            exec(_compile(fixed), self.ns)
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
        return error

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


def serve(sock: socket.socket, runner: Runner) -> NoReturn:
    while True:
        try:
            msg = wire.recv_blocking(sock)
        except (OSError, wire.ProtocolError):
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
            wire.send(sock, reply)
        except (OSError, wire.ProtocolError):
            os._exit(0)
