"""Reading the user's image: formats, EXIF orientation, and every kind of bad input."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from thyme_cli.errors import UsageError
from thyme_cli.question.input_image import BOMB_PIXELS, MAX_PIXELS, load_input_image


def _save(tmp_path: Path, name: str, fmt: str, size: tuple[int, int] = (64, 48), **kw: object) -> Path:
    path = tmp_path / name
    Image.new("RGB", size, (200, 30, 30)).save(path, fmt, **kw)
    return path


@pytest.mark.parametrize(
    ("name", "fmt", "saved_as"),
    [
        ("a.png", "PNG", "input.png"),
        ("a.jpg", "JPEG", "input.jpg"),
        ("a.webp", "WEBP", "input.png"),
        ("a.tiff", "TIFF", "input.png"),
        ("a.bmp", "BMP", "input.png"),
    ],
)
def test_supported_formats(tmp_path: Path, name: str, fmt: str, saved_as: str) -> None:
    src = _save(tmp_path, name, fmt)
    img = load_input_image(src, tmp_path / "run")
    assert (img.width, img.height) == (64, 48)
    assert img.path == tmp_path / "run" / saved_as
    with Image.open(img.path) as saved:
        assert saved.size == (64, 48)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    src = _save(tmp_path, "rot.jpg", "JPEG", size=(80, 40), exif=exif)
    img = load_input_image(src, tmp_path / "run")
    assert (img.width, img.height) == (40, 80)
    assert any("EXIF" in n for n in img.notes)


def test_stdin_bytes(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("L", (30, 20)).save(buf, "PNG")
    img = load_input_image(buf.getvalue(), tmp_path / "run")
    assert img.source == "-" and img.path.name == "input.png" and (img.width, img.height) == (30, 20)


def test_missing_directory_empty_and_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        load_input_image(tmp_path / "nope.png", tmp_path / "run")
    with pytest.raises(UsageError, match="is a directory"):
        load_input_image(tmp_path, tmp_path / "run")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(UsageError, match="empty"):
        load_input_image(tmp_path / "empty.png", tmp_path / "run")
    (tmp_path / "text.png").write_text("hello, not a picture")
    with pytest.raises(UsageError, match="not an image"):
        load_input_image(tmp_path / "text.png", tmp_path / "run")


def test_truncated_image(tmp_path: Path) -> None:
    src = _save(tmp_path, "full.jpg", "JPEG", size=(400, 300))
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(src.read_bytes()[:600])
    with pytest.raises(UsageError, match=r"truncated|corrupt|decode"):
        load_input_image(cut, tmp_path / "run")


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a huge size (a decompression bomb's header) with a tiny body."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header_only(30000, 30000))
    assert BOMB_PIXELS < 30000 * 30000
    with pytest.raises(UsageError, match="decompression bomb"):
        load_input_image(bomb, tmp_path / "run")


def test_image_beyond_limits_is_downscaled_with_a_note(tmp_path: Path) -> None:
    src = tmp_path / "big.png"
    Image.new("L", (9000, 5000)).save(src, "PNG")
    img = load_input_image(src, tmp_path / "run")
    assert img.width * img.height <= MAX_PIXELS
    assert abs(img.width / img.height - 9000 / 5000) < 0.01
    assert any("downscaled from 9000x5000" in n for n in img.notes)
