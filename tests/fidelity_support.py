"""Shared by the differential corpus test, benchmarks/fidelity_check.py and the (out-of-tree) script
that recorded upstream's results: the synthetic input images, the text normalisation and the
image digests. Pure numpy/Pillow, so the same code ran next to upstream's sandbox.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent / "data"
CORPUS_PATH = DATA_DIR / "fidelity_corpus.toml"
EXPECTED_PATH = DATA_DIR / "fidelity_expected.json"

# Upstream's code-block regex (eval/utils.py, vlmeval/vlm/thyme/model.py), used on upstream's side.
UPSTREAM_CODE_RE = re.compile(r"<code>\s*(?:```\s*)?(?:python\s*)?([\s\S]*?)\s*(?:```\s*)?</code>", re.IGNORECASE)


def load_corpus() -> list[dict[str, Any]]:
    with CORPUS_PATH.open("rb") as fh:
        cases: list[dict[str, Any]] = tomllib.load(fh)["case"]
    return cases


def reply_text(case: dict[str, Any], code: str) -> str:
    """The code block as the model writes it (fenced or bare), ready for either side's parser."""
    body = code.strip("\n")
    if case.get("reply", "fenced") == "bare":
        return f"Let me compute.\n<code>\n{body}\n</code>"
    return f"Let me look closer.\n<code>\n```python\n{body}\n```\n</code>"


def make_image(size: tuple[int, int], path: Path) -> Path:
    """A deterministic RGB test picture (integer arithmetic only, so every numpy gives the same
    pixels), saved as PNG whatever the name's extension."""
    import numpy as np
    from PIL import Image

    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.int64)
    r = (x * 3 + y * 5) % 256
    g = ((x // 8) * (y // 8) * 7) % 256
    b = ((x ^ y) + (x * y) // 97) % 256
    arr = np.stack([r, g, b], axis=-1).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, "RGB").save(path, format="PNG")
    return path


def normalize_text(text: str | None, case: dict[str, Any], out_dir: str, image_path: str) -> str:
    """Printed text with machine-specific paths and random suffixes replaced by placeholders."""
    text = (text or "").strip()
    text = text.replace(image_path, "<IMAGE>")
    text = text.replace(out_dir.rstrip("/"), "<OUT>")
    for pattern, repl in case.get("normalize", []):
        text = re.sub(pattern, repl, text)
    return text


def image_digest(path: Path) -> dict[str, Any]:
    """Size, mode, pixel hash and channel means of an image, after the same mode normalisation the
    host's harvest applies (so a JPEG/P/16-bit file compares with its re-encoded copy)."""
    import numpy as np
    from PIL import Image

    from thyme_cli import step_images as store

    store.wait(path)  # step images are written in the background
    with Image.open(path) as im:
        im.load()
        if im.mode in ("L", "LA", "RGB", "RGBA"):
            out = im.copy()
        elif im.mode == "P":
            out = im.convert("RGBA" if "transparency" in im.info else "RGB")
        elif im.mode in ("1", "I;16", "I", "F"):
            out = im.convert("L")
        else:
            out = im.convert("RGBA" if "A" in im.mode else "RGB")
    arr = np.asarray(out)
    digest = hashlib.sha256(f"{out.mode}:{out.size}:".encode() + out.tobytes()).hexdigest()
    means = arr.reshape(out.size[0] * out.size[1], -1).mean(axis=0)
    return {
        "size": list(out.size),
        "mode": out.mode,
        "sha256": digest,
        "mean": [round(float(m), 2) for m in means],
    }


def same_image(got: dict[str, Any], want: dict[str, Any], lossy: bool) -> bool:
    """Equal pixels; for a lossy (JPEG) file, the same size and channel means within 1.0, since
    two libjpeg builds may round differently."""
    if got["size"] != want["size"] or got["mode"] != want["mode"]:
        return False
    if got["sha256"] == want["sha256"]:
        return True
    return lossy and all(abs(a - b) <= 1.0 for a, b in zip(got["mean"], want["mean"], strict=True))


def load_expected() -> dict[str, Any]:
    import json

    doc: dict[str, Any] = json.loads(EXPECTED_PATH.read_text())
    return doc


def run_in_thyme(case: dict[str, Any], backend: str, workdir: Path) -> list[dict[str, Any]]:
    """Run one case's steps as thyme runs a question: the reply parsed by thyme's parser, every
    step in ONE real sandbox (so variables and the output folder persist)."""
    from thyme_cli.question.prompts import parse_reply
    from thyme_cli.sandbox import open_sandbox

    image = make_image(tuple(case["image"]["size"]), workdir / "input" / case["image"]["name"])
    steps: list[dict[str, Any]] = []
    with open_sandbox(backend, image=image, images_dir=workdir / "images", timeout_s=60) as sb:
        for code in case["steps"]:
            parsed = parse_reply(reply_text(case, code))
            assert parsed.code is not None, f"{case['id']}: thyme's parser found no code"
            res = sb.run(parsed.code)
            steps.append(
                {
                    "text": normalize_text(res.stdout, case, sb.output_dir, sb.image_path),
                    "raised": not res.ok,
                    "error": res.error,
                    "images": [image_digest(p) for p in res.images],
                }
            )
    return steps


def compare(case: dict[str, Any], want: list[dict[str, Any]], got: list[dict[str, Any]]) -> list[str]:
    """Differences between thyme's steps and the expected ones (empty: equal). For a documented
    improvement the expectation is the case's own `thyme_text`, and thyme must not fail."""
    problems: list[str] = []
    improvement = "improvement" in case
    for k, (w, g) in enumerate(zip(want, got, strict=True), 1):
        where = f"step {k}"
        if improvement:
            if g["raised"]:
                problems.append(f"{where}: thyme failed where it should do better: {g['error']}")
            elif g["text"] != case["thyme_text"]:
                problems.append(f"{where}: text {g['text']!r} != documented {case['thyme_text']!r}")
            continue
        if w["raised"] != g["raised"]:
            problems.append(
                f"{where}: upstream raised={w['raised']} ({w['error']}), thyme raised={g['raised']} ({g['error']})"
            )
            continue
        if w["raised"]:
            continue
        if w["text"] != g["text"]:
            problems.append(f"{where}: text {g['text']!r} != upstream {w['text']!r}")
        if len(w["images"]) != len(g["images"]):
            problems.append(f"{where}: {len(g['images'])} images != upstream {len(w['images'])}")
            continue
        unmatched = list(g["images"])
        for wi in w["images"]:
            hit = next((gi for gi in unmatched if same_image(gi, wi, bool(wi.get("lossy")))), None)
            if hit is None:
                sizes = [gi["size"] for gi in g["images"]]
                problems.append(f"{where}: no image like upstream's {wi['size']} {wi['sha256'][:12]} (thyme: {sizes})")
            else:
                unmatched.remove(hit)
    return problems
