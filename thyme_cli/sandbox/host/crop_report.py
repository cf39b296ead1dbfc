"""The crops the jail reports, checked on the host before they reach the trace.

The jail (sandbox/jail/crops.py) records every crop of the input image with its box in
input-image pixels. Its report is untrusted like everything from the jail: at most 64 boxes of four
finite numbers per step survive (ui/crop_boxes.py draws them).
"""

from __future__ import annotations

import math
from typing import Any

MAX_BOXES = 64
VIAS = ("pil", "numpy")


def from_worker(raw: object) -> list[dict[str, Any]]:
    """The valid boxes of one step's report (anything else is dropped)."""
    if not isinstance(raw, list):
        return []
    boxes: list[dict[str, Any]] = []
    for entry in raw[:MAX_BOXES]:
        if not isinstance(entry, dict):
            continue
        box, via = entry.get("box"), entry.get("via")
        if not isinstance(box, list) or len(box) != 4:
            continue
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in box):
            continue
        x0, y0, x1, y1 = (round(float(v)) for v in box)
        if x1 <= x0 or y1 <= y0:
            continue
        boxes.append({"box": [x0, y0, x1, y1], "via": via if via in VIAS else "other"})
    return boxes
