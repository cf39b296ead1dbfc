"""Runtime halves of the crop repairs (the names repair.py rewrites call sites to).

`__thyme_crop__` crops exactly as Pillow does (a hook, so crops can be observed); `__thyme_slice__`
applies upstream's slice rule (boxrule.py). numpy is imported lazily: importable anywhere.
"""

from __future__ import annotations

import numbers
from typing import Any

from thyme_cli.sandbox.jail import boxrule


def thyme_crop(obj: Any, *args: Any, **kwargs: Any) -> Any:
    """Stands in for `obj.crop(...)`, and does exactly that."""
    return obj.crop(*args, **kwargs)


def _real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def thyme_slice(obj: Any, y1: Any, y2: Any, x1: Any, x2: Any) -> Any:
    """Stands in for `obj[y1:y2, x1:x2]` where obj holds the input image's pixels: a box shorter
    than 64 px is extended from its top-left corner, as upstream extends literal boxes."""
    import numpy as np

    plain = (slice(y1, y2), slice(x1, x2))
    if not isinstance(obj, np.ndarray) or obj.ndim < 2 or not obj.shape[0] or not obj.shape[1]:
        return obj[plain]
    height, width = obj.shape[0], obj.shape[1]
    top = 0 if y1 is None else y1
    bottom = height if y2 is None else y2
    left = 0 if x1 is None else x1
    right = width if x2 is None else x2
    if not all(_real(v) for v in (top, bottom, left, right)):
        return obj[plain]
    original = [float(v) for v in (left, top, right, bottom)]
    box = boxrule.upstream_box(original[0], original[1], original[2], original[3], width, height)
    if boxrule.rounded(box) == boxrule.rounded(original):
        return obj[plain]
    nl, nt, nr, nb = boxrule.rounded(box)
    return obj[nt:nb, nl:nr]
