"""Hostile steps through the real CLI (`ask`, `batch`, `replay`) on nsjail and bwrap.

The code of a step finds its worker's socket and writes frames the host must survive (deep
nesting, a huge length, invalid UTF-8, a million digits, a frame cut off, a flood). The step
reports an error, the worker is replaced, the question goes on (its next step makes an image),
and in a batch the next item runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import RunThyme
from tests.test_sandbox_helpers import JAILS, require_backend

pytestmark = pytest.mark.slow

WRITE_TO_SOCKET = """\
import struct, time
def to_socket(data):
    for fd in range(0, 256):
        try:
            if os.readlink(f'/proc/self/fd/{fd}').startswith('socket:'):
                os.write(fd, data)
        except OSError:
            pass
"""

PAYLOADS = {
    "deep-nesting": "to_socket(struct.pack('>I', 100000) + b'[' * 100000)",
    "huge-length": "to_socket(struct.pack('>I', 0xFFFFFFF0) + b'x' * 100)",
    "invalid-utf8": "to_socket(struct.pack('>I', 4) + b'\\xff\\xfe\\xfd\\xfc')",
    "not-an-object": "to_socket(struct.pack('>I', 9) + b'[1, 2, 3]')",
    "million-digits": "to_socket(struct.pack('>I', 1000000) + b'9' * 1000000)",
    "forged-result": (  # a well-formed reply for this step, with lone surrogates (not storable as UTF-8)
        "n = __STEP__  # this step's number (steps share one output folder: the test fills it in)\n"
        'body = (\'{"op": "result", "step": %d, "stdout": "\\\\ud800 x", \'\n'
        '        \'"error": "forged \\\\udfff"}\' % n).encode()\n'
        "to_socket(struct.pack('>I', len(body)) + body)"
    ),
    "cut-off-frame": "to_socket(struct.pack('>I', 5000) + b'{\"op\": \"res')",
    "flood": "to_socket(b'\\x00\\x00\\x10\\x00' + b'[' * 3_000_000)",
}


def step(body: str) -> str:
    return f"<code>\n```python\n{WRITE_TO_SOCKET}{body}\nprint('still here')\n```\n</code>"


CROP = (
    "<code>\n```python\nimg = Image.open(image_path)\n"
    "img.crop((0, 0, 64, 64)).save('/mnt/data/temp_processed_images/c.png')\n"
    "print('/mnt/data/temp_processed_images/c.png')\n```\n</code>"
)
ANSWER = "<answer>survived</answer>"


@pytest.fixture(params=JAILS)
def jail(request: pytest.FixtureRequest) -> str:
    require_backend(request.param)
    return str(request.param)


def _photo(path: Path, colour: str = "teal") -> Path:
    Image.new("RGB", (160, 120), colour).save(path)
    return path


def _check_steps(steps: list[dict[str, object]], hostile: int) -> None:
    """Every hostile step failed with a clear error; every crop after it made its image."""
    assert len(steps) == 2 * hostile
    for i in range(0, len(steps), 2):
        bad, good = steps[i], steps[i + 1]
        error = str(bad["error"])
        assert any(w in error for w in ("invalid reply", "died", "timed out", "forged")), error
        assert "bug in thyme" not in error
        assert good["error"] is None and good["images"], good
        json.dumps(bad, ensure_ascii=False).encode("utf-8")  # storable as it is


def test_hostile_frames_through_ask_and_replay(run_thyme: RunThyme, tmp_path: Path, jail: str) -> None:
    replies = []
    for i, body in enumerate(PAYLOADS.values()):
        replies += [step(body.replace("__STEP__", str(2 * i + 1))), CROP]
    script = tmp_path / "script.json"
    script.write_text(json.dumps([*replies, ANSWER]))
    image = _photo(tmp_path / "in.png")
    out = tmp_path / "run"
    result = run_thyme(
        "ask",
        str(image),
        "q",
        "--script",
        str(script),
        "--sandbox",
        jail,
        "--out",
        str(out),
        "--max-turns",
        str(len(replies) + 1),
        "--step-timeout",
        "10",
        "--json",
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "bug in thyme" not in result.stderr
    trace = json.loads((out / "trace.json").read_text())
    assert trace["answer"] == "survived"
    _check_steps(trace["steps"], len(PAYLOADS))

    again = run_thyme(
        "replay",
        str(out),
        "--sandbox",
        jail,
        "--json",
        "--out",
        str(tmp_path / "replay"),
        "--step-timeout",
        "10",
        timeout=600,
    )
    assert again.returncode == 1, again.stderr  # the hostile steps failed; the replay went on
    assert "Traceback" not in again.stderr and "bug in thyme" not in again.stderr
    replayed = json.loads(again.stdout)
    _check_steps(replayed["steps"], len(PAYLOADS))
    assert replayed["failed_steps"] == list(range(1, 2 * len(PAYLOADS), 2))


@pytest.mark.parametrize("pooled", ["1", "0"])
def test_hostile_frames_through_batch(run_thyme: RunThyme, tmp_path: Path, jail: str, pooled: str) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, colour in enumerate(("red", "green", "blue")):
        _photo(photos / f"p{i}.png", colour)
    script = tmp_path / "script.json"
    script.write_text(json.dumps([step(PAYLOADS["deep-nesting"]), CROP, ANSWER]))
    out = tmp_path / "results.jsonl"
    result = run_thyme(
        "batch",
        str(photos),
        "-q",
        "q",
        "--script",
        str(script),
        "--sandbox",
        jail,
        "-o",
        str(out),
        env={"THYME_SANDBOX_POOL": pooled},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 3
    for record in records:
        assert record["answer"] == "survived" and record["error"] is None
        _check_steps(record["steps"], 1)


# The other host-side attacks, as steps of one question: empty files past the file limit,
# a FIFO left in processed_path for later steps, reading what else site-packages holds.
FILES_BOMB = (
    "<code>\n```python\nn = 0\ntry:\n    for i in range(2000000):\n        open(f'/tmp/e{i}', 'w').close()\n"
    "        n += 1\nfinally:\n    print(n)\n```\n</code>"
)
FIFO = (
    "<code>\n```python\nos.mkfifo('/mnt/data/temp_processed_images/f.png')\n"
    "processed_path = '/mnt/data/temp_processed_images/f.png'\nprint('fifo')\n```\n</code>"
)
QUIET = "<code>\n```python\nprint('nothing new', processed_path)\n```\n</code>"
SITE = (
    "<code>\n```python\nimport sys\nfound = []\nfor p in sys.path:\n    if p.endswith('-packages'):\n"
    "        found += [n for n in os.listdir(p) if n in ('typer', 'rich', 'pytest', 'hypothesis', 'llama_cpp')]\n"
    "print('unrelated:', found)\n```\n</code>"
)


def _check_other_attacks(steps: list[dict[str, object]], backend: str) -> None:
    files, fifo, quiet1, crop, site = steps
    if backend == "bwrap":
        assert files["error"] == "the step made more than 4096 files in /tmp", files
    else:
        assert "No space left" in str(files["error"]), files
    assert str(fifo["stderr"]).count("f.png: not a regular file") == 1
    for later in (quiet1, crop, site):  # reported once, in the step that made it
        assert "f.png" not in str(later.get("stderr", "")), later
    assert crop["error"] is None and crop["images"]
    assert str(site["stdout"]).strip() == "unrelated: []", site


def test_other_host_attacks_through_ask_replay_and_batch(run_thyme: RunThyme, tmp_path: Path, jail: str) -> None:
    replies = [FILES_BOMB, FIFO, QUIET, CROP, SITE]
    script = tmp_path / "script.json"
    script.write_text(json.dumps([*replies, ANSWER]))
    image = _photo(tmp_path / "in.png")
    out = tmp_path / "run"
    result = run_thyme(
        "ask",
        str(image),
        "q",
        "--script",
        str(script),
        "--sandbox",
        jail,
        "--out",
        str(out),
        "--max-turns",
        str(len(replies) + 1),
        "--json",
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    trace = json.loads((out / "trace.json").read_text())
    assert trace["answer"] == "survived"
    _check_other_attacks(trace["steps"], jail)

    again = run_thyme("replay", str(out), "--sandbox", jail, "--json", "--out", str(tmp_path / "replay"), timeout=600)
    assert again.returncode == 1, again.stderr  # the file bomb failed; every later step ran
    _check_other_attacks(json.loads(again.stdout)["steps"], jail)

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        _photo(photos / f"p{i}.png")
    results = tmp_path / "results.jsonl"
    batch = run_thyme(
        "batch",
        str(photos),
        "-q",
        "q",
        "--script",
        str(script),
        "--sandbox",
        jail,
        "--max-turns",
        str(len(replies) + 1),
        "-o",
        str(results),
        timeout=600,
    )
    assert batch.returncode == 0, batch.stderr
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(records) == 2
    for record in records:
        assert record["answer"] == "survived"
        _check_other_attacks(json.loads((Path(record["run_dir"]) / "trace.json").read_text())["steps"], jail)
