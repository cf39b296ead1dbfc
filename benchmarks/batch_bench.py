"""Batch vs one-process-per-image: 50 items through `thyme batch` against 50 `thyme ask` runs.

Both engines run: the scripted engine (replays a crop step, then an answer: no model compute at
all, so everything measured is thyme's own overhead) and the real llama.cpp engine on the tiny
generated model (random weights, 32 tokens a turn, one code step allowed, one thread: a 64-wide
model cannot use two, and two spin-waiting threads on a 2-core machine stall whenever anything
else runs, e.g. the next item's sandbox booting).

per_item_overhead_ms: the batch loop's wall time minus the model compute its records report
(image encoding + prefill + decode), per item. It includes image checks, the sandbox (boot, code
steps, harvesting), traces and the JSONL journal.
speedup_vs_ask: wall time of 50 separate `thyme ask` processes / wall time of one `thyme batch`.
run_dir_bytes_per_item: what each item's run directory adds to the disk (trace, compressed step
images; the input is linked, so it adds nothing), for a real photograph (scikit-learn's sample
JPEGs) with two crops per item; uncompressed_bytes_per_item: the same item's input copy and crops
as raw pixels (what a copied input plus uncompressed crops would take). Sizes, not timings.

Usage: .venv/bin/python benchmarks/batch_bench.py [--items 50] [--storage-only]
The last line is one JSON object; the headline keys are the worse of the two engines.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw

from thyme_cli.devtools.tiny_gguf import write_tiny_pair

QUESTION = "What is the serial number?"
SCRIPT = [
    "<think>Small text, bottom right.</think><code>\n```python\nimg = Image.open(image_path)\n"
    "w, h = img.size\ncrop = img.crop((w // 2, h // 2, w, h)).resize((w, h))\n"
    "crop.save('/mnt/data/temp_processed_images/zoom.png')\nprint('/mnt/data/temp_processed_images/zoom.png')\n"
    "```\n</code>",
    "<think>It reads SN-42.</think><answer>SN-42</answer>",
]


def thyme(args: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "thyme_cli.cli", *args], env=env, capture_output=True, text=True)
    return time.perf_counter() - started, result


def make_images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for i in range(n):
        img = Image.new("RGB", (320, 240), (235, 235, 235))
        ImageDraw.Draw(img).text((200, 190), f"SN-{i:02d}", fill=(20, 20, 20))
        paths.append(folder / f"img{i:02d}.png")
        img.save(paths[-1])
    return paths


def model_compute_s(record: dict[str, object]) -> float:
    counters = record.get("counters") or {}
    assert isinstance(counters, dict)
    return sum(float(counters.get(k, 0.0)) for k in ("image_encode_s", "prefill_s", "decode_s"))


def measure(name: str, engine_args: list[str], images: list[Path], work: Path, env: dict[str, str]) -> dict[str, float]:
    out = work / f"{name}.jsonl"
    batch_wall, result = thyme(["batch", str(images[0].parent), "-q", QUESTION, "-o", str(out), *engine_args], env)
    if result.returncode != 0:
        raise SystemExit(f"batch failed for {name}:\n{result.stderr}")
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == len(images) and all(r["error"] is None for r in records), "every item must finish"
    loop = re.search(r"(\d+) item\(s\) in ([\d.]+) s", result.stderr)
    assert loop, "batch prints its loop time"
    loop_s = float(loop.group(2))
    compute_s = sum(model_compute_s(r) for r in records)
    ask_walls = []
    for image in images:
        wall, asked = thyme(
            ["ask", str(image), QUESTION, "--quiet", "--out", str(work / name / image.stem), *engine_args], env
        )
        if asked.returncode not in (0, 3):
            raise SystemExit(f"ask failed for {name}:\n{asked.stderr}")
        ask_walls.append(wall)
    n = len(images)
    figures = {
        "batch_wall_s": round(batch_wall, 3),
        "batch_loop_s": round(loop_s, 3),
        "model_compute_s": round(compute_s, 3),
        "per_item_overhead_ms": round(1000 * (loop_s - compute_s) / n, 1),
        "batch_per_item_ms": round(1000 * batch_wall / n, 1),
        "ask_total_s": round(sum(ask_walls), 3),
        "ask_per_item_ms": round(1000 * sum(ask_walls) / n, 1),
        "speedup_vs_ask": round(sum(ask_walls) / batch_wall, 2),
    }
    print(f"\n{name}: {n} items")
    for key, value in figures.items():
        print(f"  {key:>22}: {value}")
    return figures


STORAGE_SCRIPT = [
    "<code>\n```python\nimg = Image.open(image_path)\nw, h = img.size\n"
    "img.crop((0, 0, w // 2, h // 2)).save('/mnt/data/temp_processed_images/top_left.png')\n"
    "print('/mnt/data/temp_processed_images/top_left.png')\n```\n</code>",
    "<code>\n```python\nimg = Image.open(image_path)\nw, h = img.size\n"
    "img.crop((w // 4, h // 4, 3 * w // 4, 3 * h // 4)).save('/mnt/data/temp_processed_images/middle.png')\n"
    "print('/mnt/data/temp_processed_images/middle.png')\n```\n</code>",
    "<answer>a photo</answer>",
]


def sample_photos() -> list[Path]:
    """Real photographs: the JPEGs scikit-learn ships (china.jpg, flower.jpg, 640x427)."""
    import sklearn.datasets

    folder = Path(sklearn.datasets.__file__).parent / "images"
    return sorted(folder.glob("*.jpg"))


def added_bytes(run_dir: Path, source: Path) -> int:
    """Bytes a run directory adds to the disk: its regular files, except a hard link to the
    input's own bytes (a symlink adds only its inode)."""
    src = source.stat()
    total = 0
    for path in run_dir.rglob("*"):
        st = path.lstat()
        if path.is_symlink() or not path.is_file() or (st.st_ino, st.st_dev) == (src.st_ino, src.st_dev):
            continue
        total += st.st_size
    return total


