"""Upstream Thyme's crop-box rule, as a pure function: the model was trained with exactly this.

Order the corners, clamp to the image, extend a side under 64 px from its top-left corner
(shifted back only when it overflows). Floats; callers round as upstream does.
"""

from __future__ import annotations

MIN_CROP = 64

# Upstream's coordinate names: a 4-tuple unpacked into names including one of these (lower-cased)...
UNPACK_NAMES = frozenset({"x1", "y1", "x2", "y2", "left", "top", "right", "bottom"})
# ...or a 4-tuple assigned to one of these names.
BOX_NAMES = frozenset(
    {
        "crop_box",
        "bbox",
        "box",
        "coordinates",
        "coords",
        "crop_coords",
        "left_crop_coords",
        "right_crop_coords",
        "top_crop_coords",
        "bottom_crop_coords",
    }
)


def _axis(a: float, b: float, size: float) -> tuple[float, float]:
    lo, hi = min(a, b), max(a, b)
    lo = min(max(0.0, lo), size - 1.0 if size > 0 else 0.0)
    hi = min(max(0.0, hi), size)
    if lo >= hi and size > 0:
        lo = max(0.0, hi - 1.0)
        if hi <= lo:
            hi = min(size, lo + 1.0)
    if size > 0 and hi - lo < MIN_CROP:
        if size < MIN_CROP:
            lo, hi = 0.0, size
        else:
            hi = lo + MIN_CROP
            if hi > size:
                hi = size
                lo = max(0.0, hi - MIN_CROP)
    if size > 0 and lo >= hi:
        hi = min(size, lo + 1.0)
    return lo, hi


def upstream_box(x1: float, y1: float, x2: float, y2: float, width: float, height: float) -> list[float]:
    """(x1, y1, x2, y2) as upstream rewrites a literal crop box for an image of width x height."""
    left, right = _axis(float(x1), float(x2), float(width))
    top, bottom = _axis(float(y1), float(y2), float(height))
    return [left, top, right, bottom]


def rounded(values: list[float]) -> list[int]:
    return [round(v) for v in values]
