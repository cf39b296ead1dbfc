"""The start-up every jailed process shares (a plain worker, the zygote, a zygote's question child).

Nothing of thyme outside the jail package: fds, stdio capture files, privileges, rlimits, the
libraries Thyme's code expects, and the last-words frame when start-up fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from typing import Any, NoReturn

from thyme_cli.sandbox.jail import wire

FATAL_TAIL_CHARS = 4000  # the end of a start-up traceback that reaches the host

CAPTURE = (".thyme-stdout", ".thyme-stderr")


def redirect_stdio(tmp_dir: str) -> None:
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    for fd, name in zip((1, 2), CAPTURE, strict=True):
        path = os.path.join(tmp_dir, name)
        new = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        os.dup2(new, fd)
        os.close(new)


def truncate_capture() -> None:
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)


def read_capture(tmp_dir: str, cap: int) -> tuple[tuple[bytes, int], tuple[bytes, int]]:
    """What C code and child processes wrote to fds 1 and 2 during the step: (head, bytes beyond)."""
    results: list[tuple[bytes, int]] = []
    for name in CAPTURE:
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


def close_inherited_fds(keep: set[int]) -> list[int]:
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


def drop_privileges(uid: int, gid: int) -> None:
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


def die_with_parent() -> None:
    """(Re)arm SIGKILL on the launcher's death: the kernel clears it whenever credentials change,
    and the bwrap-as-root path changes them right here. Without it a busy worker would outlive a
    killed launcher (PID namespace teardown needs its init, i.e. us, to die first)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


RLIMITS = {
    "AS": "RLIMIT_AS",
    "CPU": "RLIMIT_CPU",
    "FSIZE": "RLIMIT_FSIZE",
    "NOFILE": "RLIMIT_NOFILE",
    "NPROC": "RLIMIT_NPROC",
    "CORE": "RLIMIT_CORE",
}


def apply_rlimits(limits: dict[str, int]) -> None:
    import resource

    for key, value in limits.items():
        which = getattr(resource, RLIMITS[key])
        _soft, hard = resource.getrlimit(which)
        target = int(value) if hard == resource.RLIM_INFINITY else min(int(value), hard)
        resource.setrlimit(which, (target, target))


def status_fields(*names: str) -> dict[str, str]:
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


def fast_png_by_default(image_module: Any) -> None:
    """PNGs saved in the jail are temporary (the host re-encodes every one), so compressing them
    hard is wasted work: zlib level 1 unless the code asks for a level (or optimize) itself."""
    from PIL import PngImagePlugin

    plain_save = PngImagePlugin._save

    def save(im: Any, fp: Any, filename: Any) -> None:
        if "optimize" not in im.encoderinfo:
            im.encoderinfo.setdefault("compress_level", 1)
        plain_save(im, fp, filename)

    image_module.register_save("PNG", save)


def preload(cfg: dict[str, Any]) -> dict[str, Any]:
    """Import what Thyme's code expects to find already imported (the slow part of a start)."""
    modules = {**_prompt_modules(), **_upstream_globals()}
    modules["cv2"].setNumThreads(int(cfg.get("cv2_threads", 2)))
    fast_png_by_default(modules["Image"])
    return modules


def _prompt_modules() -> dict[str, Any]:
    """The modules Thyme's prompt tells the model are already imported, under the names it uses."""
    import json as json_mod
    import math
    import random
    import re
    import string

    import cv2
    import numpy
    from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

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
    }


def _upstream_globals() -> dict[str, Any]:
    """What upstream's exec also reaches without an import (its builtins dict holds them)."""
    import cmath
    import collections
    import datetime
    import itertools
    import shutil

    import PIL
    from PIL import UnidentifiedImageError

    return {
        "PIL": PIL,
        "UnidentifiedImageError": UnidentifiedImageError,
        "itertools": itertools,
        "time": time,
        "datetime": datetime,
        "cmath": cmath,
        "collections": collections,
        "shutil": shutil,
    }


def hello_frame(**extra: Any) -> dict[str, Any]:
    """A worker's first frame: who it runs as, for the host to check (host/factory.check_hello)."""
    return {
        "op": "hello",
        "pid": os.getpid(),
        "ids": [os.getuid(), os.geteuid(), os.getgid(), os.getegid()],
        "groups": os.getgroups(),
        "status": status_fields("CapEff", "CapPrm", "NoNewPrivs", "Seccomp"),
        **extra,
    }


def send_hello(sock: socket.socket, hello: dict[str, Any], cfg: dict[str, Any]) -> None:
    """Send the hello with fds of the output dir (the host harvests images through it, never by
    path) and of /tmp (the host counts its files)."""
    root_fd = os.open(cfg["out_root"], os.O_RDONLY | os.O_DIRECTORY)
    tmp_fd = os.open(str(cfg["tmp_dir"]), os.O_RDONLY | os.O_DIRECTORY)
    wire.send(sock, hello, fds=[root_fd, tmp_fd])
    os.close(root_fd)
    os.close(tmp_fd)


def fatal(sock: socket.socket | None, text: str) -> NoReturn:
    if sock is not None:
        with contextlib.suppress(OSError):
            wire.send(sock, {"op": "fatal", "error": text[-FATAL_TAIL_CHARS:]})
    with contextlib.suppress(OSError):
        os.write(2, text.encode("utf-8", "replace")[-FATAL_TAIL_CHARS:])
    os._exit(70)