def raw_bytes(path: Path) -> int:
    with Image.open(path) as im:
        return im.width * im.height * len(im.getbands())


def measure_storage(work: Path, env: dict[str, str], n: int) -> dict[str, float]:
    photos = sample_photos()
    folder = work / "photos"
    folder.mkdir()
    for i in range(n):
        (folder / f"photo{i:02d}.jpg").write_bytes(photos[i % len(photos)].read_bytes())
    script = work / "storage-script.json"
    script.write_text(json.dumps(STORAGE_SCRIPT))
    out = work / "storage.jsonl"
    _, result = thyme(
        [
            "batch",
            str(folder),
            "-q",
            "what is this?",
            "-o",
            str(out),
            "--script",
            str(script),
            "--runs",
            str(work / "storage-runs"),
        ],
        env,
    )
    if result.returncode != 0:
        raise SystemExit(f"storage batch failed:\n{result.stderr}")
    records = [json.loads(line) for line in out.read_text().splitlines()]
    run_bytes = uncompressed = 0
    for record in records:
        run_dir, source = Path(record["run_dir"]), Path(record["image"])
        crops = [run_dir / rel for step in record["steps"] for rel in step["images"]]
        assert len(crops) == 2, record
        run_bytes += added_bytes(run_dir, source)
        uncompressed += raw_bytes(source) + sum(raw_bytes(c) for c in crops)
    figures = {
        "photos": [p.name for p in photos],
        "run_dir_bytes_per_item": round(run_bytes / len(records)),
        "uncompressed_bytes_per_item": round(uncompressed / len(records)),
        "run_dir_over_uncompressed": round(run_bytes / uncompressed, 3),
    }
    print(f"\nstorage: {len(records)} items, a real photograph and two crops each")
    for key, value in figures.items():
        print(f"  {key:>28}: {value}")
    return figures  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=50)
    parser.add_argument("--storage-only", action="store_true", help="only the run-directory sizes (fast)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="thyme-batch-bench-") as tmp:
        work = Path(tmp)
        env = {
            **os.environ,
            "THYME_HOME": str(work / "home"),
            "HF_HOME": str(work / "hf"),
            "HF_HUB_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "NO_COLOR": "1",
        }
        pair = write_tiny_pair(work / "models")
        _, added = thyme(
            [
                "models",
                "add",
                "tiny",
                "--model",
                str(pair.model),
                "--mmproj",
                str(pair.mmproj),
                "--protocol",
                "thyme",
                "--ctx",
                "4096",
            ],
            env,
        )
        assert added.returncode == 0, added.stderr
        script = work / "script.json"
        script.write_text(json.dumps(SCRIPT))
        storage = measure_storage(work, env, min(args.items, 10))
        if args.storage_only:
            print(json.dumps({k: v for k, v in storage.items() if k != "photos"}))
            return
        images = make_images(work / "images", args.items)
        results = {
            "scripted": measure("scripted", ["--script", str(script)], images, work, env),
            "llama": measure(
                "llama", ["-m", "tiny", "--max-tokens", "32", "--max-turns", "1", "--threads", "1"], images, work, env
            ),
        }
    summary = {
        "items": args.items,
        "per_item_overhead_ms": max(r["per_item_overhead_ms"] for r in results.values()),
        "speedup_vs_ask": min(r["speedup_vs_ask"] for r in results.values()),
        "run_dir_bytes_per_item": storage["run_dir_bytes_per_item"],
        "uncompressed_bytes_per_item": storage["uncompressed_bytes_per_item"],
        "by_engine": results,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
