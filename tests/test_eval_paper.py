"""The paper's evaluation settings: what eval applies by itself, and how the report states them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import numpy as np
from PIL import Image

from tests.conftest import RunThyme
from thyme_cli.devtools.tiny_gguf import TinyPair
from thyme_cli.engine.settings import EngineOptions
from thyme_cli.eval.paper import eval_context, paper_image_tokens, paper_min_image_tokens, settings_markdown
from thyme_cli.eval.synth import write_synthetic_tsv
from thyme_cli.models.registry import load_registry

PAPER = {
    "tools": True,
    "max_turns": 5,
    "max_tokens": 2048,
    "temperature": 0.0,
    "on_error": "retry",
    "max_image_tokens": 16384,
}


def test_ocrbench_gets_the_papers_larger_minimum_image() -> None:
    assert paper_min_image_tokens("OCRBench") == 100 and paper_min_image_tokens("ocrbench_v2") == 100
    assert paper_min_image_tokens("HRBench4K") == 4
    spec = load_registry().get("thyme-7b")
    options = EngineOptions.from_spec(spec, image_min_tokens=100)
    assert options.token_limits == (100, spec.image_max_tokens)  # 78,400 px at 28 px per token


def test_settings_section_says_what_differs() -> None:
    same = "\n".join(settings_markdown({**PAPER, "benchmark": "OCRBench", "min_image_tokens": 100}))
    assert "All settings are those of the paper's evaluation." in same
    off = "\n".join(
        settings_markdown(
            {**PAPER, "benchmark": "OCRBench", "min_image_tokens": None, "temperature": 0.7, "max_turns": 3}
        )
    )
    assert "| image tokens (min) | model default (differs) | 100 (78,400 px) |" in off
    assert "| temperature | 0.7 (differs) |" in off and "| code steps per question | 3 (differs) |" in off
    assert "differ from the paper's evaluation: code steps per question, temperature, image tokens (min)." in off


def test_eval_of_ocrbench_records_the_papers_settings(
    run_thyme: RunThyme, tmp_path: Path, sandbox_backend: str
) -> None:
    bench = tmp_path / "OCRBench.tsv"
    write_synthetic_tsv(bench, per_category=1)
    script = tmp_path / "s.json"
    script.write_text(json.dumps(["<answer>B</answer>"]))
    result = run_thyme("eval", str(bench), "--script", str(script), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    work = tmp_path / "OCRBench.tools.eval"
    settings = json.loads((work / "meta.json").read_text())["settings"]
    assert settings["min_image_tokens"] == 100 and settings["on_error"] == "retry"
    assert settings["max_image_tokens"] == 16384
    assert "All settings are those of the paper's evaluation." in (work / "report.md").read_text()


def test_image_token_budget_per_benchmark_is_the_papers() -> None:
    # upstream's Thyme-7B config gives no min/max_pixels: qwen_vl_utils' 4..16384 tokens of 28x28 px
    assert paper_image_tokens("HRBench4K") == (4, 16384)
    assert paper_image_tokens("V_star") == (4, 16384)
    assert paper_image_tokens("OCRBench") == (100, 16384)  # min_pixels 10*10*28*28, default maximum
    assert paper_image_tokens("OCRBench", 3072) == (100, 3072)  # --max-image-tokens replaces the maximum
    assert paper_image_tokens("OCRBench", 64) == (64, 64)  # the minimum never exceeds it


def test_eval_with_a_smaller_image_budget_says_it_differs(
    run_thyme: RunThyme, tmp_path: Path, sandbox_backend: str
) -> None:
    bench = tmp_path / "HRBench4K.tsv"
    write_synthetic_tsv(bench, per_category=1)
    script = tmp_path / "s.json"
    script.write_text(json.dumps(["<answer>B</answer>"]))
    result = run_thyme("eval", str(bench), "--script", str(script), "--max-image-tokens", "3072", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    work = tmp_path / "HRBench4K.tools.eval"
    settings = json.loads((work / "meta.json").read_text())["settings"]
    assert (settings["min_image_tokens"], settings["max_image_tokens"]) == (4, 3072)
    report = (work / "report.md").read_text()
    assert "| image tokens (max) | 3072 (differs) |" in report
    assert "Settings differ from the paper's evaluation: image tokens (max)." in report


def test_eval_retry_uses_up_steps_as_the_papers_loop(run_thyme: RunThyme, tmp_path: Path, sandbox_backend: str) -> None:
    # Upstream's inner loop: a code step without a result is rolled back and the turn generated
    # again, and each attempt is one of the 5 iterations. So 5 failing attempts end the steps and the
    # model is asked for its answer (thyme's final-answer turn; upstream restarts, then a plain prompt).
    bench = tmp_path / "HRBench4K.tsv"
    write_synthetic_tsv(bench, per_category=1, seed=3)
    script = tmp_path / "s.json"
    script.write_text(json.dumps(["<code>print(undefined_name)</code>"] * 5 + ["B</answer>", "<answer>B</answer>"]))
    result = run_thyme("eval", str(bench), "--script", str(script), "--limit", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "HRBench4K.tools.jsonl").read_text().splitlines()[0])
    assert record["steps"] == [] and record["answer"] == "B"
    trace = json.loads((tmp_path / record["run_dir"] / "trace.json").read_text())
    assert [bool(t.get("discarded")) for t in trace["turns"]] == [True] * 5 + [False]  # 5 attempts, then the answer
    assert sum("--on-error retry" in n for n in trace["notes"]) == 5


def test_eval_agent_options_are_the_papers() -> None:
    from thyme_cli.eval.run import agent_options

    options = agent_options(no_tools=False, max_turns=5, max_tokens=2048, on_error="retry")
    assert (options.on_error, options.max_retries, options.retry_warm, options.retries_use_turns) == (
        "retry",
        5,
        False,
        True,
    )


def test_eval_retry_regenerates_greedily_as_upstream(tiny_pair: TinyPair, tmp_path: Path) -> None:
    # Upstream sets temperature 1.0 after a failure but keeps top_k 1: the retried turn is still the
    # greedy one. Through the agent's rollback with warm=False the real engine replays it exactly.
    from thyme_cli.engine.base import IMAGE_MARKER
    from thyme_cli.engine.llama.engine import EngineOptions as Exact
    from thyme_cli.engine.llama.engine import LlamaEngine, SamplingOptions
    from thyme_cli.question.loop import _rollback

    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (112, 140, 3), dtype=np.uint8)).save(photo)
    options = Exact(n_ctx=4096, flash_attn=False, kv_cache_type="f32", reserve_tokens=0, n_threads=2)
    with LlamaEngine.load(tiny_pair.model, tiny_pair.mmproj, options=options) as engine:
        eog = [t for t in range(engine.native.n_vocab) if engine.native.is_eog(t)]
        conv = engine.open(SamplingOptions(logit_bias=dict.fromkeys(eog, -1000.0)))
        conv.feed_system("sys")
        conv.feed_user(f"{IMAGE_MARKER}\nread it", [photo])
        mark = conv.checkpoint()
        failed = conv.generate(max_tokens=12).text
        _rollback(cast(Any, conv), mark, warm=False)
        assert conv.generate(max_tokens=12).text == failed
        conv.close()


def _manifest(tmp_path: Path, name: str, rows: list[dict[str, Any]]) -> Path:
    Image.new("RGB", (64, 48), "white").save(tmp_path / "img.png")
    path = tmp_path / name
    path.write_text("".join(json.dumps({"image": "img.png", **row}) + "\n" for row in rows))
    return path


def test_open_questions_get_upstreams_instruction_per_benchmark_type(
    run_thyme: RunThyme, tmp_path: Path, sandbox_backend: str
) -> None:
    # upstream's ThymePromptMixin: VQA -> question + "\nPlease try to answer ... phrases if possible."
    # (not MMVet), Y/N -> question + " Please answer yes or no." (not MME); no hint line in either;
    # multiple choice: "Question: ... Options: ... Please select the correct answer from the options above."
    script = tmp_path / "s.json"
    script.write_text(json.dumps({"replies": ["<answer>yes</answer>"]}))
    cases = {
        "OCRBench.jsonl": (
            [{"question": "What is written?", "answer": "STOP", "hint": "a sign"}],
            "What is written?\nPlease try to answer the question with short words or phrases if possible.",
        ),
        "POPE.jsonl": (
            [{"question": "Is there a dog?", "answer": "yes"}, {"question": "A cat?", "answer": "No"}],
            "Is there a dog? Please answer yes or no.",
        ),
        "MME.jsonl": ([{"question": "Is there a dog?", "answer": "yes"}], "Is there a dog?"),
        "MMVet.jsonl": ([{"question": "What is it?", "answer": "a sign"}], "What is it?"),
        "V_star.jsonl": (
            [{"question": "What colour?", "options": ["red", "blue"], "answer": "A", "hint": "h"}],
            "Hint: h\nQuestion: What colour?\nOptions:\nA. red\nB. blue\n"
            "Please select the correct answer from the options above.",
        ),
    }
    for name, (rows, prompt) in cases.items():
        bench = _manifest(tmp_path, name, rows)
        result = run_thyme("eval", str(bench), "--script", str(script), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        first = json.loads((tmp_path / f"{bench.stem}.tools.jsonl").read_text().splitlines()[0])
        assert first["question"] == prompt, name


def test_eval_context_holds_the_papers_image_budget() -> None:
    # two images at 16,384 tokens and 5 turns of 2,048 tokens do not fit thyme-7b's 16,384 context
    assert eval_context(None, 16384, 5, 2048) == 44032
    assert eval_context(8192, 16384, 5, 2048) == 8192  # --ctx wins
    assert eval_context(None, 3072, 5, 2048) == 17408
    assert eval_context(None, 1024, 5, 2048) is None  # small images: the model's own context
