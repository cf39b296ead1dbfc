"""`thyme runs list|show|open|rm|gc` on runs made by the real `thyme ask` (scripted model, real sandbox)."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import RunThyme

CROP = (
    "<think>Crop the corner.\n<code>\n```python\nimg = Image.open(image_path)\n"
    "cropped = img.crop((100, 80, 300, 200))\nprocessed_path = '/mnt/data/temp_processed_images/crop.png'\n"
    "cropped.save(processed_path)\nprint('cropped', cropped.size)\n```\n</code>"
)
ANSWER = "It says 42.</think>\n<answer>42</answer>"


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "in.png"
    Image.new("RGB", (400, 300), "white").save(path)
    return path


def _ask(run_thyme: RunThyme, tmp_path: Path, image: Path, question: str, *replies: str) -> str:
    """Run `thyme ask` with a scripted model; return the id it printed."""
    script = tmp_path / f"script-{abs(hash(question))}.json"
    script.write_text(json.dumps(list(replies)))
    result = run_thyme("ask", str(image), question, "--script", str(script))
    assert result.returncode == 0, result.stderr
    line = next(ln for ln in result.stderr.splitlines() if ln.startswith("run id "))
    return line.split()[2]


def _runs(run_thyme: RunThyme) -> list[dict[str, object]]:
    result = run_thyme("runs", "list", "--json")
    assert result.returncode == 0, result.stderr
    runs = json.loads(result.stdout)
    assert isinstance(runs, list)
    return runs


def test_list_show_and_open(run_thyme: RunThyme, tmp_path: Path, image: Path, sandbox_backend: str) -> None:
    first = _ask(run_thyme, tmp_path, image, "what is in the corner", CROP, ANSWER)
    second = _ask(run_thyme, tmp_path, image, "just answer", ANSWER)
    runs = _runs(run_thyme)
    assert [r["id"] for r in runs] == [second, first]  # newest first
    assert runs[1]["question"] == "what is in the corner" and runs[1]["answer"] == "42"
    assert runs[1]["steps"] == 1 and runs[1]["model"] == "scripted" and float(str(runs[1]["seconds"])) > 0

    table = run_thyme("runs", "list")
    assert table.returncode == 0 and first in table.stdout and "what is in the corner" in table.stdout

    shown = run_thyme("runs", "show", first[:5])  # a prefix of the id will do
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    for expected in (
        "what is in the corner",
        "Crop the corner.",
        "img.crop((100, 80, 300, 200))",
        "step 1: ok",
        "cropped (200, 120)",
        "images/step1",
        "42",
    ):
        assert expected in text, (expected, text)
    assert text.index("Crop the corner.") < text.index("step 1: ok") < text.rindex("42")
    by_dir = run_thyme("runs", "show", str(runs[1]["run_dir"]), "--json")
    assert json.loads(by_dir.stdout)["id"] == first

    # `open` writes the missing report.html and hands its file:// URL to the browser ($BROWSER).
    seen = tmp_path / "browser-args"
    browser = tmp_path / "fake-browser"
    browser.write_text(f'#!/bin/sh\necho "$1" > {seen}\n')
    browser.chmod(browser.stat().st_mode | stat.S_IEXEC)
    report = Path(str(runs[1]["run_dir"])) / "report.html"
    assert not report.exists()
    opened = run_thyme("runs", "open", first, env={"BROWSER": str(browser)})
    assert opened.returncode == 0, opened.stderr
    assert report.is_file() and "what is in the corner" in report.read_text()
    assert seen.read_text().strip() == report.resolve().as_uri()


def test_rm_and_gc(run_thyme: RunThyme, tmp_path: Path, image: Path) -> None:
    ids = [_ask(run_thyme, tmp_path, image, f"question {n}", ANSWER) for n in range(3)]
    runs = {r["id"]: r for r in _runs(run_thyme)}
    # Age one run by 40 days (as if it were old).
    old_dir = Path(str(runs[ids[0]]["run_dir"]))
    trace = json.loads((old_dir / "trace.json").read_text())
    trace["started_at"] = (datetime.now(UTC) - timedelta(days=40)).isoformat(timespec="seconds")
    (old_dir / "trace.json").write_text(json.dumps(trace))

    refused = run_thyme("runs", "rm", ids[1])  # not a terminal: asks for --yes, deletes nothing
    assert refused.returncode == 2 and "--yes" in refused.stderr and len(_runs(run_thyme)) == 3

    dry = run_thyme("runs", "gc", "--older-than", "30d", "--dry-run")
    assert dry.returncode == 0 and ids[0] in dry.stdout and ids[1] not in dry.stdout and len(_runs(run_thyme)) == 3
    gc = run_thyme("runs", "gc", "--older-than", "30d", "--yes")
    assert gc.returncode == 0, gc.stderr
    assert not old_dir.exists() and {r["id"] for r in _runs(run_thyme)} == set(ids[1:])

    removed = run_thyme("runs", "rm", ids[1], str(runs[ids[2]]["run_dir"]), "--yes")
    assert removed.returncode == 0, removed.stderr
    assert _runs(run_thyme) == []
    assert "removed 2 run(s)" in removed.stderr


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["runs", "show", "ffffff"], "no run 'ffffff'"),
        (["runs", "rm", "--yes", "nothing-here"], "no run 'nothing-here'"),
        (["runs", "gc", "--older-than", "soon"], "is not an age"),
    ],
)
def test_bad_names_get_one_clear_line(run_thyme: RunThyme, args: list[str], line: str) -> None:
    result = run_thyme(*args)
    assert result.returncode == 2 and line in result.stderr and "Traceback" not in result.stderr


def test_a_folder_that_is_not_a_run_is_never_deleted(run_thyme: RunThyme, tmp_path: Path) -> None:
    keep = tmp_path / "precious"
    keep.mkdir()
    (keep / "thesis.txt").write_text("years of work")
    result = run_thyme("runs", "rm", str(keep), "--yes")
    assert result.returncode == 2 and "not a thyme run" in result.stderr
    assert (keep / "thesis.txt").read_text() == "years of work"
    assert os.listdir(keep) == ["thesis.txt"]


def test_a_run_outside_the_runs_dir_is_named_by_its_directory(run_thyme: RunThyme, tmp_path: Path, image: Path) -> None:
    script = tmp_path / "s.json"
    script.write_text(json.dumps([ANSWER]))
    out = tmp_path / "elsewhere"
    result = run_thyme("ask", str(image), "q", "--script", str(script), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert f"thyme runs show {out}" in result.stderr
    assert _runs(run_thyme) == []  # only the runs dir is listed
    shown = run_thyme("runs", "show", str(out))
    assert shown.returncode == 0 and "42" in shown.stdout
