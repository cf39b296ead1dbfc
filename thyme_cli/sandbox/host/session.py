"""One question's sandbox: a warm worker, restarted when a step kills it or runs out of time.

The worker is started as soon as the sandbox is opened and finishes importing while the model
is still writing its first code, so `open_sandbox` itself returns in a few milliseconds.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

from thyme_cli.errors import ThymeError, UsageError
from thyme_cli.sandbox.base import ExecResult
from thyme_cli.sandbox.host import crop_report
from thyme_cli.sandbox.host.backends import WORKER_MARKER, Backend, Stage, WorkerSpec
from thyme_cli.sandbox.host.closing import Closing
from thyme_cli.sandbox.host.harvest import Budget, Harvest, HarvestRequest, harvest
from thyme_cli.sandbox.host.launch import Launched, close_fds
from thyme_cli.sandbox.host.layout import safe_image_name
from thyme_cli.sandbox.host.limits import Limits, step_timeout
from thyme_cli.sandbox.jail import wire
from thyme_cli.sandbox.jail.worker import TRUNCATION_NOTE

RESTART_NOTE = "[thyme: the sandbox was restarted; variables from earlier steps are gone]"
FILE_CHECK_S = 0.02  # how often the jail's file count is checked while a step runs


class TooManyFiles(Exception):
    """A step went over the file-count limit (Limits.inodes): the jail is replaced."""


STAGE_PREFIX = "thyme-sandbox-"
_swept = False


def sweep_stale_stages() -> None:
    """Remove stage dirs left by thyme processes that were killed (SIGKILL skips every cleanup).
    A stage dir is named after its creator's pid; only our own user's dirs of dead pids go."""
    tmp = Path(tempfile.gettempdir())
    try:
        entries = list(tmp.iterdir())
    except OSError:
        return
    for entry in entries:
        name = entry.name
        if not name.startswith(STAGE_PREFIX):
            continue
        pid_text = name[len(STAGE_PREFIX) :].split("-", 1)[0]
        if not pid_text.isdigit():
            continue
        try:
            if entry.lstat().st_uid != os.geteuid() or not entry.is_dir() or entry.is_symlink():
                continue
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            remove_stage(Stage(root=entry, image_name=""))
        except (OSError, ValueError):
            continue


def make_stage(image: Path) -> Stage:
    """A private host dir holding a read-only copy of the input (and, unjailed, out/ and tmp/)."""
    global _swept
    if not image.is_file():
        raise UsageError(f"image not found: {image}", hint="pass the path of an existing image file")
    if not _swept:
        _swept = True
        sweep_stale_stages()
    root = Path(tempfile.mkdtemp(prefix=f"{STAGE_PREFIX}{os.getpid()}-"))
    name = safe_image_name(image.name)
    stage = Stage(root=root, image_name=name)
    try:
        stage.input_dir.mkdir()
        stage.out_dir.mkdir()
        stage.tmp_dir.mkdir()
        copy = stage.input_dir / name
        shutil.copyfile(image, copy)
        copy.chmod(0o444)
        stage.input_dir.chmod(0o555)
    except BaseException:
        remove_stage(stage)
        raise
    return stage


def remove_stage(stage: Stage) -> None:
    """Delete the stage dir, read-only input included (the copy was made read-only on purpose)."""
    with contextlib.suppress(OSError):
        stage.input_dir.chmod(0o700)
    shutil.rmtree(stage.root, ignore_errors=True)


def cap_text(text: str, cap: int) -> str:
    """The host's own cap on what the worker claims it printed (the note counts bytes)."""
    data = text.encode("utf-8", "replace")
    if len(data) <= cap + 200:
        return text
    head = data[:cap].decode("utf-8", "replace")
    return f"{head}\n" + TRUNCATION_NOTE.format(n=len(data) - cap)


class WorkerHandle(Protocol):
    """One worker as a WorkerSandbox drives it: a Launched jail, or a SandboxPool's forked child."""

    @property
    def sock(self) -> socket.socket: ...
    @property
    def reader(self) -> wire.FrameReader: ...
    @property
    def hello(self) -> dict[str, Any] | None: ...
    @property
    def started(self) -> float: ...
    @property
    def ready_at(self) -> float | None: ...

    def wait_hello(self, timeout_s: float, want_fd: bool) -> tuple[dict[str, Any], list[int]]: ...
    def idle_ok(self) -> bool: ...
    def kill(self) -> None: ...
    def close(self) -> None: ...
    def stderr_text(self, limit: int = 8192) -> str: ...
    def exit_description(self) -> str: ...
    def exit_code(self) -> int | None: ...


