"""What a step may leave on the host: pixel and byte budgets per step and per question, checked
before decoding and writing, with bounded host memory; refusals reported once, in their step.

Real CLI (`ask`, `batch`, `replay` with the scripted engine) and real jails on both backends.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import RunThyme
from tests.test_sandbox_helpers import JAILS, require_backend
from thyme_cli import step_images as store
from thyme_cli.sandbox import open_sandbox
from thyme_cli.sandbox.host.limits import Limits

pytestmark = pytest.mark.slow

# The amplification: 8 legal 49 MP gradients, a few MB inside the jail.
AMPLIFY = (
    "<code>\n```python\nw = h = 7000\n"
    "xs = np.linspace(0, 255, w, dtype=np.float32)[None, :]\n"
    "ys = np.linspace(0, 255, h, dtype=np.float32)[:, None]\n"
    "im = Image.fromarray(np.stack([xs + 0 * ys, ys + 0 * xs, xs * 0.5 + ys * 0.5], axis=-1).astype(np.uint8))\n"
    "for i in range(8):\n    im.save(f'/mnt/data/temp_processed_images/g{i}.png')\n"
    "print('saved 8')\n```\n</code>"
)
# Three 1 MP images per step.


def three(tag: str = "m") -> str:
    """A step that writes three 1 MP images (named by `tag`: identical code is not run twice)."""
    return (
        "<code>\n```python\nfor i in range(3):\n"
        "    Image.new('RGB', (1000, 1000), (i * 80, 10, 10))"
        f".save(f'/mnt/data/temp_processed_images/{tag}{{i}}.png')\n"
        "print('three')\n```\n</code>"
    )


THREE = three()
ANSWER = "<answer>done</answer>"
# Runs thyme in this process's own interpreter and reports ITS peak RSS (not the jail's).
DRIVER = (
    "import resource, sys\nfrom thyme_cli.cli import app\ncode = 0\n"
    "try:\n    app(sys.argv[1:], prog_name='thyme')\nexcept SystemExit as e:\n    code = e.code\n"
    "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(code)\n"
)


@pytest.fixture(params=JAILS)
def jail(request: pytest.FixtureRequest) -> str:
    require_backend(request.param)
    return str(request.param)


def _script(tmp_path: Path, replies: list[str]) -> Path:
    path = tmp_path / "script.json"
    path.write_text(json.dumps([*replies, ANSWER]))
    return path


def _photo(tmp_path: Path) -> Path:
    path = tmp_path / "in.png"
    Image.new("RGB", (200, 100), "olive").save(path)
    return path


def test_amplification_is_capped_and_host_memory_stays_bounded(tmp_path: Path, jail: str) -> None:
    out = tmp_path / "run"
    args = [
        "ask",
        str(_photo(tmp_path)),
        "q",
        "--script",
        str(_script(tmp_path, [AMPLIFY])),
        "--sandbox",
        jail,
        "--out",
        str(out),
        "--step-timeout",
        "120",
        "--quiet",
    ]
    done = subprocess.run([sys.executable, "-c", DRIVER, *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    peak_mb = int(done.stderr.split("PEAK_RSS_KB")[1].split()[0]) / 1024
    step = json.loads((out / "trace.json").read_text())["steps"][0]
    limits = Limits()
    # 147 MB of pixels each: the default step budget (256 MB) takes one, the rest are skipped unread
    assert len(step["images"]) == 1, step
    assert step["stderr"].count("skipped 7 image(s): the image budget is used up") == 1
    stored = sum(p.stat().st_size for p in (out / "images").iterdir())
    assert stored <= limits.step_image_bytes
    assert stored < 20 * 1024 * 1024  # a gradient compresses: the PNG is a few MB, not 147 MB
    # one 49 MP image decoded at a time (147 MB) plus the interpreter; it was 940 MB before budgets
    assert peak_mb < 600, peak_mb


def _steps_report(steps: list[dict[str, object]]) -> list[tuple[int, int]]:
    """(images kept, images skipped) per step, from the trace's stderr notes."""
    found = []
    for s in steps:
        stderr = str(s["stderr"])
        skipped = 0
        if "image budget is used up" in stderr:
            assert stderr.count("image budget is used up") == 1, stderr  # one line per step
            skipped = int(stderr.split("[thyme: skipped ")[1].split(" image(s)")[0])
        found.append((len(s["images"]), skipped))  # type: ignore[arg-type]
    return found


