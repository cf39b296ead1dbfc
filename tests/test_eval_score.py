"""Scoring and reports on hand-made result lines: every count is known in advance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from thyme_cli.eval.items import EvalItem
from thyme_cli.eval.plot import plot_runs
from thyme_cli.eval.report import comparison_rows, flips, html_report, markdown, paper_reference
from thyme_cli.eval.score import score_run
from thyme_cli.eval.store import read_results, side_table_from_items

OPTS = {"A": "red", "B": "blue", "C": "green", "D": "black"}


def _items() -> list[EvalItem]:
    spec = [
        ("1", "B", "color", "fine"),
        ("2", "C", "color", "fine"),
        ("3", "A", "color", "coarse"),
        ("4", "D", "size", "coarse"),
        ("5", "A", "size", "coarse"),
        ("6", "B", "size", None),
        ("7", None, "size", None),
    ]  # 7: no expected answer (a test split)
    return [EvalItem(i, "", f"q{i}", OPTS, a, c, l2) for i, a, c, l2 in spec]


def _record(
    item_id: str,
    answer: str | None,
    *,
    steps: list[dict[str, Any]] | None = None,
    error: str | None = None,
    seconds: float = 1.0,
    model: str = "m",
) -> dict[str, Any]:
    return {
        "id": item_id,
        "answer": answer,
        "steps": steps or [],
        "error": error,
        "model": model,
        "stop_reason": "error" if error else "answered",
        "timings": {"item_s": seconds, "model_s": seconds / 2, "sandbox_s": 0.1 * len(steps or [])},
    }


OK_STEP: dict[str, Any] = {"code": "x", "error": None, "timed_out": False, "images": ["images/a.png"]}
BAD_STEP: dict[str, Any] = {"code": "y", "error": "NameError", "timed_out": False, "images": []}
SLOW_STEP: dict[str, Any] = {"code": "z", "error": None, "timed_out": True, "images": []}


def _tools_run() -> list[dict[str, Any]]:
    return [
        _record("1", "<answer>B</answer>", steps=[OK_STEP], seconds=2.0),  # right
        _record("2", "The answer is (C).", steps=[BAD_STEP, OK_STEP], seconds=4.0),  # right, one failed step
        _record("3", "A or B", seconds=1.0),  # ambiguous: wrong, no choice
        _record("4", None, error="engine crashed", seconds=0.5),  # failed: wrong
        _record("5", "red", steps=[SLOW_STEP], seconds=3.0),  # right, by the option's text
        _record("1", "<answer>C</answer>"),  # duplicate id (overlapping shards): ignored
        _record("99", "A"),  # not in the benchmark: ignored
        _record("7", "B"),  # no expected answer: done but not scored
    ]  # item 6 was not run (pending)


def _side(tools: bool = True) -> Any:
    return side_table_from_items(_items(), {"benchmark_name": "HRBench4K", "tools": tools})


def test_accuracy_categories_failures_and_coverage() -> None:
    run = score_run(_tools_run(), _side())
    assert (run.overall.correct, run.overall.scored) == (3, 5)
    assert run.overall.accuracy == pytest.approx(60.0)
    assert run.done == 6 and run.total == 7 and run.pending == 1
    assert run.failed == 1 and run.no_choice == 1 and run.unscored == 1 and run.unknown_ids == 1
    groups = {g.name: (g.correct, g.scored) for g in run.categories}
    assert groups == {"color": (2, 3), "size": (1, 2)}
    assert {g.name: (g.correct, g.scored) for g in run.l2_categories} == {"fine": (2, 2), "coarse": (1, 3)}
    assert run.macro == pytest.approx((200 / 3 + 50) / 2)
    assert run.label == "m (tools)" and run.models == ["m"]
    rules = {i.id: i.rule for i in run.items}
    assert rules == {"1": "letter", "2": "declared", "3": "ambiguous", "4": "failed", "5": "text", "7": "letter"}


def test_tool_use_and_timings() -> None:
    run = score_run(_tools_run(), _side())
    assert run.with_code == 3 and run.steps == 4 and run.step_errors == 2
    assert run.code_share == pytest.approx(50.0) and run.steps_per_item == pytest.approx(4 / 6)
    assert run.sandbox_error_rate == pytest.approx(50.0)
    timing = run.timing()
    assert timing["total_s"] == pytest.approx(11.5) and timing["median_s"] == pytest.approx(1.5)
    assert timing["model_s"] == pytest.approx(5.75) and timing["p90_s"] == pytest.approx(4.0)
    summary = run.to_dict()
    assert summary["accuracy"] == 60.0 and summary["tool_use"]["sandbox_error_rate"] == 50.0
    assert summary["stop_reasons"] == {"answered": 5, "error": 1}


def test_open_questions_are_scored_by_words() -> None:
    items = [EvalItem("1", "", "what is written?", {}, "STOP"), EvalItem("2", "", "and here?", {}, "exit")]
    side = side_table_from_items(items, {"benchmark_name": "signs", "tools": True})
    run = score_run([_record("1", "<answer>It says stop.</answer>"), _record("2", "entrance")], side)
    assert (run.overall.correct, run.overall.scored) == (1, 2) and run.categories == []


def _no_tools_run() -> list[dict[str, Any]]:
    return [
        _record(i, a, seconds=0.5)
        for i, a in [("1", "B"), ("2", "A"), ("3", "A"), ("4", "D"), ("5", "blue"), ("6", "B"), ("7", "A")]
    ]


def test_comparison_rows_flips_and_formats(tmp_path: Path) -> None:
    tools = score_run(_tools_run(), _side(True))
    plain = score_run(_no_tools_run(), _side(False))
    assert plain.label == "m (no tools)" and (plain.overall.correct, plain.overall.scored) == (4, 6)
    rows = {r.name: r.cells for r in comparison_rows([tools, plain])}
    assert rows["accuracy"] == ["60.0 (3/5)", "66.7 (4/6)"]
    assert rows["color"] == ["66.7 (2/3)", "66.7 (2/3)"] and rows["size"] == ["50.0 (1/2)", "66.7 (2/3)"]
    assert rows["items with code (%)"] == ["50.0", "0.0"] and rows["sandbox errors (% of steps)"] == ["50.0", "–"]
    assert flips(tools, plain) == {
        "common": 5,
        "both right": 1,
        "only first right": 2,
        "only second right": 2,
        "both wrong": 0,
    }
    png = plot_runs([tools, plain], tmp_path / "plot.png", "HRBench4K")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    md = markdown([tools, plain], "HRBench4K", "plot.png")
    assert "| **accuracy** | 60.0 (3/5) | 66.7 (4/6) | +6.7 |" in md
    assert "| size | 50.0 (1/2) | 66.7 (2/3) | +16.7 |" in md
    assert (
        "both right 1, only m (tools) right 2, only m (no tools) right 2" in md
        and "![accuracy per category](plot.png)" in md
    )
    assert "paper (Thyme-7B, bf16, tools) on HRBench4K: 77.0" in md
    assert "1 of 7 items not run yet" in md
    page = html_report([tools, plain], "HRBench4K", png)
    assert "<td>66.7 (4/6)</td>" in page and "data:image/png;base64,iVBOR" in page


def test_paper_reference_names() -> None:
    assert paper_reference("hr_bench_4k") == 77.0 and paper_reference("HRBench8K") == 72.0
    assert paper_reference("V_star") == paper_reference("vstar_bench") == paper_reference("V*") == 82.2
    assert paper_reference("MME-RealWorld") == 64.8 and paper_reference("synth") is None
    assert paper_reference("MME-RealWorld-Lite") is None and paper_reference("MME-RealWorld-CN") is None


def test_results_file_torn_tail_is_skipped_other_damage_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": "1", "answer": "A"}\n{"id": "2", "ans')
    assert [r["id"] for r in read_results(path)] == ["1"]
    path.write_text('{"id": "1"}\nnot json\n{"id": "2"}\n')
    with pytest.raises(Exception, match=r"r.jsonl:2: not a JSON line"):
        read_results(path)
