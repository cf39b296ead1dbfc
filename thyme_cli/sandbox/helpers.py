"""Runtime halves of the crop repairs: fix a crop box against the REAL size of the image being cropped.

Upstream Thyme clamped literal coordinates against the input image at rewrite time. We rewrite the
call sites instead (see repair.py) so the fix also works for computed boxes and for crops of
intermediate images. The box arithmetic is pure; the wrappers only touch PIL/numpy objects the
code already has (the modules are imported lazily, so this file stays importable anywhere).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

MIN_CROP = 64


def fix_range(a: float, b: float, limit: int, min_size: int = MIN_CROP) -> tuple[int, int]:
    """Order a 1-D interval, clamp it to [0, limit] and widen it to min(min_size, limit)."""
    lo = math.floor(min(a, b))
    hi = math.ceil(max(a, b))
    lo = min(max(lo, 0), limit)
    hi = min(max(hi, 0), limit)
    need = min(min_size, limit)
    if hi - lo < need:
        center = (lo + hi) / 2
        lo = math.floor(center - need / 2)
        lo = max(0, min(lo, limit - need))
        hi = lo + need
    return int(lo), int(hi)


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def fix_box(box: Any, width: int, height: int, min_size: int = MIN_CROP) -> tuple[int, int, int, int] | None:
    """A valid (left, upper, right, lower) box for an image of width x height, or None if `box`
    is not four finite numbers (then the caller leaves the code's own box alone)."""
    try:
        values = [_as_number(v) for v in box]
    except TypeError:
        return None
    if len(values) != 4 or any(v is None for v in values):
        return None
    x1, y1, x2, y2 = (float(v) for v in values if v is not None)
    left, right = fix_range(x1, x2, width, min_size)
    upper, lower = fix_range(y1, y2, height, min_size)
    return left, upper, right, lower


def _box_is_fine(box: Any, fixed: tuple[int, int, int, int]) -> bool:
    try:
        return all(float(a) == float(b) for a, b in zip(box, fixed, strict=True))
    except (TypeError, ValueError):
        return False


def thyme_crop(obj: Any, *args: Any, **kwargs: Any) -> Any:
    """Stands in for `obj.crop(...)`: PIL images get a repaired box, anything else is untouched."""
    from PIL import Image

    if not isinstance(obj, Image.Image):
        return obj.crop(*args, **kwargs)
    if len(args) == 1 and not kwargs:
        box = args[0]
    elif not args and set(kwargs) == {"box"}:
        box = kwargs["box"]
    else:
        return obj.crop(*args, **kwargs)
    if box is None:
        return obj.crop(box)
    fixed = fix_box(box, obj.width, obj.height)
    if fixed is None or _box_is_fine(box, fixed):
        return obj.crop(box)
    return obj.crop(fixed)


def _looks_like_image(obj: Any) -> bool:
    import numpy as np

    if not isinstance(obj, np.ndarray):
        return False
    if obj.ndim == 2:
        return obj.shape[0] > 0 and obj.shape[1] > 0
    return obj.ndim == 3 and obj.shape[0] > 0 and obj.shape[1] > 0 and 1 <= obj.shape[2] <= 4


def thyme_slice(obj: Any, y1: Any, y2: Any, x1: Any, x2: Any, *rest: Any) -> Any:
    """Stands in for `obj[y1:y2, x1:x2, *rest]` in `crop = obj[y1:y2, x1:x2]` assignments."""
    bounds = [_as_number(v) for v in (y1, y2, x1, x2)]
    if not _looks_like_image(obj) or any(b is None for b in bounds):
        return obj[(slice(y1, y2), slice(x1, x2), *rest)]
    fy1, fy2, fx1, fx2 = (float(b) for b in bounds if b is not None)
    height, width = obj.shape[0], obj.shape[1]
    top, bottom = fix_range(fy1, fy2, height)
    left, right = fix_range(fx1, fx2, width)
    return obj[(slice(top, bottom), slice(left, right), *rest)]