def test_budget_flags_through_ask_replay_and_batch(run_thyme: RunThyme, tmp_path: Path, jail: str) -> None:
    budget = ["--step-images", "2MP,1GB", "--question-images", "3.5MP,1GB"]
    script = _script(tmp_path, [three("a"), three("b"), three("c")])
    photo = _photo(tmp_path)
    out = tmp_path / "run"
    result = run_thyme(
        "ask", str(photo), "q", "--script", str(script), "--sandbox", jail, "--out", str(out), "--quiet", *budget
    )
    assert result.returncode == 0, result.stderr
    trace = json.loads((out / "trace.json").read_text())
    # step 1: 2 of 3 (step budget); step 2: 1 (3 MP of the question's 3.5 used); step 3: none
    assert _steps_report(trace["steps"]) == [(2, 1), (1, 2), (0, 3)]
    assert "per question" in trace["steps"][2]["stderr"]

    again = run_thyme("replay", str(out), "--sandbox", jail, "--json", "--out", str(tmp_path / "replay"), *budget)
    assert again.returncode == 0, again.stderr
    assert _steps_report(json.loads(again.stdout)["steps"]) == [(2, 1), (1, 2), (0, 3)]
    default = run_thyme("replay", str(out), "--sandbox", jail, "--json", "--out", str(tmp_path / "replay2"))
    assert _steps_report(json.loads(default.stdout)["steps"]) == [(3, 0), (3, 0), (3, 0)]

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.new("RGB", (90, 60), (i * 100, 0, 0)).save(photos / f"p{i}.png")
    results = tmp_path / "results.jsonl"
    batch = run_thyme(
        "batch", str(photos), "-q", "q", "--script", str(script), "--sandbox", jail, "-o", str(results), *budget
    )
    assert batch.returncode == 0, batch.stderr
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(records) == 2
    for record in records:  # every item gets the whole question budget again
        item = json.loads((Path(record["run_dir"]) / "trace.json").read_text())
        assert _steps_report(item["steps"]) == [(2, 1), (1, 2), (0, 3)]


def test_bad_budget_values_are_usage_errors(run_thyme: RunThyme, tmp_path: Path) -> None:
    for value in ("lots", "0MP", "-5MB", "12"):
        result = run_thyme(
            "ask", str(_photo(tmp_path)), "q", "--script", str(_script(tmp_path, [])), "--step-images", value
        )
        assert result.returncode == 2, (value, result.stderr)
        assert "--step-images" in result.stderr and "Traceback" not in result.stderr


def test_the_model_is_told_which_images_were_left_out(tmp_path: Path, sandbox_backend: str) -> None:
    """The skipped-images note goes into the <sandbox_output> the model reads, not only to stderr."""
    import dataclasses

    from thyme_cli.engine.scripted import ScriptedEngine
    from thyme_cli.models.loading import LoadedModel
    from thyme_cli.models.spec import ModelSpec
    from thyme_cli.question.assemble import ask_one, prepare_input
    from thyme_cli.question.loop import AgentOptions, QuietEvents
    from thyme_cli.question.settings import QuestionSettings

    engine = ScriptedEngine([THREE, ANSWER])
    spec = ModelSpec(name="scripted", protocol="thyme", model_path=tmp_path, mmproj_path=tmp_path)
    run_dir = tmp_path / "run"
    image = prepare_input(_photo(tmp_path), run_dir, label="in.png", remove_on_error=True)
    limits = dataclasses.replace(Limits(), step_image_pixels=2_000_000)
    settings = QuestionSettings(sandbox=sandbox_backend, limits=limits, agent=AgentOptions(max_turns=3))
    trace = ask_one(LoadedModel(engine, spec), image, "q", run_dir, settings, QuietEvents())
    assert trace.answer == "done"
    fed = [item for item in engine.conversations[0].fed if item.text.startswith("<sandbox_output>")]
    assert len(fed) == 1 and len(fed[0].images) == 2
    assert "[thyme: skipped 1 image(s): the image budget is used up" in fed[0].text


def test_refusals_are_reported_once_in_the_step_that_made_them(tmp_path: Path, jail: str) -> None:
    photo = _photo(tmp_path)
    limits = Limits(step_image_pixels=1_500_000)
    with open_sandbox(jail, image=photo, images_dir=tmp_path / "images", timeout_s=30, limits=limits) as box:
        first = box.run(
            "d = '/mnt/data/temp_processed_images'\n"
            "os.mkfifo(d + '/fifo.png')\n"
            "processed_path = d + '/fifo.png'\n"
            "os.symlink('/etc/passwd', d + '/link.png')\n"
            "for i in range(2):\n    Image.new('RGB', (1000, 1000)).save(f'{d}/big{i}.png')\n"
            "missing = d + '/never.png'\n"
            "print(missing)\n"
        )
        assert first.ok, first.error
        assert first.stderr.count("fifo.png: not a regular file") == 1
        assert first.stderr.count("link.png") == 1 and "never.png" in first.stderr
        assert len(first.images) == 1 and "skipped 1 image(s)" in first.stderr
        # later steps did nothing new: processed_path still names the FIFO, the path is printed again
        for _ in range(2):
            later = box.run("print(missing)\nx = 1")
            assert later.ok and later.images == [], later
            assert later.stderr == "", later.stderr
        # a NEW refusal in a later step is reported in that step
        new = box.run("os.symlink('/etc/shadow', '/mnt/data/temp_processed_images/other.png')")
        assert new.stderr.count("other.png") == 1 and "fifo.png" not in new.stderr
    store.flush()
