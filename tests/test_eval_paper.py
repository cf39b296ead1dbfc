"""The paper's evaluation settings: what eval applies by itself, and how the report states them."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import RunThyme
from thyme_cli.engine.options import EngineOptions
from thyme_cli.eval.paper import paper_min_image_tokens, settings_markdown
from thyme_cli.eval.synth import write_synthetic_tsv
from thyme_cli.registry import load_registry

PAPER = {"tools": True, "max_turns": 5, "max_tokens": 2048, "temperature": 0.0, "on_error": "retry",
         "max_image_tokens": None}


def test_ocrbench_gets_the_papers_larger_minimum_image() -> None:
    assert paper_min_image_tokens("OCRBench") == 100 and paper_min_image_tokens("ocrbench_v2") == 100
    assert paper_min_image_tokens("HRBench4K") is None
    spec = load_registry().get("thyme-7b")
    options = EngineOptions.from_spec(spec, image_min_tokens=100)
    assert options.token_limits == (100, spec.image_max_tokens)  # 78,400 px at 28 px per token


def test_settings_section_says_what_differs() -> None:
    same = "\n".join(settings_markdown({**PAPER, "benchmark": "OCRBench", "min_image_tokens": 100}))
    assert "All settings are those of the paper's evaluation." in same
    off = "\n".join(settings_markdown({**PAPER, "benchmark": "OCRBench", "min_image_tokens": None,
                                       "temperature": 0.7, "max_turns": 3}))
    assert "| image tokens (min) | model default (differs) |" in off
    assert "| temperature | 0.7 (differs) |" in off and "| code steps per question | 3 (differs) |" in off
    assert "differ from the paper's evaluation: code steps per question, temperature, image tokens (min)." in off


def test_eval_of_ocrbench_records_the_papers_settings(run_thyme: RunThyme, tmp_path: Path, sandbox_backend: str) -> None:
    bench = tmp_path / "OCRBench.tsv"
    write_synthetic_tsv(bench, per_category=1)
    script = tmp_path / "s.json"
    script.write_text(json.dumps(["<answer>B</answer>"]))
    result = run_thyme("eval", str(bench), "--script", str(script), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    work = tmp_path / "OCRBench.tools.eval"
    settings = json.loads((work / "meta.json").read_text())["settings"]
    assert settings["min_image_tokens"] == 100 and settings["on_error"] == "retry"
    assert "All settings are those of the paper's evaluation." in (work / "report.md").read_text()
