"""What real models write, through the real loop and sandbox: placeholder / empty / nested /
cut-off answers, Markdown fences, inline <code>, extra and repeated code blocks (issue 19)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import RunThyme
from thyme_cli.devtools.tiny_gguf import TinyPair
from thyme_cli.engine.llama.engine import EngineOptions, LlamaEngine, SamplingOptions
from thyme_cli.engine.scripted import ScriptedEngine
from thyme_cli.engine.textstream import TurnScanner
from thyme_cli.models.loading import LoadedModel
from thyme_cli.models.spec import ModelSpec
from thyme_cli.question.answers import clean_answer
from thyme_cli.question.assemble import ask_one, prepare_input
from thyme_cli.question.loop import AgentOptions, QuietEvents
from thyme_cli.question.prompts import FINAL_ANSWER_REQUEST, parse_reply
from thyme_cli.question.settings import QuestionSettings
from thyme_cli.question.trace import Trace

PLACEHOLDER = "<answer>Your final answer to the user's question goes here.</answer>"
WIDTH_FENCE = "I will measure it.\n```python\nprint('width', Image.open(image_path).size[0])\n```\n"


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    Image.new("RGB", (640, 480), "white").save(path)
    return path


def _ask(
    tmp_path: Path,
    photo: Path,
    replies: list[str],
    *,
    protocol: str = "thyme",
    sandbox: str,
    max_turns: int = 5,
    on_error: str = "show",
) -> tuple[Trace, ScriptedEngine]:
    engine = ScriptedEngine(replies)
    model = LoadedModel(engine, ModelSpec(name="s", protocol=protocol, model_path=photo, mmproj_path=photo))
    run_dir = tmp_path / "run"
    image = prepare_input(photo, run_dir, label=str(photo), remove_on_error=False)
    settings = QuestionSettings(sandbox=sandbox, agent=AgentOptions(max_turns=max_turns, on_error=on_error))  # type: ignore[arg-type]
    return ask_one(model, image, "how wide is it?", run_dir, settings, QuietEvents()), engine


# --- answers --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Your final answer to the user's question goes here.", None),
        ("**Your final answer to the user’s question goes here**", None),
        ("  ", None),
        ("...", None),
        ("<answer>blue", "blue"),
        ("42\n<sandbox_output>width 640</sandbox_output>", "42"),
        ("```python\nprint(1)\n```\n7 apples", "7 apples"),
        ("The <code> tag marks inline code.", "The <code> tag marks inline code."),
    ],
)
def test_clean_answer(raw: str, clean: str | None) -> None:
    assert clean_answer(raw) == clean


def test_a_copied_placeholder_is_not_an_answer_and_exit_is_3(
    run_thyme: RunThyme, tmp_path: Path, photo: Path, sandbox_backend: str
) -> None:
    script = tmp_path / "s.json"
    script.write_text(json.dumps([PLACEHOLDER, "</answer>"]))
    result = run_thyme("ask", str(photo), "q", "--script", str(script), "--json")
    assert result.returncode == 3, result.stderr
    run = json.loads(result.stdout)
    assert run["answer"] is None and run["stop_reason"] == "no_answer"
    assert any("placeholder" in n for n in run["notes"])


def test_nested_answer_tags_are_stripped(tmp_path: Path, photo: Path, sandbox_backend: str) -> None:
    trace, _ = _ask(tmp_path, photo, ["<answer><answer>640 pixels</answer></answer>"], sandbox=sandbox_backend)
    assert trace.answer == "640 pixels" and trace.stop_reason == "answered"


def test_a_final_answer_cut_by_the_token_budget_is_reported_not_taken(
    run_thyme: RunThyme, tmp_path: Path, photo: Path, sandbox_backend: str
) -> None:
    long_final = "The width is 640 pixels, " + "and more words " * 60 + "```python\nprint(1)"
    script = tmp_path / "s.json"
    script.write_text(json.dumps(["I think.", long_final]))
    result = run_thyme("ask", str(photo), "q", "--script", str(script), "--json", "--max-tokens", "32")
    assert result.returncode == 3, result.stderr
    run = json.loads(result.stdout)
    assert run["stop_reason"] == "truncated" and run["answer"] is None
    assert "cut off by the token budget" in run["stop_detail"]
    assert run["turns"][-1]["stop_reason"] == "max_tokens"
    assert any("The width is 640 pixels" in n for n in run["notes"])


# --- code blocks ----------------------------------------------------------------------------------


def test_scanner_fences_are_code_only_when_asked_and_only_python() -> None:
    scanner = TurnScanner(fences=True)
    hits = [scanner.feed(piece) for piece in ("Let me see.\n``", "`py", "thon\nx = 1", "\n", "`", "``", "\nmore")]
    assert hits == [None, None, None, None, None, "code", None]
    scanner = TurnScanner(fences=True)
    assert [scanner.feed(p) for p in ("```text\n", "a b\n", "```", "\n")] == [None, None, None, None]
    assert not scanner.in_code
    scanner = TurnScanner(fences=True)
    scanner.feed("```python\n")
    assert scanner.in_code  # adaptive temperature sampling applies inside the fence
    plain = TurnScanner()
    assert [plain.feed(p) for p in ("```python\n", "x=1\n", "```")] == [None, None, None] and not plain.in_code
    thyme = TurnScanner(fences=True)  # a fence inside <code> is Thyme's own format: </code> ends it
    assert [thyme.feed(p) for p in ("<code>\n```python\n", "x=1\n```", "\n</code>")] == [None, None, "code"]


def test_a_closing_fence_ends_a_generic_code_turn_in_the_real_engine(tiny_pair: TinyPair) -> None:
    engine = LlamaEngine.load(tiny_pair.model, tiny_pair.mmproj, options=EngineOptions(n_ctx=1024))
    try:
        (tick,) = engine.token_ids("`")
        conv = engine.open(SamplingOptions(logit_bias={tick: 1000.0}))
        conv.feed_user("Crop it.")
        conv.use_fences(True)
        conv.feed_assistant("```python\nprint(1)\n")
        assert conv.in_code
        gen = conv.generate(max_tokens=20)
        assert (gen.stop_reason, gen.text, gen.n_tokens) == ("code", "```", 3)
        assert not conv.in_code
    finally:
        engine.close()


def test_generic_fence_runs_and_its_answer_waits_for_the_output(
    tmp_path: Path, photo: Path, sandbox_backend: str
) -> None:
    # The model writes a fence and guesses an answer in the same breath: the fence ends the turn,
    # the code runs, and the answer comes after the model has seen the output.
    trace, _ = _ask(
        tmp_path,
        photo,
        [WIDTH_FENCE + "<answer>500</answer>", "<answer>640</answer>"],
        protocol="generic",
        sandbox=sandbox_backend,
    )
    assert [s.stdout for s in trace.steps] == ["width 640\n"]
    assert trace.answer == "640" and trace.turns[0].stop_reason == "code"
    assert trace.turns[0].text.endswith("```")


def test_inline_code_in_prose_is_not_run(tmp_path: Path, photo: Path, sandbox_backend: str) -> None:
    reply = "In HTML the <code>code</code> tag marks code, like <code>tag</code>.\n<answer>inline code</answer>"
    trace, _ = _ask(tmp_path, photo, [reply], sandbox=sandbox_backend)
    assert trace.steps == [] and trace.answer == "inline code"
    assert len(trace.turns) == 1 and trace.turns[0].text == reply


def test_extra_code_blocks_are_counted_for_the_note() -> None:
    # Live engines stop at the first block; an engine that cannot (a server without stop strings)
    # hands over several, and the loop notes that only the first ran.
    reply = parse_reply(WIDTH_FENCE + "```python\nprint(2)\n```\n```py\nprint(3)\n```", lenient_fences=True)
    assert reply.code == "print('width', Image.open(image_path).size[0])" and reply.extra_code_blocks == 2


def test_repeated_code_is_not_rerun_and_the_model_is_told(tmp_path: Path, photo: Path, sandbox_backend: str) -> None:
    code = "<code>\n```python\nprint('width', Image.open(image_path).size[0])\n```\n</code>"
    trace, engine = _ask(tmp_path, photo, [code, code, "<answer>640</answer>"], sandbox=sandbox_backend)
    assert len(trace.steps) == 1 and trace.answer == "640"
    assert any("repeated step 1's code" in n for n in trace.notes)
    told = [f.text for f in engine.conversations[0].fed if "not run again" in f.text]
    assert len(told) == 1 and told[0].startswith("<sandbox_output>")


def test_no_empty_model_turn_before_the_final_request(tmp_path: Path, photo: Path, sandbox_backend: str) -> None:
    trace, engine = _ask(
        tmp_path, photo, [WIDTH_FENCE, "640"], protocol="generic", sandbox=sandbox_backend, max_turns=1
    )
    fed = engine.conversations[0].fed
    kinds = [f.kind for f in fed]
    assert kinds == ["system", "user", "generated", "user", "assistant", "generated"]
    assert fed[3].text.startswith("<sandbox_output>width 640") and fed[3].text.endswith(FINAL_ANSWER_REQUEST)
    assert trace.answer == "640"


def test_an_answer_ended_by_the_end_of_turn_token_without_its_tag_is_taken(
    tmp_path: Path, photo: Path, sandbox_backend: str
) -> None:
    trace, _ = _ask(tmp_path, photo, ["<answer>640 pixels"], protocol="generic", sandbox=sandbox_backend)
    assert trace.answer == "640 pixels" and trace.stop_reason == "answered"
    assert trace.turns[0].stop_reason == "end_of_turn"
