"""Where the model looked: crops of the input image recorded in the real jail, saved in the trace,
drawn over the input image in the HTML report (checked in headless Chromium) and in `thyme runs show`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.browser import chromium_or_skip, run_chromium
from tests.conftest import RunThyme
from thyme_cli.sandbox import open_sandbox
from thyme_cli.sandbox.host.crop_report import from_worker
from thyme_cli.sandbox.host.session import WorkerSandbox


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    Image.new("RGB", (640, 480), (200, 200, 200)).save(path)
    return path


@pytest.fixture
def sb(photo: Path, tmp_path: Path, sandbox_backend: str) -> Iterator[WorkerSandbox]:
    with open_sandbox(sandbox_backend, image=photo, images_dir=tmp_path / "images", timeout_s=30) as box:  # type: ignore[arg-type]
        yield box


def _boxes(sb: WorkerSandbox, code: str) -> list[list[int]]:
    result = sb.run(code)
    assert result.ok, result.error
    return [c["box"] for c in result.crops]


def test_pil_crops_and_crops_of_crops(sb: WorkerSandbox) -> None:
    code = (
        "img = Image.open(image_path)\nc = img.crop((100, 50, 300, 250))\n"
        "c2 = c.convert('L').crop((10, 20, 110, 120))\n"
        "other = Image.new('RGB', (50, 50)).crop((0, 0, 10, 10))\nprint(c2.size)"
    )
    assert _boxes(sb, code) == [[100, 50, 300, 250], [110, 70, 210, 170]]


def test_numpy_slices_and_opencv_rois(sb: WorkerSandbox) -> None:
    code = (
        "a = np.array(Image.open(image_path).convert('RGB'))\nroi = a[40:140, 200:400]\n"
        "inner = roi[10:90, 30:130]\nprint(repr(a[0:1, 0:1, 0]), isinstance(roi, np.ndarray), a.shape)"
    )
    result = sb.run(code)
    assert result.ok, result.error
    assert [c["box"] for c in result.crops] == [[200, 40, 400, 140], [230, 50, 330, 130], [0, 0, 1, 1]]
    assert [c["via"] for c in result.crops] == ["numpy"] * 3
    assert result.stdout.startswith("array([[200]], dtype=uint8) True (480, 640, 3)")  # the code sees plain numpy
    cv = (
        "im = cv2.imread(image_path)\ng = cv2.cvtColor(im, cv2.COLOR_BGR2GRAY)\nr = g[10:90, 20:120]\n"
        "top = im[:100]\nprint(r.shape)"
    )
    assert _boxes(sb, cv) == [[20, 10, 120, 90], [0, 0, 640, 100]]


def test_resized_images_map_back_and_steps_keep_their_own_boxes(sb: WorkerSandbox) -> None:
    first = "small = Image.open(image_path).resize((320, 240))\nq = small.crop((0, 0, 160, 120))\nprint(q.size)"
    assert _boxes(sb, first) == [[0, 0, 320, 240]]
    assert _boxes(sb, "q2 = small.crop((160, 120, 320, 240))\nprint(q2.size)") == [[320, 240, 640, 480]]
    assert _boxes(sb, "print('no crop here')") == []


def test_the_box_recorded_is_the_one_cropped_after_the_sandbox_repairs_it(sb: WorkerSandbox) -> None:
    # A literal box out of range: clamped to the image, then extended to upstream's 64 px minimum
    # and shifted back inside (what the code really got).
    code = (
        "img = Image.open(image_path)\nx1, y1, x2, y2 = 600, 400, 900, 700\n"
        "c = img.crop((x1, y1, x2, y2))\nprint(c.size)"
    )
    assert _boxes(sb, code) == [[576, 400, 640, 480]]


def test_the_host_drops_what_is_not_a_box() -> None:
    raw = [
        {"box": [1, 2, 3, 4], "via": "pil"},
        {"box": [1, 2, "x", 4]},
        {"box": [5, 5, 1, 1]},
        "junk",
        {"box": [0, 0, float("inf"), 1]},
        {"box": [0, 0, 2, 2], "via": "evil\x1b[2J"},
    ]
    assert from_worker(raw) == [{"box": [1, 2, 3, 4], "via": "pil"}, {"box": [0, 0, 2, 2], "via": "other"}]
    assert from_worker("not a list") == [] and len(from_worker([{"box": [0, 0, 1, 1]}] * 500)) == 64


CROPS = (
    "<code>\n```python\nimg = Image.open(image_path)\nleft = img.crop((60, 60, 360, 300))\n"
    "a = np.array(img)\nright = a[500:900, 800:1200]\nprint(left.size, right.shape)\n```\n</code>"
)
ANSWER = "<answer>two boxes</answer>"


def test_trace_report_and_runs_show_show_the_boxes(run_thyme: RunThyme, tmp_path: Path, sandbox_backend: str) -> None:
    big = tmp_path / "big.png"
    Image.new("RGB", (1280, 960), (255, 255, 255)).save(big)
    script = tmp_path / "s.json"
    script.write_text(json.dumps([CROPS, ANSWER]))
    out = tmp_path / "run"
    result = run_thyme("ask", str(big), "where", "--script", str(script), "--out", str(out), "--html", "--json")
    assert result.returncode == 0, result.stderr
    run = json.loads(result.stdout)
    assert run["steps"][0]["crops"] == [
        {"box": [60, 60, 360, 300], "via": "pil"},
        {"box": [800, 500, 1200, 900], "via": "numpy"},
    ]
    saved = json.loads((out / "trace.json").read_text())
    assert saved["steps"][0]["crops"] == run["steps"][0]["crops"]

    shown = run_thyme("runs", "show", str(out))
    assert shown.returncode == 0, shown.stderr
    assert "1. step 1: (60, 60) to (360, 300), 300x240" in shown.stdout
    assert "2. step 1: (800, 500) to (1200, 900), 400x400" in shown.stdout
    drawn = Image.open(out / "crops.png").convert("RGB")
    assert drawn.getpixel((60, 200)) == (255, 31, 91) and drawn.getpixel((1200, 700)) == (0, 179, 255)
    assert drawn.getpixel((640, 200)) == (255, 255, 255)

    chromium = chromium_or_skip()
    shot = tmp_path / "shot.png"
    page = tmp_path / "only-crops.html"  # the report's crop figure alone, at its natural size
    report = (out / "report.html").read_text()
    start = report.index('<figure id="crops">')
    page.write_text(
        "<!doctype html><body style='margin:0'>"
        + report[start : report.index("</figure>", start)].replace("<img ", '<img style="display:block" ')
        + "</figure></body>"
    )
    run_chromium(
        chromium,
        tmp_path / "profile",
        "--hide-scrollbars",
        "--window-size=1400,1100",
        f"--screenshot={shot}",
        page.as_uri(),
    )
    pixels = Image.open(shot).convert("RGB")
    figure_offset = (40, 0)  # <figure> keeps the browser's default 40 px side margin
    for (x, y), colour in (((60, 200), (255, 31, 91)), ((1200, 700), (0, 179, 255)), ((640, 200), (255, 255, 255))):
        got = pixels.getpixel((x + figure_offset[0], y + figure_offset[1] + 16))  # + the figure's top margin
        assert all(abs(a - b) <= 8 for a, b in zip(got, colour, strict=True)), ((x, y), got, colour)


def test_numpy_keeps_its_own_calling_conventions(sb: WorkerSandbox) -> None:
    code = (
        "a = np.array(object=Image.open(image_path))\nb = np.asarray(a=[[1, 2], [3, 4]], dtype=float)\n"
        "roi = a[0:100, 0:200]\nprint(b.dtype, roi.shape)"
    )
    result = sb.run(code)
    assert result.ok, result.error
    assert result.stdout.strip() == "float64 (100, 200, 3)" and [c["box"] for c in result.crops] == [[0, 0, 200, 100]]


def test_batch_workers_forked_from_the_warm_jail_record_crops_too(
    run_thyme: RunThyme, tmp_path: Path, sandbox_backend: str
) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for n in range(2):
        Image.new("RGB", (1280, 960), (n * 100, 50, 50)).save(folder / f"{n}.png")
    script = tmp_path / "s.json"
    script.write_text(json.dumps([CROPS, ANSWER]))
    out = tmp_path / "r.jsonl"
    result = run_thyme("batch", str(folder), "-q", "where", "--script", str(script), "-o", str(out))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert [ln["steps"][0]["crops"] for ln in lines] == [
        [{"box": [60, 60, 360, 300], "via": "pil"}, {"box": [800, 500, 1200, 900], "via": "numpy"}]
    ] * 2
