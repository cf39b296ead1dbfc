"""Reading the images a step produced, safely, on the host.

The jail's output directory is attacker-controlled: paths are resolved beneath the worker's
directory fd without following links, only capped regular files are read, and every image is
decoded under pixel limits and budgets and re-encoded by us (docs/sandbox.md).
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import re
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DECODE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")
_PRINTED_PATH = re.compile(r"(/[^\s'\"<>|*?,;:()\[\]{}]+)", re.ASCII)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
MTIME_SLACK_NS = 50_000_000  # tmpfs timestamps use a coarse clock


class Rejected(Exception):
    """This candidate is not an image we will take (the reason goes back to the model)."""

    def __init__(self, reason: str, st: os.stat_result | None = None) -> None:
        super().__init__(reason)
        self.st = st  # the entry's lstat, when it exists (so the refusal is reported only once)


@dataclass
class Harvest:
    images: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # for the user (the step's stderr, the trace)
    model_notes: list[str] = field(default_factory=list)  # images left out: the model is told too


@dataclass(frozen=True)
class HarvestRequest:
    root_fd: int  # the output root, as the worker opened it
    out_root: str  # its path as the code sees it
    step: int
    step_dir: str  # name of this step's directory under the root
    processed_path: str | None
    stdout: str
    since_ns: int  # files changed since then count as new, wherever they are under the root
    images_dir: Path
    max_images: int
    max_bytes: int
    max_pixels: int
    seen: dict[tuple[int, int], tuple[int, int]] = field(
        default_factory=dict
    )  # shown (or refused) before: (dev, ino) -> (mtime, size)
    budget: Budget | None = None  # what this step may still leave on the host (None: no cap)
    reported: set[str] = field(default_factory=set)  # notes given in earlier steps of the question


@dataclass
class Budget:
    """Pixels decoded and bytes stored that a step may still use: the smaller of the step's own
    budget and what is left of the question's. Checked BEFORE decoding (the pixel count comes from
    the image header) and before writing (the encoded size), never after."""

    pixels: int
    bytes: int
    used_pixels: int = 0
    used_bytes: int = 0
    skipped: int = 0  # images left out because the budget was used up
    limits_text: str = ""  # the budgets, for the note that says some images were skipped

    def take_pixels(self, n: int) -> None:
        if n > self.pixels - self.used_pixels:
            raise BudgetExceeded(f"{n / 1e6:.1f} MP would exceed the image budget ({_left(self)} left)")
        self.used_pixels += n

    def take_bytes(self, n: int, pixels: int) -> None:
        if n > self.bytes - self.used_bytes:
            self.used_pixels -= pixels  # nothing was stored: the pixels are not spent either
            raise BudgetExceeded(f"{n / 1e6:.1f} MB would exceed the image budget ({_left(self)} left)")
        self.used_bytes += n

    def refund(self, pixels: int, size: int) -> None:
        """Give back what was taken for an image that was not stored after all."""
        self.used_pixels -= pixels
        self.used_bytes -= size


def _left(b: Budget) -> str:
    return f"{max(0, b.pixels - b.used_pixels) / 1e6:.1f} MP, {max(0, b.bytes - b.used_bytes) / 1e6:.1f} MB"


class BudgetExceeded(Rejected):
    """The image is fine, but the step or question has used up its image budget."""


def printed_paths(text: str, out_root: str) -> list[str]:
    """Image paths under the output root mentioned in the step's stdout, in order."""
    prefix = out_root.rstrip("/") + "/"
    found = []
    for match in _PRINTED_PATH.finditer(text):
        path = match.group(1).rstrip(".")
        if path.startswith(prefix) and path.lower().endswith(IMAGE_SUFFIXES):
            found.append(path)
    return found


def relative_parts(path: str, out_root: str) -> list[str] | None:
    """The components of `path` below the output root, or None if it is not below it."""
    normal = posixpath.normpath(path)
    prefix = out_root.rstrip("/") + "/"
    if not normal.startswith(prefix):
        return None
    parts = normal[len(prefix) :].split("/")
    if not parts or any(p in ("", ".", "..") for p in parts):
        return None
    return parts


