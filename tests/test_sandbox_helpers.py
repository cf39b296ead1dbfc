"""Shared helpers for the sandbox tests (no tests here): which backends start, /proc scans, images.

Every sandbox test runs the REAL launchers: a backend that cannot start on this machine is skipped
with the probe's own reason, never faked.
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from thyme_cli.sandbox.host.factory import probe_backend
from thyme_cli.sandbox.host.layout import runtime_layout

JAILS = ("nsjail", "bwrap")
ALL_BACKENDS = ("nsjail", "bwrap", "none")


def require_backend(name: str) -> None:
    """Skip (with the reason the probe gave) when `name` cannot start here."""
    if name == "none":
        return
    probe = probe_backend(name)
    if not probe.works:
        pytest.skip(f"{name} cannot start on this machine: {probe.detail}")


def make_image(path: Path, size: tuple[int, int] = (640, 480)) -> Path:
    """A photo-like test image (gradients), so crops of different places differ."""
    w, h = size
    xs = np.linspace(0, 255, w, dtype=np.float32)[None, :]
    ys = np.linspace(0, 255, h, dtype=np.float32)[:, None]
    rgb = np.stack([xs + 0 * ys, ys + 0 * xs, (xs + ys) / 2], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(path)
    return path


def jailed_python_pids(marker: str) -> list[int]:
    """Host pids of jailed Python processes carrying `marker` (launchers themselves excluded)."""
    python = runtime_layout().python.encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                args = fh.read().split(b"\0")
        except OSError:
            continue
        if args and args[0] == python and marker.encode() in args:
            found.append(int(entry))
    return found


def host_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as fh:
        return {k: v.strip() for k, _, v in (line.partition(":") for line in fh)}


def _exiting_or_gone(pid: int) -> bool:
    """True once ``pid`` has finished exiting (a zombie, or reaped): its files, sockets included,
    are closed. A process in the middle of exiting has already dropped its memory, so its
    cmdline reads empty while its sockets are still open: the marker alone says "gone" too early."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def wait_until_gone(marker: str, timeout_s: float = 15.0, known: Iterable[int] = ()) -> list[int]:
    """Poll until no process carries `marker` and those that did have finished exiting; returns
    the survivors (empty when all died). ``known``: pids listed before a kill (a process already
    exiting when the first poll runs no longer shows its marker)."""
    deadline = time.monotonic() + timeout_s
    seen: set[int] = set(known)
    while True:
        seen.update(jailed_python_pids(marker))
        left = sorted(pid for pid in seen if not _exiting_or_gone(pid))
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def write_png_bomb(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """A valid RGB PNG of width x height zero pixels, ~2.6 MB on disk (2.7 GB decoded).

    Built without ever holding the pixels: one 100-row deflate block, fully flushed so it stands
    alone, repeated; then an empty final block. The Adler-32 of n zero bytes is ((n % 65521) << 16) | 1.
    """
    row = 1 + width * 3  # filter byte + RGB
    rows_per_block = 100
    assert height % rows_per_block == 0
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = comp.compress(bytes(row * rows_per_block)) + comp.flush(zlib.Z_FULL_FLUSH)
    total = row * height
    adler = ((total % 65521) << 16) | 1
    idat = b"\x78\xda" + block * (height // rows_per_block) + b"\x03\x00" + struct.pack(">I", adler)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path
