"""Where the model looked: the crops of a run (checked on the host, sandbox/host/crop_report.py),
numbered across the run (1, 2, ... in step order) and drawn over the input image for the HTML
report and `thyme runs show`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from thyme_cli.question.trace import Trace

COLOURS = ["#ff1f5b", "#00b3ff", "#ffb000", "#00cd6c", "#af58ba", "#f28522", "#009ade", "#a6761d"]


def numbered(trace: Trace) -> list[tuple[int, int, list[int]]]:
    """(number, step index, box) for every crop of the run, numbered from 1 in step order."""
    out: list[tuple[int, int, list[int]]] = []
    for step in trace.steps:
        for crop in getattr(step, "crops", []) or []:
            box = crop.get("box") if isinstance(crop, dict) else None
            if isinstance(box, list) and len(box) == 4:
                out.append((len(out) + 1, step.index, [int(v) for v in box]))
    return out


def annotated_png(trace: Trace, run_dir: Path) -> bytes | None:
    """The input image with every crop drawn as a numbered box (PNG), or None when there is none."""
    boxes = numbered(trace)
    if not boxes:
        return None
    from PIL import Image, ImageDraw, ImageFont

    try:
        with Image.open(run_dir / trace.image) as src:
            img = src.convert("RGB")
    except OSError:
        return None
    draw = ImageDraw.Draw(img)
    width = max(2, round(max(img.size) / 300))
    font_size = max(12, round(max(img.size) / 40))
    try:
        font: Any = ImageFont.load_default(size=font_size)
    except TypeError:  # Pillow < 10.1 has one fixed-size default font
        font = ImageFont.load_default()
    for number, _step, (x0, y0, x1, y1) in boxes:
        colour = COLOURS[(number - 1) % len(COLOURS)]
        x0, x1 = sorted((max(0, min(x0, img.width - 1)), max(0, min(x1, img.width - 1))))
        y0, y1 = sorted((max(0, min(y0, img.height - 1)), max(0, min(y1, img.height - 1))))
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=width)
        label = str(number)
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        tag = (x0, y0, x0 + right - left + 2 * width + 4, y0 + bottom - top + 2 * width + 4)
        draw.rectangle(tag, fill=colour)
        draw.text((x0 + width + 2 - left, y0 + width + 2 - top), label, fill="white", font=font)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def describe(trace: Trace) -> list[str]:
    """One line per crop: number, step, box (for terminals and logs)."""
    return [
        f"{n}. step {step}: ({x0}, {y0}) to ({x1}, {y1}), {x1 - x0}x{y1 - y0}"
        for n, step, (x0, y0, x1, y1) in numbered(trace)
    ]
