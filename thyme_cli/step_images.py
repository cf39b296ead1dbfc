"""Writing the host's copies of step images in the background, losslessly compressed.

Compressing an image (Pillow's PNG encoder) takes longer than the rest of a step's host-side
work, so it is kept off the step's critical path: the harvest decodes the jail's file, reserves
the final name, and hands the decoded pixels to one writer thread. Until the file is written, the
pixels stay available in memory (`pending_image`): the engine takes them from there instead of
reading the file back, and anything that needs the file itself calls `wait(path)`. A file is
never visible half-written: the writer writes `.<name>.part` and renames it over the reserved
(empty) name. Pending pixels are capped (`MAX_PENDING_BYTES`): beyond that the harvest waits for
the writer, so host memory stays bounded whatever a step produces.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL.Image import Image

PNG_LEVEL = 6  # zlib level of the stored PNGs: lossless; off the critical path, so not level 1
MAX_PENDING_BYTES = 256 * 1024 * 1024  # decoded pixels waiting for the writer, all questions together

_lock = threading.Condition()
_pending: dict[str, tuple[Image, int]] = {}  # path -> (pixels, their size in bytes)
_pending_bytes = 0
_errors: dict[str, str] = {}  # path -> why it could not be written (the file stays empty)
_executor: ThreadPoolExecutor | None = None


def raw_size(im: Image) -> int:
    """Bytes of the decoded pixels (what the image takes uncompressed)."""
    return im.width * im.height * len(im.getbands())


def reserve(dest_dir: Path, base: str, suffix: str = ".png") -> Path:
    """Create `base`.png (or base-2.png, ...) empty and exclusively: the name is ours, nothing is
    ever overwritten."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    for k in range(1, 1000):
        dest = dest_dir / (f"{base}{suffix}" if k == 1 else f"{base}-{k}{suffix}")
        try:
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            continue
        os.close(fd)
        return dest
    raise FileExistsError(f"too many images named {base}{suffix} in {dest_dir}")


def submit(im: Image, dest: Path) -> None:
    """Write `im` to the reserved `dest` in the background (the caller must not change `im`)."""
    global _pending_bytes, _executor
    size = raw_size(im)
    key = str(dest)
    with _lock:
        while _pending and _pending_bytes + size > MAX_PENDING_BYTES:
            _lock.wait()
        _pending[key] = (im, size)
        _pending_bytes += size
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="thyme-image-writer")
            atexit.register(flush)
        executor = _executor
    executor.submit(_write, key, im)


def _write(key: str, im: Image) -> None:
    global _pending_bytes
    dest = Path(key)
    part = dest.with_name(f".{dest.name}.part")
    try:
        im.save(part, "PNG", compress_level=PNG_LEVEL)
        os.replace(part, dest)
    except Exception as exc:  # disk full, a removed run dir: the trace still names the (empty) file
        with contextlib.suppress(OSError):
            part.unlink()
        with _lock:
            _errors[key] = f"{type(exc).__name__}: {exc}"
    finally:
        with _lock:
            _, size = _pending.pop(key, (None, 0))
            _pending_bytes -= size
            _lock.notify_all()


def pending_image(path: Path | str) -> Image | None:
    """The decoded pixels of an image still being written (read-only!), or None."""
    with _lock:
        held = _pending.get(str(path))
    return held[0] if held is not None else None


def wait(path: Path | str | None = None, timeout: float | None = None) -> bool:
    """Block until `path` (or every pending image) is written; False on timeout."""
    key = None if path is None else str(path)
    with _lock:
        return _lock.wait_for(lambda: not _pending if key is None else key not in _pending, timeout)


def flush() -> None:
    """Every pending image on disk (at exit, and when a question's sandbox closes)."""
    wait()


def write_error(path: Path | str) -> str | None:
    """Why the background writer could not write `path` (None: written, or still pending)."""
    with _lock:
        return _errors.get(str(path))
