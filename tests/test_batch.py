"""`thyme batch` end to end: the real CLI and sandbox with a scripted engine; kill -9 and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.batch_support import kill_9_then_resume
from tests.conftest import RunThyme, add_model

CROP = (
    "<think>zoom</think><code>\n```python\nimg = Image.open(image_path)\n"
    "img.crop((0, 0, 40, 40)).save('/mnt/data/temp_processed_images/c.png')\n"
    "print('/mnt/data/temp_processed_images/c.png')\n```\n</code>"
)
ANSWER = "<answer>forty</answer>"


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(6):
        Image.new("RGB", (120 + i, 90), (i * 40, 100, 100)).save(root / f"p{i}.png")
    return root


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "script.json"
    path.write_text(json.dumps([CROP, ANSWER]))
    return path


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_directory_batch_writes_one_line_per_item(
    run_thyme: RunThyme, tmp_path: Path, photos: Path, script: Path, sandbox_backend: str
) -> None:
    out = tmp_path / "results.jsonl"
    result = run_thyme("batch", str(photos), "-q", "how wide?", "--script", str(script), "-o", str(out))
    assert result.returncode == 0, result.stderr
    lines = _lines(out)
    assert [Path(r["image"]).name for r in lines] == [f"p{i}.png" for i in range(6)]
    for record in lines:
        assert record["answer"] == "forty" and record["error"] is None and record["stop_reason"] == "answered"
        assert len(record["steps"]) == 1 and record["steps"][0]["images"] == ["images/step1-c.png"]
        assert (Path(record["run_dir"]) / "trace.json").is_file()
        assert (Path(record["run_dir"]) / "images" / "step1-c.png").is_file()
    assert "[6/6]" in result.stderr and "answered" in result.stderr  # plain progress when not a TTY


def test_manifests_jsonl_and_csv_carry_questions_ids_and_expected(
    run_thyme: RunThyme, tmp_path: Path, photos: Path, script: Path, sandbox_backend: str
) -> None:
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text(
        "".join(
            json.dumps({"id": f"j{i}", "image": f"photos/p{i}.png", "question": f"q{i}", "answer": "forty"}) + "\n"
            for i in range(2)
        )
    )
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("id,image,question,answer\nc1,photos/p3.png,what?,B\n")
    out = tmp_path / "r.jsonl"
    result = run_thyme("batch", str(jsonl), str(csv_path), "--script", str(script), "-o", str(out))
    assert result.returncode == 0, result.stderr
    lines = _lines(out)
    assert [(r["id"], r["question"], r["expected"]) for r in lines] == [
        ("j0", "q0", "forty"),
        ("j1", "q1", "forty"),
        ("c1", "what?", "B"),
    ]


def test_stdin_paths_and_stdout_output_is_pure_jsonl(
    run_thyme: RunThyme, photos: Path, script: Path, sandbox_backend: str
) -> None:
    paths = "\n".join(str(p) for p in sorted(photos.glob("*.png"))[:3]) + "\n"
    result = run_thyme("batch", "-", "-q", "total?", "--script", str(script), "-o", "-", input=paths)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 3 and all(r["answer"] == "forty" for r in records)


def test_bad_items_are_recorded_and_the_batch_goes_on(
    run_thyme: RunThyme, tmp_path: Path, photos: Path, script: Path, sandbox_backend: str
) -> None:
    (photos / "broken.png").write_bytes(b"not a png at all")
    Image.new("RGB", (300, 200)).save(photos / "full.jpg")
    (photos / "cut.jpg").write_bytes((photos / "full.jpg").read_bytes()[:300])
    out = tmp_path / "r.jsonl"
    result = run_thyme("batch", str(photos), "-q", "q", "--script", str(script), "-o", str(out))
    assert result.returncode == 1  # some items failed
    by_name = {Path(r["image"]).name: r for r in _lines(out)}
    assert len(by_name) == 9
    assert "not an image" in by_name["broken.png"]["error"]
    assert "truncated" in by_name["cut.jpg"]["error"]
    assert by_name["full.jpg"]["answer"] == "forty" and by_name["p0.png"]["answer"] == "forty"
    assert "failed" in result.stderr and "Traceback" not in result.stderr


def test_existing_output_is_never_overwritten(run_thyme: RunThyme, tmp_path: Path, photos: Path, script: Path) -> None:
    out = tmp_path / "r.jsonl"
    out.write_text('{"id": "mine"}\n')
    result = run_thyme("batch", str(photos), "-q", "q", "--script", str(script), "-o", str(out))
    assert result.returncode == 2 and "--resume" in result.stderr
    assert out.read_text() == '{"id": "mine"}\n'


def test_shards_split_the_work_without_overlap(
    run_thyme: RunThyme, tmp_path: Path, photos: Path, script: Path, sandbox_backend: str
) -> None:
    ids = []
    for shard in ("1/2", "2/2"):
        out = tmp_path / f"s{shard[0]}.jsonl"
        result = run_thyme("batch", str(photos), "-q", "q", "--script", str(script), "-o", str(out), "--shard", shard)
        assert result.returncode == 0, result.stderr
        ids.append({r["id"] for r in _lines(out)})
    assert not ids[0] & ids[1]
    assert ids[0] | ids[1] == {str(p) for p in photos.glob("*.png")}


def _start(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "thyme_cli.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def test_kill_9_at_random_moments_then_resume_gives_every_item_exactly_once(
    tmp_path: Path, script: Path, sandbox_backend: str
) -> None:
    root = tmp_path / "many"
    root.mkdir()
    for i in range(80):
        Image.new("RGB", (100, 80 + i)).save(root / f"img{i:02d}.png")
    out = tmp_path / "r.jsonl"
    args = ["batch", str(root), "-q", "q", "--script", str(script), "-o", str(out)]
    # Kill at a random moment after the batch has made some progress, five times; then let it finish.
    kills = kill_9_then_resume(
        args, out, kills=5, seed=1234, max_pause_s=0.15, progress_timeout_s=60, finish_timeout_s=300, attempts=60
    )
    assert kills >= 3, "the test must really interrupt the batch several times"
    lines = out.read_text().splitlines()
    ids = [json.loads(line)["id"] for line in lines]  # every line parses
    assert sorted(ids) == sorted(str(p) for p in root.glob("*.png"))
    assert len(ids) == len(set(ids)) == 80


def test_ctrl_c_stops_cleanly_and_is_resumable(tmp_path: Path, script: Path, sandbox_backend: str) -> None:
    root = tmp_path / "many"
    root.mkdir()
    for i in range(20):
        Image.new("RGB", (64, 64 + i)).save(root / f"i{i:02d}.png")
    out = tmp_path / "r.jsonl"
    proc = _start(["batch", str(root), "-q", "q", "--script", str(script), "-o", str(out)])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 2):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert b"--resume" in err and b"Traceback" not in err
    done = len(out.read_text().splitlines())
    assert 2 <= done < 20
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "thyme_cli.cli",
            "batch",
            str(root),
            "-q",
            "q",
            "--script",
            str(script),
            "-o",
            str(out),
            "--resume",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 20


def test_jobs_runs_items_concurrently_and_loses_none(
    run_thyme: RunThyme, tmp_path: Path, photos: Path, script: Path, sandbox_backend: str
) -> None:
    out = tmp_path / "r.jsonl"
    result = run_thyme("batch", str(photos), "-q", "q", "--script", str(script), "-o", str(out), "--jobs", "3")
    assert result.returncode == 0, result.stderr
    ids = [r["id"] for r in _lines(out)]
    assert sorted(ids) == sorted(str(p) for p in photos.glob("*.png")) and len(set(ids)) == 6


def test_jobs_with_a_local_model_runs_sequences_of_one_context(
    run_thyme: RunThyme, tmp_path: Path, photos: Path, tiny_pair: object
) -> None:
    from thyme_cli.devtools.tiny_gguf import TinyPair

    assert isinstance(tiny_pair, TinyPair)
    add_model(run_thyme, tiny_pair)
    result = run_thyme(
        "batch",
        str(photos),
        "-q",
        "q",
        "-m",
        "tiny",
        "-o",
        str(tmp_path / "r.jsonl"),
        "--jobs",
        "2",
        "--max-tokens",
        "16",
        "--max-turns",
        "1",
    )
    assert result.returncode == 0, result.stderr
    assert len(_lines(tmp_path / "r.jsonl")) == len(list(photos.glob("*.png")))
