"""Reading the user's image: every way it can be bad gets one clear line, never a traceback.

The image is checked (exists, readable, really an image, complete, not a decompression bomb),
turned upright by its EXIF orientation, downscaled when it is beyond what is sensible to process,
and saved into the run directory. That saved copy is what the model's code and the model see, so
the size stated in the prompt is the size the code works on.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from thyme_cli.errors import UsageError

SUPPORTED_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "MPO": ".jpg", "WEBP": ".webp", "TIFF": ".tiff", "BMP": ".bmp"}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
# Declared sizes above this are refused outright: a few MB of PNG can declare gigapixels.
BOMB_PIXELS = 200_000_000
# Above this the image is downscaled (with a note): the sandbox and the model work on the copy.
MAX_PIXELS = 40_000_000
MAX_SIDE = 16384
MAX_STDIN_BYTES = 512 * 1024 * 1024


@dataclass
class InputImage:
    path: Path  # the copy in the run directory
    width: int
    height: int
    source: str  # the user's path, or "-" for stdin
    notes: list[str] = field(default_factory=list)


def read_stdin_image(stream: IO[bytes]) -> bytes:
    data = stream.read(MAX_STDIN_BYTES + 1)
    if not data:
        raise UsageError("no image data on stdin", hint="pipe an image in, e.g. `cat photo.jpg | thyme ask - '...'`")
    if len(data) > MAX_STDIN_BYTES:
        raise UsageError(f"the image on stdin is larger than {MAX_STDIN_BYTES // (1024 * 1024)} MB")
    return data


def load_input_image(
    source: Path | bytes, dest_dir: Path, *, label: str | None = None, link: bool = False
) -> InputImage:
    """Validate, orient, maybe downscale and save the user's image as dest_dir/input.<ext>.
    With `link`, an image thyme does not change is linked, not copied (`link_or_copy`)."""
    from PIL import Image, UnidentifiedImageError

    name = label or (str(source) if isinstance(source, Path) else "-")
    if isinstance(source, Path):
        _check_file(source, name)
    try:
        return _decode_and_save(source, dest_dir, name, link)
    except Image.DecompressionBombError as e:
        raise UsageError(
            f"{name}: refused as a possible decompression bomb ({e})", hint="downscale the image first"
        ) from None
    except UnidentifiedImageError:
        raise UsageError(f"{name} is not an image Pillow can read", hint="use PNG, JPEG, WebP, TIFF or BMP") from None
    except (OSError, SyntaxError, ValueError) as e:
        message = str(e) or type(e).__name__
        if "truncated" in message.lower() or isinstance(e, SyntaxError):
            raise UsageError(f"{name} is truncated or corrupt ({message})") from None
        raise UsageError(f"{name}: cannot decode the image ({message})") from None


def _check_file(source: Path, name: str) -> None:
    """A missing, unreadable or empty file gets its own line before Pillow sees it."""
    if not source.exists():
        raise UsageError(f"{name}: no such file")
    if source.is_dir():
        raise UsageError(f"{name} is a directory, not an image")
    try:
        with source.open("rb") as f:
            head = f.read(1)
    except PermissionError:
        raise UsageError(f"{name}: permission denied") from None
    except OSError as e:
        raise UsageError(f"{name}: cannot read it ({e.strerror})") from None
    if not head:
        raise UsageError(f"{name} is empty, not an image")


def _decode_and_save(source: Path | bytes, dest_dir: Path, name: str, link: bool) -> InputImage:
    """Open the image, refuse what it must not be, decode it upright and save the copy."""
    from PIL import Image, ImageOps

    fp: Path | io.BytesIO = source if isinstance(source, Path) else io.BytesIO(source)
    # Pillow's own guard stays on (the process-wide setting is shared with the sandbox's host
    # side): it refuses declared sizes above 2 x MAX_IMAGE_PIXELS and only warns below that.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img = Image.open(fp)
    with img:
        fmt = img.format or ""
        _check_format_and_size(fmt, img.size, name)
        img.load()
        orientation = img.getexif().get(0x0112, 1)
        rotated = orientation not in (0, 1)
        work = ImageOps.exif_transpose(img) if rotated else img
        return _save(work, fmt, source, dest_dir, name, rotated, link)


def _check_format_and_size(fmt: str, size: tuple[int, int], name: str) -> None:
    """Refuse formats thyme does not take and declared sizes that look like a decompression bomb."""
    if fmt not in SUPPORTED_FORMATS:
        raise UsageError(f"{name}: {fmt or 'this'} images are not supported", hint="use PNG, JPEG, WebP, TIFF or BMP")
    width, height = size
    if width * height > BOMB_PIXELS:
        raise UsageError(
            f"{name} declares {width}x{height} pixels ({width * height / 1e6:.0f} MP): refused as a "
            f"possible decompression bomb (limit {BOMB_PIXELS / 1e6:.0f} MP)",
            hint="downscale the image first",
        )


def _save(
    img: object, fmt: str, source: Path | bytes, dest_dir: Path, name: str, rotated: bool, link: bool = False
) -> InputImage:
    from PIL import Image

    assert isinstance(img, Image.Image)
    notes: list[str] = []
    if rotated:
        notes.append("turned upright by its EXIF orientation")
    if img.mode not in ("RGB", "L", "RGBA"):
        img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
    width, height = img.size
    scale = min(1.0, (MAX_PIXELS / (width * height)) ** 0.5, MAX_SIDE / max(width, height))
    if scale < 1.0:
        new_size = (max(1, int(width * scale)), max(1, int(height * scale)))
        img = img.resize(new_size, Image.Resampling.LANCZOS)
        notes.append(
            f"downscaled from {width}x{height} to {new_size[0]}x{new_size[1]} "
            f"(limit {MAX_PIXELS / 1e6:.0f} MP, {MAX_SIDE} px a side)"
        )
    dest_dir.mkdir(parents=True, exist_ok=True)
    untouched = not notes and fmt in ("PNG", "JPEG") and isinstance(source, Path)
    if untouched:
        dest = dest_dir / f"input{SUPPORTED_FORMATS[fmt]}"
        assert isinstance(source, Path)
        if link:
            link_or_copy(source, dest)
        else:
            shutil.copyfile(source, dest)
    elif fmt in ("JPEG", "MPO") and img.mode != "RGBA":
        dest = dest_dir / "input.jpg"
        img.convert("RGB").save(dest, "JPEG", quality=95)
    else:
        dest = dest_dir / "input.png"
        img.save(dest, "PNG")
    return InputImage(path=dest, width=img.size[0], height=img.size[1], source=name, notes=notes)


def link_or_copy(source: Path, dest: Path) -> str:
    """Put `source` at `dest` without copying its bytes when possible: a hard link (same
    filesystem; the bytes are shared, and stay if the source is deleted), else a symbolic link to
    the source's absolute path, else a copy. Returns "hardlink", "symlink" or "copy"."""
    try:
        os.link(source, dest, follow_symlinks=True)
        return "hardlink"
    except OSError:
        pass
    with contextlib.suppress(OSError):
        os.symlink(os.path.realpath(source), dest)
        return "symlink"
    shutil.copyfile(source, dest)
    return "copy"
