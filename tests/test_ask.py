"""`thyme ask` end to end: the real CLI, the real sandbox, a scripted engine speaking Thyme's format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from tests.browser import chromium_or_skip, probe_page
from tests.conftest import RunThyme, add_model
from thyme_cli.engine.base import IMAGE_MARKER
from thyme_cli.engine.scripted import ScriptedEngine
from thyme_cli.models.loading import LoadedModel
from thyme_cli.models.spec import ModelSpec
from thyme_cli.question.assemble import ask_one, prepare_input
from thyme_cli.question.loop import AgentOptions, QuietEvents
from thyme_cli.question.prompts import SYSTEM_PROMPT
from thyme_cli.question.settings import QuestionSettings

CROP = (
    "<think>The serial number is tiny, bottom right. Let me crop it.\n<code>\n```python\n"
    "img = Image.open(image_path)\ncropped = img.crop((880, 680, 1120, 820))\n"
    "processed_path = '/mnt/data/temp_processed_images/crop.png'\ncropped.save(processed_path)\n"
    "print(processed_path)\n```\n</code>"
)
CONTRAST = (
    "Now more contrast.\n<code>\n```python\nfrom PIL import ImageEnhance\n"
    "sharp = ImageEnhance.Contrast(cropped).enhance(2.0)\n"
    "processed_path = '/mnt/data/temp_processed_images/contrast.png'\nsharp.save(processed_path)\n"
    "print(processed_path)\n```\n</code>"
)
ANSWER = "It reads SN 4417-AB.</think>\n<answer>SN 4417-AB</answer>"
FAILING = "<code>\n```python\nprint(undefined_name)\n```\n</code>"
COMPUTE = "<code>\n```python\nprint('width is', Image.open(image_path).size[0])\n```\n</code>"


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    img = Image.new("RGB", (1280, 960), "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle((900, 700, 1100, 800), outline="black", width=3)
    draw.text((920, 740), "SN 4417-AB", fill="black")
    path = tmp_path / "photo.png"
    img.save(path)
    return path


def _script(tmp_path: Path, *replies: str) -> Path:
    path = tmp_path / "script.json"
    path.write_text(json.dumps(list(replies)))
    return path


def test_crop_contrast_answer_through_the_real_cli(
    run_thyme: RunThyme, tmp_path: Path, photo: Path, sandbox_backend: str
) -> None:
    script = _script(tmp_path, CROP, CONTRAST, ANSWER)
    out = tmp_path / "run"
    result = run_thyme("ask", str(photo), "read the serial number", "--script", str(script), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "SN 4417-AB\n"  # stdout carries only the answer when piped
    assert "step 1: code" in result.stderr and "step 2: ok" in result.stderr
    trace = json.loads((out / "trace.json").read_text())
    assert trace["answer"] == "SN 4417-AB" and trace["stop_reason"] == "answered"
    assert trace["sandbox"] == sandbox_backend
    assert [s["images"] for s in trace["steps"]] == [["images/step1-crop.png"], ["images/step2-contrast.png"]]
    with Image.open(out / "images" / "step1-crop.png") as crop:
        assert crop.size == (240, 140)
    assert [t["stop_reason"] for t in trace["turns"]] == ["code", "code", "answer"]


def test_the_model_is_fed_the_exact_thyme_protocol(tmp_path: Path, photo: Path, sandbox_backend: str) -> None:
    engine = ScriptedEngine([CROP, COMPUTE, ANSWER])
    model = LoadedModel(engine, ModelSpec(name="scripted", protocol="thyme", model_path=photo, mmproj_path=photo))
    run_dir = tmp_path / "run"
    image = prepare_input(photo, run_dir, label=str(photo), remove_on_error=False)
    trace = ask_one(
        model, image, "read the serial number", run_dir, QuestionSettings(sandbox=sandbox_backend), QuietEvents()
    )
    fed = engine.conversations[0].fed
    assert [f.kind for f in fed] == ["system", "user", "generated", "assistant", "generated", "assistant", "generated"]
    assert fed[0].text == SYSTEM_PROMPT
    user = fed[1]
    assert user.text.startswith(IMAGE_MARKER + "<image>\nread the serial number\n")
    assert '### User Image Size:** "1280x960"' in user.text
    assert user.images == [run_dir / "input.png"]
    # A step with an image: the image goes back inside the assistant turn, as Thyme was trained.
    assert fed[3].text == f"<sandbox_output>{IMAGE_MARKER}</sandbox_output>"
    assert fed[3].images == [run_dir / "images" / "step1-crop.png"]
    # A step with only printed output: the text goes back.
    assert fed[5].text == "<sandbox_output>width is 1280</sandbox_output>" and fed[5].images == []
    assert trace.answer == "SN 4417-AB"


def test_generic_protocol_sends_observations_as_user_turns(tmp_path: Path, photo: Path, sandbox_backend: str) -> None:
    engine = ScriptedEngine([FAILING, ANSWER])
    model = LoadedModel(engine, ModelSpec(name="g", protocol="generic", model_path=photo, mmproj_path=photo))
    run_dir = tmp_path / "run"
    image = prepare_input(photo, run_dir, label=str(photo), remove_on_error=False)
    trace = ask_one(model, image, "q", run_dir, QuestionSettings(sandbox=sandbox_backend), QuietEvents())
    fed = engine.conversations[0].fed
    observation = fed[3]
    assert observation.kind == "user"
    assert "NameError" in observation.text and observation.text.startswith("<sandbox_output>")
    assert trace.steps[0].error and "NameError" in trace.steps[0].error
    assert trace.answer == "SN 4417-AB"


def test_on_error_retry_discards_the_failed_step(tmp_path: Path, photo: Path, sandbox_backend: str) -> None:
    engine = ScriptedEngine([FAILING, CROP, ANSWER])
    model = LoadedModel(engine, ModelSpec(name="scripted", protocol="thyme", model_path=photo, mmproj_path=photo))
    run_dir = tmp_path / "run"
    image = prepare_input(photo, run_dir, label=str(photo), remove_on_error=False)
    settings = QuestionSettings(sandbox=sandbox_backend, agent=AgentOptions(on_error="retry"))
    trace = ask_one(model, image, "q", run_dir, settings, QuietEvents())
    assert [s.code.splitlines()[0] for s in trace.steps] == ["img = Image.open(image_path)"]
    fed = engine.conversations[0].fed
    assert not any("NameError" in f.text for f in fed)
    assert len(trace.turns) == 3 and trace.answer == "SN 4417-AB"


def test_turn_budget_forces_a_final_answer(
    run_thyme: RunThyme, tmp_path: Path, photo: Path, sandbox_backend: str
) -> None:
    script = _script(tmp_path, COMPUTE, COMPUTE.replace("width is", "the width is"), "1280 pixels wide</answer>")
    result = run_thyme("ask", str(photo), "how wide?", "--script", str(script), "--max-turns", "2", "--json")
    assert result.returncode == 0, result.stderr
    run = json.loads(result.stdout)
    assert run["answer"] == "1280 pixels wide" and len(run["steps"]) == 2
    assert run["steps"][0]["stdout"] == "width is 1280\n"
    assert {"question", "answer", "steps", "stop_reason", "counters", "model", "timings", "run_dir"} <= set(run)


def test_quiet_prints_only_the_answer_and_stdin_image_works(
    run_thyme: RunThyme, tmp_path: Path, photo: Path, sandbox_backend: str
) -> None:
    script = _script(tmp_path, ANSWER)
    result = run_thyme("ask", "-", "q", "--script", str(script), "--quiet", input=photo.read_bytes())
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"SN 4417-AB\n"
    assert result.stderr == b""


def test_no_answer_exits_3(run_thyme: RunThyme, tmp_path: Path, photo: Path, sandbox_backend: str) -> None:
    result = run_thyme("ask", str(photo), "q", "--script", str(_script(tmp_path, "")))
    assert result.returncode == 3
    assert result.stdout == ""
    assert "no answer" in result.stderr and "Traceback" not in result.stderr


def _bad_inputs(tmp_path: Path, photo: Path) -> dict[str, tuple[list[str], str]]:
    (tmp_path / "notes.txt").write_text("hello")
    truncated = tmp_path / "cut.jpg"
    Image.new("RGB", (400, 300), "red").save(tmp_path / "full.jpg", "JPEG")
    truncated.write_bytes((tmp_path / "full.jpg").read_bytes()[:500])
    return {
        "missing file": ([str(tmp_path / "nope.png"), "q"], "no such file"),
        "not an image": ([str(tmp_path / "notes.txt"), "q"], "not an image"),
        "truncated": ([str(truncated), "q"], "truncated"),
        "empty question": ([str(photo), "  "], "question is empty"),
        "unknown model": ([str(photo), "q", "--model", "qwen2.5-vl-7"], "unknown model"),
        "bad script": ([str(photo), "q", "--script", str(tmp_path / "notes.txt")], "not valid JSON"),
    }


@pytest.mark.parametrize(
    "case", ["missing file", "not an image", "truncated", "empty question", "unknown model", "bad script"]
)
def test_bad_input_gets_one_clear_line(run_thyme: RunThyme, tmp_path: Path, photo: Path, case: str) -> None:
    args, message = _bad_inputs(tmp_path, photo)[case]
    before = set((Path.cwd()).iterdir())
    result = run_thyme("ask", *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("error: ") and len(lines) <= 2
    assert set(Path.cwd().iterdir()) == before


def test_unknown_model_suggests_the_closest(run_thyme: RunThyme, photo: Path) -> None:
    result = run_thyme("ask", str(photo), "q", "--model", "qwen2.5-vl-7")
    assert "did you mean 'qwen2.5-vl-7b'" in result.stderr


def test_out_dir_holding_a_run_is_never_overwritten(
    run_thyme: RunThyme, tmp_path: Path, photo: Path, sandbox_backend: str
) -> None:
    script = _script(tmp_path, ANSWER)
    out = tmp_path / "run"
    assert run_thyme("ask", str(photo), "q", "--script", str(script), "--out", str(out)).returncode == 0
    before = (out / "trace.json").read_bytes()
    again = run_thyme("ask", str(photo), "q", "--script", str(script), "--out", str(out))
    assert again.returncode == 2 and "already holds a run" in again.stderr
    assert (out / "trace.json").read_bytes() == before


def test_html_report_shows_the_run_in_headless_chromium(
    run_thyme: RunThyme, tmp_path: Path, photo: Path, sandbox_backend: str
) -> None:
    chromium = chromium_or_skip()
    out = tmp_path / "run"
    result = run_thyme(
        "ask",
        str(photo),
        "read it",
        "--script",
        str(_script(tmp_path, CROP, CONTRAST, ANSWER)),
        "--out",
        str(out),
        "--html",
    )
    assert result.returncode == 0, result.stderr
    report = (out / "report.html").read_text()
    assert "file://" not in report and "http" not in report.split("<body>", 1)[1]  # self-contained
    # Probe what the browser really shows: a copy of the page with a script that reports on load.
    probe = tmp_path / "probe.html"
    probe.write_text(report.replace("</body>", PROBE_SCRIPT + "</body>"))
    seen = probe_page(chromium, probe, tmp_path / "chrome-profile")
    assert seen["answer"] == "Answer: SN 4417-AB"
    # the input, the input with the crop box drawn on it, then the two step images
    assert seen["images"] == [[1280, 960], [1280, 960], [240, 140], [240, 140]]
    assert seen["steps"] == 2 and "img.crop((880, 680, 1120, 820))" in seen["code"]


PROBE_SCRIPT = """<script>
window.addEventListener('load', () => {
  const pre = document.createElement('pre'); pre.id = 'probe';
  pre.textContent = JSON.stringify({
    answer: document.getElementById('answer').innerText.trim(),
    images: [...document.images].map(i => [i.naturalWidth, i.naturalHeight]),
    steps: document.querySelectorAll('.step').length,
    code: [...document.querySelectorAll('pre.code')].map(p => p.innerText).join('\\n'),
  });
  document.body.appendChild(pre);
});
</script>"""


def test_real_llama_engine_on_the_tiny_model_finishes_and_reports(
    run_thyme: RunThyme, tmp_path: Path, photo: Path, tiny_pair: object, sandbox_backend: str
) -> None:
    from thyme_cli.devtools.tiny_gguf import TinyPair

    assert isinstance(tiny_pair, TinyPair)
    add_model(run_thyme, tiny_pair, "--protocol", "thyme", "--ctx", "8192")
    small = tmp_path / "small.png"
    Image.open(photo).resize((320, 240)).save(small)
    result = run_thyme(
        "ask", str(small), "read the serial number", "-m", "tiny", "--max-tokens", "48", "--max-turns", "2", "--json"
    )
    assert result.returncode in (0, 3), result.stderr
    run = json.loads(result.stdout)
    assert run["model"] == "tiny" and run["protocol"] == "thyme"
    assert run["stop_reason"] in ("answered", "answered_untagged", "no_answer", "truncated")
    assert run["stop_detail"]
    assert run["turns"] and all(
        t["stop_reason"] in ("code", "answer", "end_of_turn", "max_tokens") for t in run["turns"]
    )
    assert run["counters"]["images_encoded"] >= 1 and run["counters"]["tokens_evaluated"] > 100
    assert (Path(run["run_dir"]) / "trace.json").is_file()


def test_no_tools_ablation_never_runs_code(tmp_path: Path, photo: Path, sandbox_backend: str) -> None:
    from thyme_cli.question.prompts import DIRECT_SYSTEM_PROMPT

    engine = ScriptedEngine([CROP, "It is 42.</answer>"])
    model = LoadedModel(engine, ModelSpec(name="scripted", protocol="thyme", model_path=photo, mmproj_path=photo))
    run_dir = tmp_path / "run"
    image = prepare_input(photo, run_dir, label=str(photo), remove_on_error=False)
    settings = QuestionSettings(sandbox=sandbox_backend, agent=AgentOptions(tools=False))
    trace = ask_one(model, image, "q", run_dir, settings, QuietEvents())
    fed = engine.conversations[0].fed
    assert fed[0].text == DIRECT_SYSTEM_PROMPT
    assert "User Image Path" not in fed[1].text and "code" not in fed[1].text
    assert trace.steps == [] and trace.answer == "It is 42."
