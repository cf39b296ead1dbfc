"""What the jail's filesystem looks like, and which host paths it needs to run our Python.

All read-only: the system libraries, the Python installation, thyme's jail package, and of the
site-packages dirs only what the worker imports. No $HOME, host /tmp, /etc or shell.
"""

from __future__ import annotations

import functools
import glob
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

JAIL_CODE_ROOT = "/opt/thyme"
JAIL_INPUT_DIR = "/mnt/data/input"
JAIL_OUTPUT_DIR = "/mnt/data/output"
JAIL_TMP = "/tmp"
JAIL_UID = 65534
JAIL_GID = 65534
HOSTNAME = "thyme"
# Host paths under the jail's own mounts (a venv in /tmp, say) would be hidden by them, and the
# jail's /tmp is wiped between pooled questions: such paths are bound under this prefix instead.
JAIL_HOST_ROOT = "/opt/host"
_JAIL_OWNED = (JAIL_TMP, "/mnt/data", JAIL_CODE_ROOT, JAIL_HOST_ROOT)
SYSTEM_LIB_DIRS = ("/usr/lib", "/usr/lib64", "/usr/lib32", "/lib", "/lib64", "/lib32")
# The distributions whose modules the worker imports (jail/startup.preload, jail/mpl_backend); their
# dependencies come with them. Several names can provide cv2.
JAIL_DISTRIBUTIONS = (
    "numpy", "pillow", "matplotlib",
    "opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless",
)  # fmt: skip


@dataclass(frozen=True)
class RuntimeLayout:
    """Host paths the jail binds at the same place, and the interpreter to run."""

    python: str  # the real interpreter binary (not the venv's symlink)
    ro_dirs: tuple[str, ...]  # bound read-only at the same path
    ro_files: tuple[str, ...]  # single files bound read-only at the same path
    symlinks: tuple[tuple[str, str], ...]  # (target, link) recreated inside, e.g. ("usr/lib", "/lib")
    sys_path: tuple[str, ...]  # given to the worker, in order
    package_dir: str  # host dir of thyme_cli/sandbox/jail, bound at jail_package_dir
    code_root_host: str  # host dir that contains thyme_cli (for the unjailed backend)
    # (site-packages dir, the entries of it the worker needs): each dir is hidden behind a view
    site_dirs: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def jail_package_dir(self) -> str:
        return f"{JAIL_CODE_ROOT}/thyme_cli/sandbox/jail"

    @staticmethod
    def jail_path(host: str) -> str:
        """Where a host path is bound inside the jail: the same place, unless the jail owns it."""
        if _covered(host, list(_JAIL_OWNED)):
            return JAIL_HOST_ROOT + host
        return host


def _covered(path: str, dirs: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in dirs)


def _is_install_path(entry: str, prefixes: list[str]) -> bool:
    """Part of the Python installation (stdlib, lib-dynload, site-packages), as opposed to the
    script's directory, the cwd, PYTHONPATH or a source checkout (an editable install), none of
    which may be exposed: the script dir is often /tmp or $HOME."""
    name = os.path.basename(entry.rstrip("/"))
    return name in ("site-packages", "dist-packages") or _covered(entry, prefixes)


@functools.cache
def runtime_layout() -> RuntimeLayout:
    """The host paths the jail needs for our interpreter, computed once per process."""
    python = os.path.realpath(sys.executable)
    ro_dirs, symlinks = _system_lib_dirs()
    _add_prefix_lib_dirs(ro_dirs)
    sys_path, ro_files = _add_sys_path(ro_dirs)
    if not _covered(python, ro_dirs):
        ro_files.append(python)
    package_dir = str(Path(__file__).resolve().parent.parent / "jail")  # only the jail package goes in
    # Drop dirs nested inside others (fewer mounts, same view).
    ro_dirs = [d for d in ro_dirs if not _covered(d, [o for o in ro_dirs if o != d])]
    needed = needed_site_entries()
    site_dirs = [(site_dir, tuple(sorted(needed.get(site_dir, ())))) for site_dir in _site_dirs(ro_dirs)]
    return RuntimeLayout(
        python=python,
        ro_dirs=tuple(ro_dirs),
        ro_files=tuple(ro_files),
        symlinks=tuple(symlinks),
        sys_path=tuple(sys_path),
        package_dir=package_dir,
        code_root_host=str(Path(package_dir).parent.parent.parent),
        site_dirs=tuple(site_dirs),
    )


def _system_lib_dirs() -> tuple[list[str], list[tuple[str, str]]]:
    """The system library dirs to bind, and those that are symlinks (recreated as links inside)."""
    ro_dirs: list[str] = []
    symlinks: list[tuple[str, str]] = []
    for d in SYSTEM_LIB_DIRS:
        if os.path.islink(d):
            symlinks.append((os.readlink(d), d))
        elif os.path.isdir(d):
            ro_dirs.append(d)
    return ro_dirs, symlinks


