"""What a run directory costs on disk: compressed step images, a linked (not copied) input in
batch, and `--keep-images all|final|none` for `batch` and `eval`; through the real CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import RunThyme
from tests.test_eval_cli import bench  # noqa: F401  (fixture)

TWO_CROPS = [
    "<code>\n```python\nimg = Image.open(image_path)\n"
    "img.crop((0, 0, 200, 150)).save('/mnt/data/temp_processed_images/a.png')\n"
    "print('/mnt/data/temp_processed_images/a.png')\n```\n</code>",
    "<code>\n```python\nimg = Image.open(image_path)\n"
    "img.crop((100, 50, 300, 200)).save('/mnt/data/temp_processed_images/b.png')\n"
    "print('/mnt/data/temp_processed_images/b.png')\n```\n</code>",
    "<answer>two crops</answer>",
]


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Photo-like JPEGs (smooth gradients plus noise), as a user's camera would give."""
    root = tmp_path / "photos"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        y, x = np.mgrid[0:300, 0:400]
        base = np.stack([x * 255 // 400, y * 255 // 300, (x + y) * 255 // 700], axis=-1)
        noisy = np.clip(base + rng.integers(-12, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(root / f"p{i}.jpg", quality=90)
    return root


def _batch(run_thyme: RunThyme, tmp_path: Path, photos: Path, keep: str | None) -> list[dict[str, object]]:
    script = tmp_path / "script.json"
    script.write_text(json.dumps(TWO_CROPS))
    out = tmp_path / f"results-{keep}.jsonl"
    args = [
        "batch",
        str(photos),
        "-q",
        "q",
        "--script",
        str(script),
        "-o",
        str(out),
        "--runs",
        str(tmp_path / f"runs-{keep}"),
    ]
    if keep:
        args += ["--keep-images", keep]
    result = run_thyme(*args)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_batch_links_the_input_and_stores_compressed_crops(
    run_thyme: RunThyme, tmp_path: Path, photos: Path, sandbox_backend: str
) -> None:
    records = _batch(run_thyme, tmp_path, photos, None)
    for record in records:
        run = Path(str(record["run_dir"]))
        trace = json.loads((run / "trace.json").read_text())
        source = Path(str(record["image"]))
        linked = run / trace["image"]
        assert linked.samefile(source)  # a hard link (or a symlink): no second copy of the photo
        assert linked.is_symlink() or os.stat(linked).st_nlink >= 2
        assert [s["images"] for s in trace["steps"]] == [["images/step1-a.png"], ["images/step2-b.png"]]
        for rel in ("images/step1-a.png", "images/step2-b.png"):
            path = run / rel
            with Image.open(path) as im:
                im.load()
                assert im.format == "PNG" and im.size in ((200, 150),)
                raw = im.width * im.height * len(im.getbands())
            assert path.stat().st_size < raw  # compressed, losslessly (the crop is exact below)
        with Image.open(source) as src, Image.open(run / "images/step1-a.png") as crop:
            assert crop.convert("RGB").tobytes() == src.convert("RGB").crop((0, 0, 200, 150)).tobytes()
    # replay still finds the (linked) input
    replay = run_thyme("replay", str(records[0]["run_dir"]), "--json", "--out", str(tmp_path / "replay"))
    assert replay.returncode == 0, replay.stderr


def test_ask_still_copies_its_input(run_thyme: RunThyme, tmp_path: Path, photos: Path, sandbox_backend: str) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps(["<answer>x</answer>"]))
    out = tmp_path / "run"
    result = run_thyme("ask", str(photos / "p0.jpg"), "q", "--script", str(script), "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    assert not (out / "input.jpg").is_symlink() and os.stat(out / "input.jpg").st_nlink == 1


@pytest.mark.parametrize(("keep", "expected"), [
    ("all", [["images/step1-a.png"], ["images/step2-b.png"]]),
    ("final", [[], ["images/step2-b.png"]]),
    ("none", [[], []]),
])  # fmt: skip
def test_keep_images(
    run_thyme: RunThyme, tmp_path: Path, photos: Path, sandbox_backend: str, keep: str, expected: list[list[str]]
) -> None:
    records = _batch(run_thyme, tmp_path, photos, keep)
    for record in records:
        run = Path(str(record["run_dir"]))
        trace = json.loads((run / "trace.json").read_text())
        assert [s["images"] for s in trace["steps"]] == expected
        assert [s["images"] for s in record["steps"]] == expected  # type: ignore[union-attr]
        on_disk = sorted(f"images/{p.name}" for p in (run / "images").iterdir()) if (run / "images").exists() else []
        assert on_disk == sorted(i for step in expected for i in step)
        if keep != "all":
            assert any("--keep-images" in n for n in trace["notes"])
        assert Path(str(record["image"])).is_file()  # the user's photo is untouched


def test_eval_takes_keep_images(
    run_thyme: RunThyme,
    tmp_path: Path,
    bench: tuple[Path, list[object]],  # noqa: F811
    sandbox_backend: str,
) -> None:
    path, _truth = bench
    script = tmp_path / "s.json"
    script.write_text(json.dumps([*TWO_CROPS[:2], "<answer>B</answer>"]))
    result = run_thyme(
        "eval", str(path), "--script", str(script), "--keep-images", "final", "--limit", "2", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (tmp_path / "synth.tools.jsonl").read_text().splitlines()]
    assert records and all([s["images"] for s in r["steps"]] == [[], ["images/step2-b.png"]] for r in records)
    bad = run_thyme("eval", str(path), "--script", str(script), "--keep-images", "some", cwd=tmp_path)
    assert bad.returncode == 2
