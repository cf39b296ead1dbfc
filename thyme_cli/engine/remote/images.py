"""Images for a remote server: data URIs built once per image, on the caller's (worker) thread.

PNG and JPEG files go as they are (every server decodes them). Anything else is re-encoded as PNG,
because llama.cpp's decoder reads neither WebP nor TIFF. With a token cap, an image larger than
the cap is first shrunk the way Qwen2.5-VL's processor would (``smart_resize``), so the server
sees at most that many vision tokens and less data travels.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

from thyme_cli.engine.images import smart_resize
from thyme_cli.errors import EngineError

QWEN_FACTOR = 28  # pixels per vision token side for Qwen2.5-VL (patch 14 x merge 2)

_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"))


def image_data_uri(path: Path, *, max_tokens: int | None = None) -> str:
    """``data:image/...;base64,...`` for the image file at ``path``."""
    from thyme_cli import step_images

    step_images.wait(path)  # a step's image may still be being written
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise EngineError(f"image {path}: cannot read it ({e.strerror or e})") from None
    mime = next((m for magic, m in _MAGIC if data.startswith(magic)), None)
    if mime is None or max_tokens is not None:
        data, mime = _reencode(path, data, mime, max_tokens)
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _reencode(path: Path, data: bytes, mime: str | None, max_tokens: int | None) -> tuple[bytes, str]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            width, height = img.size
            target = (width, height)
            if max_tokens is not None and width * height > max_tokens * QWEN_FACTOR * QWEN_FACTOR:
                h, w = smart_resize(
                    height, width, factor=QWEN_FACTOR, max_pixels=max_tokens * QWEN_FACTOR * QWEN_FACTOR
                )
                target = (w, h)
            if target == (width, height) and mime is not None:
                return data, mime  # small enough and already a format every server reads
            work = img if target == (width, height) else img.resize(target, Image.Resampling.BICUBIC)
            if work.mode not in ("RGB", "RGBA", "L"):
                work = work.convert("RGBA" if "A" in work.getbands() else "RGB")
            out = io.BytesIO()
            work.save(out, "PNG")
            return out.getvalue(), "image/png"
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise EngineError(f"image {path}: cannot encode it for the server ({e})") from None
