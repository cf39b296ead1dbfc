"""Shared by the benchmark scripts (each run as ``python benchmarks/NAME.py``, which puts this folder on
sys.path): the test photo and registering a model in a benchmark's own THYME_HOME."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any


def write_photo(path: Path, size: tuple[int, int], *, sign: bool = True) -> None:
    """A noisy photo-like JPEG with a door and the text "OPEN 9-5" left of it, on a light board when
    ``sign`` (content does not change the cost; the seed is fixed, so every run sees the same bytes)."""
    import numpy as np
    from PIL import Image, ImageDraw

    w, h = size
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 200 // w + 30, y * 180 // h + 40, (x + y) * 160 // (w + h) + 50], axis=-1)
    img = Image.fromarray(np.clip(base + rng.integers(-25, 25, base.shape), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    draw.rectangle((int(w * 0.75), int(h * 0.35), int(w * 0.9), int(h * 0.95)), fill=(90, 60, 40))
    if sign:
        draw.rectangle((int(w * 0.65), int(h * 0.58), int(w * 0.73), int(h * 0.68)), fill=(235, 235, 220))
    draw.text((int(w * 0.66), int(h * 0.6)), "OPEN\n9-5", fill=(10, 10, 10))
    img.save(path, "JPEG", quality=90)


def add_model(cli: list[str], env: dict[str, str], name: str, pair: Any) -> None:
    """`thyme models add NAME` for a GGUF pair (model, mmproj) with the Thyme protocol."""
    args = ["models", "add", name, "--model", str(pair.model), "--mmproj", str(pair.mmproj), "--protocol", "thyme"]
    subprocess.run([*cli, *args], env=env, check=True, capture_output=True)
