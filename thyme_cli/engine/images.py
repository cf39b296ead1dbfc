"""Image sizing and loading: show the model images the way it was trained to see them.

Qwen-VL projectors get images resized with Hugging Face's ``smart_resize`` (and mtmd's token limits
set so it keeps that grid); other projectors get the decoded pixels and mtmd sizes them itself
(docs/engine.md, "Image sizing").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from thyme_cli.errors import EngineError

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

# Hugging Face's limit: beyond this the processor refuses the image.
MAX_ASPECT_RATIO = 200


def smart_resize(
    height: int, width: int, *, factor: int = 28, min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 1280
) -> tuple[int, int]:
    """(height, width) that the Hugging Face Qwen2-VL processor resizes an image to.

    Both sides become multiples of ``factor``, the area lands in [min_pixels, max_pixels] and
    the aspect ratio is kept as closely as that allows. Raises ValueError like HF does for
    images more than 200 times longer than wide.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(
            f"absolute aspect ratio must be smaller than {MAX_ASPECT_RATIO}, got "
            f"{max(height, width) / min(height, width)}"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass(frozen=True)
class ImageSizing:
    """How images are sized before libmtmd sees them.

    ``factor`` 0 means "hand the decoded pixels over unchanged" (mtmd sizes them itself).
    """

    factor: int = 0
    min_tokens: int = 4
    max_tokens: int = 16384

    @property
    def resizes(self) -> bool:
        return self.factor > 0

    @property
    def min_pixels(self) -> int:
        return self.min_tokens * self.factor * self.factor

    @property
    def max_pixels(self) -> int:
        return self.max_tokens * self.factor * self.factor

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) the image is given to mtmd at."""
        if not self.resizes:
            return width, height
        h, w = smart_resize(height, width, factor=self.factor, min_pixels=self.min_pixels, max_pixels=self.max_pixels)
        return w, h

    def grid(self, width: int, height: int) -> tuple[int, int] | None:
        """Expected (columns, rows) of vision tokens for an image of this size, when known."""
        if not self.resizes:
            return None
        w, h = self.target_size(width, height)
        return w // self.factor, h // self.factor


@dataclass(frozen=True, eq=False)
class PreparedImage:
    """Decoded RGB pixels ready for mtmd, with where they came from."""

    path: Path
    width: int
    height: int
    rgb: bytes
    original_size: tuple[int, int]

    @property
    def resized(self) -> bool:
        return (self.width, self.height) != self.original_size


def _to_rgb(image: PILImage) -> PILImage:
    """RGB pixels; transparent areas become white (what Qwen's own loader does)."""
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGB", rgba.size, (255, 255, 255))
        white.paste(rgba, mask=rgba.getchannel("A"))
        return white
    return image.convert("RGB")


def load_image(path: Path, sizing: ImageSizing) -> PreparedImage:
    """Read an image file and size it for the projector; errors name the file."""
    from PIL import Image

    from thyme_cli import step_images

    try:
        held = step_images.pending_image(path)  # a step's image still being compressed: its pixels as decoded
        if held is not None:
            original = (held.width, held.height)
            rgb = _to_rgb(held)
        else:
            with Image.open(path) as opened:
                opened.load()
                original = (opened.width, opened.height)
                rgb = _to_rgb(opened)
    except FileNotFoundError:
        raise EngineError(f"image not found: {path}") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise EngineError(f"cannot read image {path}: {e}", hint="use a PNG, JPEG, WebP, TIFF or BMP file") from e
    try:
        width, height = sizing.target_size(*original)
    except ValueError as e:
        raise EngineError(
            f"image {path} is {original[0]}x{original[1]}: {e}",
            hint="crop or pad it to a less extreme shape",
        ) from None
    if (width, height) != original:
        rgb = rgb.resize((width, height), Image.Resampling.BICUBIC)
    return PreparedImage(path=path, width=width, height=height, rgb=rgb.tobytes(), original_size=original)