def _add_prefix_lib_dirs(ro_dirs: list[str]) -> None:
    """The base Python's and the venv's lib dirs (stdlib, libpython), unless already covered."""
    for prefix in {os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix)}:
        for sub in ("lib", "lib64"):
            p = os.path.join(prefix, sub)
            if os.path.isdir(p) and not os.path.islink(p) and not _covered(p, ro_dirs):
                ro_dirs.append(p)


def _add_sys_path(ro_dirs: list[str]) -> tuple[list[str], list[str]]:
    """The worker's sys.path: our own entries that belong to the installation; binds the dirs
    among them (into `ro_dirs`) and returns (sys_path, files to bind such as a zipped stdlib)."""
    sys_path: list[str] = []
    ro_files: list[str] = []
    install_dirs = [
        os.path.join(os.path.realpath(p), sub)
        for p in {sys.base_prefix, sys.prefix, sys.base_exec_prefix, sys.exec_prefix}
        for sub in ("lib", "lib64")
    ]
    for entry in sys.path:
        if not entry or not os.path.isabs(entry):
            continue
        real = os.path.realpath(entry)
        if not os.path.exists(real) or not _is_install_path(real, install_dirs):
            continue
        if real not in sys_path:
            sys_path.append(real)
        if os.path.isdir(real):
            if not _covered(real, ro_dirs):
                ro_dirs.append(real)
        elif not _covered(real, ro_dirs):
            ro_files.append(real)  # a zipped stdlib or egg
    return sys_path, ro_files


def _site_dirs(ro_dirs: list[str]) -> list[str]:
    """Every site-packages / dist-packages dir the jail's read-only mounts would show."""
    found: list[str] = []
    for ro in ro_dirs:
        candidates = [ro] if os.path.basename(ro) in ("site-packages", "dist-packages") else []
        for pattern in ("python*/site-packages", "python*/dist-packages", "*/python*/site-packages",
                        "*/python*/dist-packages", "site-packages", "dist-packages"):  # fmt: skip
            candidates += glob.glob(os.path.join(ro, pattern))
        for c in candidates:
            real = os.path.realpath(c)
            if os.path.isdir(c) and not os.path.islink(c) and real not in found:
                found.append(real)
    return found


def _requirement_name(requirement: str) -> str | None:
    """The distribution a Requires-Dist line names, or None for an optional one (an extra).
    Other markers (python_version, ...) are not evaluated: a requirement for another interpreter
    is simply not installed, and at worst the view shows a package more (packaging is not
    imported for this: it costs more than the rest of the layout)."""
    name, _, marker = requirement.partition(";")
    if re.search(r"\bextra\s*==", marker):
        return None
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", name)
    return match.group(1) if match else None


def needed_site_entries() -> dict[str, set[str]]:
    """site-packages dir -> the top-level entries (packages, modules, bundled-library dirs,
    .dist-info) of JAIL_DISTRIBUTIONS and everything they require, from their RECORD files."""
    from importlib import metadata

    entries: dict[str, set[str]] = {}
    todo = list(JAIL_DISTRIBUTIONS)
    done: set[str] = set()
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in done:
            continue
        done.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        base = os.path.realpath(str(dist.locate_file("")))
        found = entries.setdefault(base, set())
        for file in dist.files or ():
            parts = file.parts
            if parts and parts[0] not in ("..", "__pycache__") and not parts[0].endswith(".pth"):
                found.add(parts[0])
        if dist.files is None:  # no RECORD (e.g. a Debian package): its top-level names instead
            meta_dir = getattr(dist, "_path", None)
            if isinstance(meta_dir, Path):
                found.add(meta_dir.name)
            for top in (dist.read_text("top_level.txt") or "").split():
                found.update(n for n in (top, f"{top}.py") if os.path.exists(os.path.join(base, n)))
        for requirement in dist.requires or ():
            needed = _requirement_name(requirement)
            if needed:
                todo.append(needed)
    return entries


def make_site_view(view: Path, site_dir: str, names: tuple[str, ...]) -> list[tuple[str, str]]:
    """An empty stand-in for `site_dir` with a mount point per needed entry; returns the (host
    path, jail path) binds that go over those mount points, after the view itself is bound."""
    view.mkdir(mode=0o755, exist_ok=True)  # a restarted worker reuses its stage's view
    binds = []
    for name in names:
        host = os.path.join(site_dir, name)
        if os.path.isdir(host) and not os.path.islink(host):
            (view / name).mkdir(mode=0o755, exist_ok=True)
        elif os.path.isfile(host) and not os.path.islink(host):
            (view / name).touch(mode=0o644, exist_ok=True)
        else:
            continue  # gone since it was installed, or a link: not shown
        binds.append((host, RuntimeLayout.jail_path(host)))
    return binds


def safe_image_name(name: str) -> str:
    """The input image's file name inside the jail: plain characters, extension kept."""
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, "png"
    clean = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)[:80].strip("_") or "image"
    ext_clean = "".join(c for c in ext.lower() if c.isalnum())[:8] or "png"
    return f"{clean}.{ext_clean}"
