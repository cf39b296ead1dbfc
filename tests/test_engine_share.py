"""Never pay twice: a saved system-prompt state across processes, and questions sharing an image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import RunThyme, add_model
from thyme_cli.devtools.tiny_gguf import TinyPair
from thyme_cli.engine.base import IMAGE_MARKER
from thyme_cli.engine.llama import prompt_state
from thyme_cli.engine.llama.engine import EngineOptions, LlamaEngine

OPTS = EngineOptions(n_ctx=4096, reserve_tokens=0, n_threads=2)
SYSTEM = "You are a careful visual assistant. " * 12


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray(np.random.default_rng(7).integers(0, 256, (84, 112, 3), dtype=np.uint8)).save(path)
    return path


def _ask(engine: LlamaEngine, image: Path, question: str) -> tuple[np.ndarray, str, list[object], int, int]:
    conv = engine.open()
    conv.feed_system(SYSTEM)
    conv.feed_user(f"{IMAGE_MARKER}<image>\n{question}\n\n", [image])
    logits = conv.logits()
    text = conv.generate(max_tokens=12).text
    conv.feed_assistant("\n<sandbox_output>ok</sandbox_output>\n")
    text += conv.generate(max_tokens=6).text
    stream = [t if isinstance(t, int) else "image" for t in conv.token_stream()]
    c = conv.counters
    conv.close()
    return logits, text, stream, c.images_encoded, c.tokens_evaluated


def test_a_second_question_on_the_same_image_encodes_nothing_and_matches_asking_it_alone(
    tiny_pair: TinyPair, photo: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "same-pixels.png"  # another file with the same pixels (batch copies inputs)
    copy.write_bytes(photo.read_bytes())
    with LlamaEngine.load(tiny_pair.model, tiny_pair.mmproj, options=OPTS) as engine:
        _, _, _, enc1, ev1 = _ask(engine, photo, "what is in the picture?")
        logits, text, stream, enc2, ev2 = _ask(engine, copy, "which colour dominates?")
    assert enc1 == 1 and enc2 == 0
    assert ev2 < ev1 / 2  # neither the system prompt nor the image tokens again
    with LlamaEngine.load(tiny_pair.model, tiny_pair.mmproj, options=OPTS) as alone:
        a_logits, a_text, a_stream, a_enc, _ = _ask(alone, copy, "which colour dominates?")
    assert a_enc == 1
    assert stream == a_stream  # the same tokens: libmtmd's end-of-image tokens included
    assert float(np.abs(logits - a_logits).max()) == 0.0
    assert text == a_text


def test_a_different_image_after_a_shared_one_is_encoded_and_matches_alone(
    tiny_pair: TinyPair, photo: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other.png"
    Image.fromarray(np.random.default_rng(8).integers(0, 256, (84, 112, 3), dtype=np.uint8)).save(other)
    with LlamaEngine.load(tiny_pair.model, tiny_pair.mmproj, options=OPTS) as engine:
        _ask(engine, photo, "q one")
        logits, text, _, enc, _ = _ask(engine, other, "q two")
        _, _, _, back, _ = _ask(engine, photo, "q three")  # the system prompt is still kept
    assert enc == 1 and back == 1
    with LlamaEngine.load(tiny_pair.model, tiny_pair.mmproj, options=OPTS) as alone:
        a_logits, a_text, _, _, _ = _ask(alone, other, "q two")
    assert float(np.abs(logits - a_logits).max()) == 0.0
    assert text == a_text


def test_the_system_prompt_state_is_saved_loaded_by_the_next_process_and_rebuilt_when_damaged(
    tiny_pair: TinyPair, photo: Path
) -> None:
    with LlamaEngine.load(tiny_pair.model, tiny_pair.mmproj, options=OPTS) as first:
        f_logits, f_text, f_stream, _, f_eval = _ask(first, photo, "what is it?")
        assert first.prompt_store is not None and first.prompt_store.last_event == "saved"
    files = list(prompt_state.state_dir().glob("*.state"))
    assert len(files) == 1
    with LlamaEngine.load(tiny_pair.model, tiny_pair.mmproj, options=OPTS) as second:
        s_logits, s_text, s_stream, _, s_eval = _ask(second, photo, "what is it?")
        assert second.prompt_store is not None and second.prompt_store.last_event == "loaded"
        system_tokens = len(second.token_ids(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"))
    assert s_eval == f_eval - system_tokens
    assert s_stream == f_stream and s_text == f_text
    assert float(np.abs(s_logits - f_logits).max()) == 0.0
    # A damaged file is deleted, the prompt evaluated again and saved again.
    raw = bytearray(files[0].read_bytes())
    raw[-10] ^= 0xFF
    files[0].write_bytes(bytes(raw))
    with LlamaEngine.load(tiny_pair.model, tiny_pair.mmproj, options=OPTS) as third:
        t_logits, t_text, _, _, t_eval = _ask(third, photo, "what is it?")
        assert third.prompt_store is not None and third.prompt_store.last_event == "saved"
    assert t_eval == f_eval and t_text == f_text
    assert float(np.abs(t_logits - f_logits).max()) == 0.0
    # Other context settings are another key: evaluated, not loaded.
    other = EngineOptions(n_ctx=2048, reserve_tokens=0, n_threads=2)
    with LlamaEngine.load(tiny_pair.model, tiny_pair.mmproj, options=other) as fourth:
        _ask(fourth, photo, "what is it?")
        assert fourth.prompt_store is not None and fourth.prompt_store.last_event == "saved"
    assert len(list(prompt_state.state_dir().glob("*.state"))) == 2


def test_the_state_directory_stays_within_its_bound(
    tiny_pair: TinyPair, photo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with LlamaEngine.load(tiny_pair.model, tiny_pair.mmproj, options=OPTS) as engine:
        _ask(engine, photo, "q")
    (one,) = prompt_state.state_dir().glob("*.state")
    monkeypatch.setenv("THYME_PROMPT_STATE_MB", str(1.5 * one.stat().st_size / 1024 / 1024))
    with LlamaEngine.load(
        tiny_pair.model, tiny_pair.mmproj, options=EngineOptions(n_ctx=2048, reserve_tokens=0, n_threads=2)
    ) as engine:
        _ask(engine, photo, "q")
    remaining = list(prompt_state.state_dir().glob("*.state"))
    assert len(remaining) == 1 and remaining[0] != one
    size = remaining[0].stat().st_size
    assert prompt_state.remove(models=[tiny_pair.model]) == (1, size)
    assert not list(prompt_state.state_dir().glob("*.state"))


def test_ask_with_several_questions_answers_each_as_if_asked_alone(
    run_thyme: RunThyme, tiny_pair: TinyPair, photo: Path, tmp_path: Path, sandbox_backend: str
) -> None:
    add_model(run_thyme, tiny_pair)
    common = ["-m", "tiny", "--max-tokens", "24", "--max-turns", "2", "--threads", "2", "--json"]
    both = run_thyme("ask", str(photo), "what is it?", "how many colours?", *common, "--out", str(tmp_path / "r"))
    assert both.returncode in (0, 3), both.stderr
    runs = [json.loads(line) for line in both.stdout.splitlines()]
    assert [r["question"] for r in runs] == ["what is it?", "how many colours?"]
    assert [Path(r["run_dir"]).name for r in runs] == ["q1", "q2"]
    assert all((tmp_path / "r" / q / "trace.json").is_file() for q in ("q1", "q2"))
    assert runs[0]["counters"]["images_encoded"] >= 1 and runs[1]["counters"]["images_encoded"] == 0
    assert runs[1]["counters"]["rollbacks"] == 0  # a new question is not a rollback
    alone = run_thyme("ask", str(photo), "how many colours?", *common)
    assert alone.returncode in (0, 3), alone.stderr
    solo = json.loads(alone.stdout)
    assert any(t["text"] for t in solo["turns"])
    assert solo["counters"]["images_encoded"] >= 1
    assert [t["text"] for t in solo["turns"]] == [t["text"] for t in runs[1]["turns"]]
    assert solo["answer"] == runs[1]["answer"]


def test_batch_groups_items_about_the_same_image_and_answers_them_as_alone(
    run_thyme: RunThyme, tiny_pair: TinyPair, photo: Path, tmp_path: Path, sandbox_backend: str
) -> None:
    other = tmp_path / "other.png"
    Image.fromarray(np.random.default_rng(9).integers(0, 256, (84, 112, 3), dtype=np.uint8)).save(other)
    add_model(run_thyme, tiny_pair)
    manifest = tmp_path / "m.jsonl"
    rows = [("a", photo, "what is it?"), ("b", other, "what is it?"), ("c", photo, "how many colours?")]
    manifest.write_text("".join(json.dumps({"id": i, "image": str(p), "question": q}) + "\n" for i, p, q in rows))
    common = ["-m", "tiny", "--max-tokens", "24", "--max-turns", "2", "--threads", "2"]
    out = tmp_path / "r.jsonl"
    result = run_thyme("batch", str(manifest), *common, "-o", str(out))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in lines] == ["a", "c", "b"]
    assert [r["counters"]["images_encoded"] >= 1 for r in lines] == [True, False, True]
    assert [r["counters"]["rollbacks"] for r in lines] == [0, 0, 0]
    alone = run_thyme("ask", str(photo), "how many colours?", *common, "--json")
    solo = json.loads(alone.stdout)
    assert solo["answer"] == lines[1]["answer"]
    assert [s["code"] for s in solo["steps"]] == [s["code"] for s in lines[1]["steps"]]
    assert solo["counters"]["tokens_generated"] == lines[1]["counters"]["tokens_generated"]


def test_models_rm_and_runs_gc_clean_the_saved_states(run_thyme: RunThyme, tiny_pair: TinyPair, photo: Path) -> None:
    import os

    with LlamaEngine.load(tiny_pair.model, tiny_pair.mmproj, options=OPTS) as engine:
        _ask(engine, photo, "q")
    with LlamaEngine.load(
        tiny_pair.model, tiny_pair.mmproj, options=EngineOptions(n_ctx=2048, reserve_tokens=0, n_threads=2)
    ) as engine:
        _ask(engine, photo, "q")
    states = sorted(prompt_state.state_dir().glob("*.state"))
    assert len(states) == 2
    os.utime(states[0], (1, 1))  # not used for decades
    (prompt_state.state_dir() / f"{'0' * 32}.state").write_bytes(b"junk")  # unreadable
    gc = run_thyme("runs", "gc", "--older-than", "30d", "--yes")
    assert gc.returncode == 0, gc.stderr
    assert sorted(prompt_state.state_dir().glob("*.state")) == states[1:]
    add_model(run_thyme, tiny_pair)
    rm = run_thyme("models", "rm", "tiny", "--yes")
    assert rm.returncode == 0, rm.stderr
    assert "1 saved prompt state" in rm.stderr
    assert not list(prompt_state.state_dir().glob("*.state"))
    assert tiny_pair.model.is_file()