def open_beneath(root_fd: int, parts: list[str]) -> int:
    """Open a regular file below root_fd without following any symlink; returns an fd."""
    dir_fd = os.dup(root_fd)
    try:
        for part in parts[:-1]:
            nxt = os.open(part, _DIR_FLAGS, dir_fd=dir_fd)
            os.close(dir_fd)
            dir_fd = nxt
        name = parts[-1]
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            raise Rejected("not a regular file", st)
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except Rejected:
        raise
    except OSError as exc:
        raise Rejected(exc.strerror or str(exc)) from None
    finally:
        os.close(dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Rejected("not a regular file", st)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_capped(fd: int, max_bytes: int) -> bytes:
    size = os.fstat(fd).st_size
    if size > max_bytes:
        raise Rejected(f"{size} bytes is more than the {max_bytes} byte limit")
    chunks = bytearray()
    while len(chunks) <= max_bytes:
        chunk = os.read(fd, min(1 << 20, max_bytes + 1 - len(chunks)))
        if not chunk:
            break
        chunks += chunk
    if len(chunks) > max_bytes:
        raise Rejected(f"more than the {max_bytes} byte limit")
    return bytes(chunks)


def reencode_png(data: bytes, dest_dir: Path, base: str, max_pixels: int, budget: Budget | None = None) -> Path:
    """Decode untrusted bytes with limits and store our own PNG; returns the new file.

    The pixel count (from the header) is checked against `max_pixels` and the budget before
    anything is decoded, the decoded size against the budget before anything is written. The file
    is compressed in the background (step_images.py): until then the engine takes the decoded pixels."""
    from thyme_cli import step_images

    out, pixels, size = _decode(data, max_pixels, budget)
    try:
        dest = step_images.reserve(dest_dir, base)
    except OSError as exc:
        if budget is not None:
            budget.refund(pixels, size)
        raise Rejected(f"could not be stored on the host ({exc.strerror or exc})") from None
    step_images.submit(out, dest)
    return dest


def _decode(data: bytes, max_pixels: int, budget: Budget | None) -> tuple[Image.Image, int, int]:
    """The picture in a PNG mode, its pixel count and stored size (both taken from the budget)."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        im = _open_header(data, max_pixels)
        width, height = im.size
        size = width * height * _stored_bands(im)  # what the decoded, stored pixels will take
        if budget is not None:
            budget.take_pixels(width * height)
            budget.take_bytes(size, width * height)
        try:
            im.seek(0)
            im.load()
            return _png_mode(im), width * height, size
        except Exception as exc:
            if budget is not None:
                budget.refund(width * height, size)
            raise Rejected(f"could not decode the image ({type(exc).__name__}: {exc})") from None


def _open_header(data: bytes, max_pixels: int) -> Image.Image:
    """Read the header only, from the format allow-list, and refuse an image over the pixel limit."""
    from PIL import Image

    try:
        im = Image.open(io.BytesIO(data), formats=list(DECODE_FORMATS))
    except Image.DecompressionBombError as exc:  # Pillow's own (larger) guard fired first
        raise Rejected(f"larger than the {max_pixels} pixel limit ({exc})") from None
    except Exception as exc:
        raise Rejected(f"not a readable image ({type(exc).__name__})") from None
    width, height = im.size
    if width <= 0 or height <= 0 or width * height > max_pixels:
        im.close()
        raise Rejected(f"{width}x{height} is larger than the {max_pixels} pixel limit")
    return im


def _stored_bands(im: Image.Image) -> int:
    """Bands of the image _png_mode will make of `im`, known from its header (before decoding)."""
    if im.mode in ("L", "LA", "RGB", "RGBA"):
        return len(im.mode)
    if im.mode == "P":
        return 4 if "transparency" in im.info else 3
    if im.mode in ("1", "I;16", "I", "F"):
        return 1
    return 4 if "A" in im.mode else 3


def _png_mode(im: Image.Image) -> Image.Image:
    """The same picture in one of the four 8-bit modes stored as PNG (L, LA, RGB, RGBA)."""
    if im.mode in ("L", "LA", "RGB", "RGBA"):
        return im
    if im.mode == "P":
        return im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("1", "I;16", "I", "F"):
        return im.convert("L")
    return im.convert("RGBA" if "A" in im.mode else "RGB")


def safe_stem(name: str) -> str:
    stem = name.rsplit(".", 1)[0]
    clean = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)[:60].strip("_")
    return clean or "image"


def _step_listing(req: HarvestRequest) -> list[str]:
    """Image files directly in this step's directory, oldest first."""
    try:
        fd = os.open(req.step_dir, _DIR_FLAGS, dir_fd=req.root_fd)
    except OSError:
        return []
    entries: list[tuple[int, str]] = []
    try:
        with os.scandir(fd) as it:
            for entry in it:
                if not entry.name.lower().endswith(IMAGE_SUFFIXES):
                    continue
                with contextlib.suppress(OSError):
                    st = entry.stat(follow_symlinks=False)
                    entries.append((st.st_mtime_ns, entry.name))
                if len(entries) > 10_000:
                    break
    except OSError:
        return []
    finally:
        os.close(fd)
    entries.sort()
    root = req.out_root.rstrip("/")
    return [f"{root}/{req.step_dir}/{name}" for _, name in entries]


def harvest(req: HarvestRequest) -> Harvest:
    """The step's new images, read beneath the root fd and re-encoded, with notes on the rest."""
    result = Harvest()
    seen: set[tuple[int, int]] = set()
    over_count = 0
    for parts in _candidates(req):
        fd = _open_candidate(req, result, parts)
        if fd is None:
            continue
        try:
            over_count += _take_image(req, result, fd, parts, seen)
        finally:
            os.close(fd)
    if over_count:
        result.model_notes.append(
            f"[thyme: skipped {over_count} more image(s): at most {req.max_images} are kept per step]"
        )
    if req.budget is not None and req.budget.skipped:
        result.model_notes.append(
            f"[thyme: skipped {req.budget.skipped} image(s): the image budget is used up ({req.budget.limits_text})]"
        )
    result.notes += result.model_notes
    return result


def _candidates(req: HarvestRequest) -> list[list[str]]:
    """Paths below the output root, once each: processed_path, printed paths, the step's listing."""
    paths: list[str] = []
    if req.processed_path:
        paths.append(req.processed_path)
    paths += printed_paths(req.stdout, req.out_root)
    paths += _step_listing(req)
    seen_paths: set[str] = set()
    found: list[list[str]] = []
    for path in paths:
        normal = posixpath.normpath(path)
        if normal in seen_paths:
            continue
        seen_paths.add(normal)
        parts = relative_parts(normal, req.out_root)
        if parts is not None:  # else not in the output directory: not a new image
            found.append(parts)
    return found


def _open_candidate(req: HarvestRequest, result: Harvest, parts: list[str]) -> int | None:
    """An fd of the candidate, or None (with a note when the refusal is news)."""
    display = "/".join(parts)
    try:
        return open_beneath(req.root_fd, parts)
    except Rejected as why:
        if why.st is None:  # it does not exist (or cannot be reached): say so once per question
            _note_once(result, req, f"[thyme: skipped {display}: {why}]")
        elif _is_new(req, why.st, _in_step_dir(req, parts)):
            req.seen[(why.st.st_dev, why.st.st_ino)] = (why.st.st_mtime_ns, why.st.st_size)
            result.notes.append(f"[thyme: skipped {display}: {why}]")
        return None


def _take_image(req: HarvestRequest, result: Harvest, fd: int, parts: list[str], seen: set[tuple[int, int]]) -> int:
    """Read and re-encode a new image into result.images; returns 1 when it is over the count."""
    try:
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        if not _is_new(req, st, _in_step_dir(req, parts)) or key in seen:
            return 0
        seen.add(key)
        req.seen[key] = (st.st_mtime_ns, st.st_size)  # refused or taken, it is reported in this step only
        if len(result.images) >= req.max_images:
            return 1
        data = read_capped(fd, req.max_bytes)
        base = f"step{req.step}-{safe_stem(parts[-1])}"
        result.images.append(reencode_png(data, req.images_dir, base, req.max_pixels, req.budget))
    except BudgetExceeded:
        assert req.budget is not None
        req.budget.skipped += 1
    except Rejected as why:
        result.notes.append(f"[thyme: skipped {'/'.join(parts)}: {why}]")
    return 0


def _in_step_dir(req: HarvestRequest, parts: list[str]) -> bool:
    return len(parts) >= 2 and parts[0] == req.step_dir


def _is_new(req: HarvestRequest, st: os.stat_result, in_step_dir: bool) -> bool:
    """Made or changed by this step: not shown or refused before unchanged, not an old file."""
    if req.seen.get((st.st_dev, st.st_ino)) == (st.st_mtime_ns, st.st_size):
        return False  # shown or refused after an earlier step and unchanged since
    return in_step_dir or st.st_mtime_ns >= req.since_ns - MTIME_SLACK_NS


def _note_once(result: Harvest, req: HarvestRequest, note: str) -> None:
    if note not in req.reported:
        req.reported.add(note)
        result.notes.append(note)