class WorkerSandbox(Closing):
    """The Sandbox the agent loop uses (see base.Sandbox)."""

    def __init__(self, backend: Backend, *, image: Path, images_dir: Path, timeout_s: float, limits: Limits) -> None:
        self.timeout_s = step_timeout(timeout_s)
        self._backend = backend
        self.backend: str = backend.name
        self.limits = limits
        self.images_dir = Path(images_dir)
        self.tag = uuid.uuid4().hex[:16]
        self._stage = make_stage(Path(image))
        self.image_path: str = backend.image_path(self._stage)
        self._out_root = backend.out_root(self._stage)
        self._worker: WorkerHandle | None = None
        self._root_fd: int | None = None
        self._tmp_fd: int | None = None  # the jail's /tmp: the host counts the files of both
        self._step = 0
        self._seen: dict[tuple[int, int], tuple[int, int]] = {}
        self._reported: set[str] = set()  # harvest notes already given (each is given once)
        self.image_pixels_used = 0  # over the whole question, against the question's budget
        self.image_bytes_used = 0
        self._closed = False
        self.restarts = 0
        self._spawns = 0
        self.worker_start_s: float | None = None  # spawn -> ready, of the current worker
        try:
            self._spawn()
        except BaseException:
            remove_stage(self._stage)
            raise

    # -- lifecycle -------------------------------------------------------------------------

    def _spawn(self) -> None:
        self._spawns += 1
        spec = WorkerSpec(stage=self._stage, limits=self.limits, tag=f"{self.tag}-{self._spawns}")
        self._worker = Launched(self._backend.plan(spec))
        self.worker_start_s = None

    @property
    def worker_marker(self) -> str:
        """The argument that marks the current worker's processes (for tests and diagnostics)."""
        return f"{WORKER_MARKER}{self.tag}-{self._spawns}"

    def _drop_worker(self) -> None:
        close_fds([fd for fd in (self._root_fd, self._tmp_fd) if fd is not None])
        self._root_fd = self._tmp_fd = None
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    def wait_ready(self) -> float:
        """Block until the worker has imported everything; returns its start time in seconds."""
        if self._closed:
            raise ThymeError("this sandbox is closed")
        if self._worker is None:
            try:
                self._spawn()
            except (OSError, ValueError) as exc:
                raise ThymeError(f"the {self.backend} sandbox could not start: {exc}") from None
        worker = self._worker
        assert worker is not None
        if worker.hello is not None:
            assert self.worker_start_s is not None
            return self.worker_start_s
        try:
            _hello, fds = worker.wait_hello(self.limits.start_timeout_s, want_fd=True)
        except wire.ProtocolError as exc:
            detail = _start_failure(worker, exc)
            self._drop_worker()
            raise ThymeError(
                f"the {self.backend} sandbox could not start: {detail}",
                hint="run `thyme doctor` to check the sandbox backends",
            ) from None
        if len(fds) != 2 or not all(stat.S_ISDIR(os.fstat(fd).st_mode) for fd in fds):
            close_fds(fds)
            self._drop_worker()
            raise ThymeError(f"the {self.backend} sandbox did not hand over its output and /tmp directories")
        self._root_fd, self._tmp_fd = fds
        assert worker.ready_at is not None
        self.worker_start_s = worker.ready_at - worker.started
        return self.worker_start_s

    @property
    def worker_info(self) -> dict[str, Any]:
        """The ready worker's own report (uid, capabilities, fds it found open, ...)."""
        self.wait_ready()
        assert self._worker is not None and self._worker.hello is not None
        return dict(self._worker.hello)

    @property
    def output_dir(self) -> str:
        """The question's output folder as the code sees it (where /mnt/data/temp_processed_images/ points)."""
        return self._out_root.rstrip("/")

    @property
    def worker_pid(self) -> int | None:
        """Host pid of the launcher process (nsjail/bwrap, or the worker itself when unjailed)."""
        return self._worker.proc.pid if isinstance(self._worker, Launched) else None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._drop_worker()
        remove_stage(self._stage)
        from thyme_cli import step_images

        step_images.flush()  # the question's images are on disk when its sandbox is closed

    # -- steps -----------------------------------------------------------------------------

    def run(self, code: str) -> ExecResult:
        """Run one step. Model-code failures and timeouts come back in the result; only a sandbox
        that cannot be (re)started raises."""
        if self._closed:
            raise ThymeError("this sandbox is closed")
        self._step += 1
        step = self._step
        if len(code.encode("utf-8", "replace")) > self.limits.max_code_bytes:
            return ExecResult(error=f"the code is larger than {self.limits.max_code_bytes} bytes", step=step)
        restart_note = self._ready_worker()
        worker = self._worker
        assert worker is not None
        started = time.monotonic()
        since_ns = time.time_ns()
        try:
            msg = self._exchange(worker, step, code, started + self.timeout_s)
        except wire.FrameTimeout:
            return self._restart_after(step, started, f"timed out after {self.timeout_s:g} s", timed_out=True)
        except TooManyFiles as exc:
            return self._restart_after(step, started, str(exc))
        except (wire.ProtocolError, OSError) as exc:
            return self._restart_after(step, started, _failure(worker, exc))
        return self._step_result(step, msg, started, since_ns, restart_note)

    def _ready_worker(self) -> str:
        """A ready worker for the next step; returns RESTART_NOTE when the idle one had died."""
        self.wait_ready()
        if self._worker is not None and not self._worker.idle_ok():  # died while idle (e.g. a stray thread)
            self._drop_worker()
            self.restarts += 1
            self.wait_ready()
            return RESTART_NOTE
        return ""

    def _exchange(self, worker: WorkerHandle, step: int, code: str, deadline: float) -> dict[str, Any]:
        """Send the step, wait for its result (checking the jail's file count meanwhile)."""
        # One output folder for all the steps of a question, as upstream's evaluation keeps it: a
        # later step may reopen what an earlier one saved. New files are told apart by time.
        out_dir = self._out_root.rstrip("/")
        worker.sock.settimeout(self.timeout_s)  # a stopped worker must not block the host
        wire.send(worker.sock, {"op": "run", "step": step, "code": code, "out_dir": out_dir})
        worker.sock.settimeout(None)
        msg = self._read_reply(worker, deadline)
        for _stale in range(4):  # a step's code forged its reply: the real one arrives late
            if not _is_stale(msg, step):
                break
            msg = self._read_reply(worker, deadline)
        if msg.get("op") != "result" or msg.get("step") != step:
            raise wire.ProtocolError(f"unexpected reply {wire.clean_text(str(msg.get('op')))[:40]!r}")
        self._check_files()
        return msg

    def _step_result(
        self, step: int, msg: dict[str, Any], started: float, since_ns: int, restart_note: str
    ) -> ExecResult:
        """The worker's claims, capped and cleaned, plus the images the host harvests itself."""
        stdout = cap_text(wire.clean_text(msg.get("stdout")), self.limits.max_output_bytes)
        stderr = cap_text(wire.clean_text(msg.get("stderr")), self.limits.max_output_bytes)
        processed = msg.get("processed_path")
        found = self._harvest(step, processed if isinstance(processed, str) else None, stdout, since_ns)
        notes = ([restart_note] if restart_note else []) + found.notes
        if notes:
            stderr = (stderr + "\n" if stderr and not stderr.endswith("\n") else stderr) + "\n".join(notes)
        error = msg.get("error")
        return ExecResult(
            stdout=stdout,
            stderr=stderr,
            error=cap_text(wire.clean_text(error), 8192) if isinstance(error, str) else None,
            images=found.images,
            duration_s=time.monotonic() - started,
            step=step,
            restarted=bool(restart_note),
            crops=crop_report.from_worker(msg.get("crops")),
            notes=found.model_notes,
        )

    def _harvest(self, step: int, processed: str | None, stdout: str, since_ns: int) -> Harvest:
        """The step's new images, within what is left of the question's image budget."""
        assert self._root_fd is not None
        lim = self.limits
        budget = Budget(
            pixels=min(lim.step_image_pixels, lim.question_image_pixels - self.image_pixels_used),
            bytes=min(lim.step_image_bytes, lim.question_image_bytes - self.image_bytes_used),
            limits_text=lim.budget_text(),
        )
        found = harvest(
            HarvestRequest(
                root_fd=self._root_fd,
                out_root=self._out_root,
                step=step,
                step_dir=".",
                processed_path=processed if processed is not None and len(processed) < 4096 else None,
                stdout=stdout,
                since_ns=since_ns,
                images_dir=self.images_dir,
                max_images=lim.max_images,
                max_bytes=lim.max_image_bytes,
                max_pixels=lim.max_image_pixels,
                seen=self._seen,
                budget=budget,
                reported=self._reported,
            )
        )
        self.image_pixels_used += budget.used_pixels
        self.image_bytes_used += budget.used_bytes
        return found

    def _read_reply(self, worker: WorkerHandle, deadline: float) -> dict[str, Any]:
        """The worker's next frame; meanwhile, the jail's file count is checked every few ms."""
        while True:
            try:
                msg, _ = worker.reader.read(min(deadline, time.monotonic() + FILE_CHECK_S))
                return msg
            except wire.FrameTimeout:
                if time.monotonic() >= deadline:
                    raise
                self._check_files()

    def _check_files(self) -> None:
        """Files (inodes) in the jail's output dir and /tmp, against Limits.inodes. nsjail sets
        nr_inodes on its tmpfs mounts and the kernel stops the step's code (ENOSPC); bwrap cannot,
        so a step that goes over is stopped here (it could otherwise pin gigabytes of kernel
        memory in empty files before its timeout)."""
        if not self._backend.jailed:  # unjailed, both are dirs on a host filesystem: not ours to count
            return
        for fd, where in ((self._root_fd, "the output directory"), (self._tmp_fd, "/tmp")):
            if fd is None:
                continue
            try:
                st = os.fstatvfs(fd)
            except OSError:
                continue
            used = st.f_files - st.f_ffree
            if st.f_files and used > self.limits.inodes + 1:  # + the tmpfs root itself
                raise TooManyFiles(f"the step made more than {self.limits.inodes} files in {where}")

    def _restart_after(self, step: int, started: float, error: str, *, timed_out: bool = False) -> ExecResult:
        """Kill the worker (the whole jail), start a fresh one for the next step, report the step."""
        self._drop_worker()
        self.restarts += 1
        with contextlib.suppress(OSError, ValueError):
            self._spawn()  # warms up while the model reads the error; a failure surfaces next run
        return ExecResult(
            stderr=RESTART_NOTE,
            error=error,
            timed_out=timed_out,
            duration_s=time.monotonic() - started,
            step=step,
            restarted=True,
        )


def _is_stale(msg: dict[str, Any], step: int) -> bool:
    """The reply to an earlier step (sent after the code of that step forged one)."""
    earlier = msg.get("step")
    return msg.get("op") == "result" and type(earlier) is int and 0 < earlier < step


def last_meaningful_line(text: str) -> str:
    """The line of a launcher's or worker's output that says why it failed."""
    import re

    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:  # nsjail: the first [E]/[F] line carries the cause
        if re.match(r"^\[[EF]\]", ln):
            return re.sub(r"^\[[A-Z]\]\[[^\]]*\]\[\d+\]\s*", "", ln)
    return lines[-1] if lines else ""


def _start_failure(worker: WorkerHandle, exc: Exception) -> str:
    worker.kill()
    text = last_meaningful_line(str(exc)) if "Traceback" in str(exc) else ""
    launcher = last_meaningful_line(worker.stderr_text())
    parts = [p for p in (text, launcher) if p]
    if not parts:
        parts = [f"{exc} ({worker.exit_description()})"]
    return "; ".join(parts)


def _failure(worker: WorkerHandle, exc: wire.ProtocolError | OSError) -> str:
    """Kill a worker whose step failed on the wire; the error the model is told."""
    worker.kill()
    if isinstance(exc, wire.ProtocolError) and not isinstance(exc, wire.ConnectionClosed):
        # it sent garbage: broken, or the step's code wrote to the worker's socket
        detail = wire.clean_text(str(exc))[:200]
        return f"the sandbox worker sent an invalid reply ({detail})"
    return f"the sandbox process died ({_death_reason(worker, exc)})"


def _death_reason(worker: WorkerHandle, exc: Exception) -> str:
    status = worker.exit_description()
    code = worker.exit_code()
    if code is not None and code > 128:
        status = f"exit status {code}: killed by signal {code - 128}, e.g. a memory or CPU limit"
    return status
