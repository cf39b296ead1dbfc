"""`thyme eval` end to end: the real CLI, batch machinery and sandbox, a synthetic TSV, scripted models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import pytest

from tests.conftest import RunThyme
from thyme_cli.eval.synth import SynthItem, write_synthetic_tsv

CROP = (
    "<think>The text is tiny; zoom in.</think><code>\n```python\nimg = Image.open(image_path)\n"
    "img.crop((0, 0, 400, 300)).save('/mnt/data/temp_processed_images/c.png')\n"
    "print('/mnt/data/temp_processed_images/c.png')\n```\n</code>"
)


def _fixed_letters(category: str, i: int) -> str:
    """word: B, B, B, then C (the shared-image row); number: B, A, A."""
    if category == "word":
        return "C" if i == 3 else "B"
    return "B" if i == 0 else "A"


@pytest.fixture
def bench(tmp_path: Path) -> tuple[Path, list[SynthItem]]:
    path = tmp_path / "synth.tsv"
    return path, write_synthetic_tsv(path, per_category=3, letter_for=_fixed_letters)


def _script(tmp_path: Path, name: str, replies: list[str] | dict[str, Any]) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(replies))
    return path


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_eval_file_runs_every_item_and_scores_per_category(
    run_thyme: RunThyme, tmp_path: Path, bench: tuple[Path, list[SynthItem]], sandbox_backend: str
) -> None:
    path, truth = bench
    script = _script(tmp_path, "b.json", [CROP, "<think>It reads clearly now.</think><answer>B</answer>"])
    result = run_thyme("eval", str(path), "--script", str(script), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # Always "B": right on 3 of 4 word rows and 1 of 3 number rows.
    for cell in ("57.1 (4/7)", "75.0 (3/4)", "33.3 (1/3)", "items with code (%)", "100.0"):
        assert cell in result.stdout
    results = tmp_path / "synth.tools.jsonl"
    records = _lines(results)
    assert [r["id"] for r in records] == [t.index for t in truth]
    first = records[0]
    assert first["question"].startswith("Question: Which word is written") and "\nA. " in first["question"]
    assert first["question"].endswith("Please select the correct answer from the options above.")
    assert first["expected"] == "B" and first["steps"][0]["images"] == ["images/step1-c.png"]
    work = tmp_path / "synth.tools.eval"
    summary = json.loads((work / "summary.json").read_text())
    assert summary["accuracy"] == 57.1 and summary["done"] == summary["items"] == 7
    assert {c["name"]: c["accuracy"] for c in summary["categories"]} == {"word": 75.0, "number": 33.3}
    assert summary["tool_use"]["code_share"] == 100.0 and summary["tool_use"]["steps_per_item"] == 1.0
    assert summary["tools"] is True and summary["failed"] == 0
    # run with the paper's evaluation settings unless told otherwise, and say so in the report
    settings = json.loads((work / "meta.json").read_text())["settings"]
    assert settings == {
        "benchmark": "synth",
        "tools": True,
        "max_turns": 5,
        "max_tokens": 2048,
        "temperature": 0.0,
        "on_error": "retry",
        "max_image_tokens": 16384,
        "min_image_tokens": 4,
        "ctx": 44032,
    }
    assert "All settings are those of the paper's evaluation." in (work / "report.md").read_text()
    scored = _lines(work / "scored.jsonl")
    assert [s["correct"] for s in scored] == [t.answer == "B" for t in truth]
    assert "| **accuracy** | 57.1 (4/7) |" in (work / "report.md").read_text()
    assert "Traceback" not in result.stderr


def test_no_tools_ablation_then_compare_writes_markdown_html_and_a_plot(
    run_thyme: RunThyme, tmp_path: Path, bench: tuple[Path, list[SynthItem]], sandbox_backend: str
) -> None:
    path, _ = bench
    tools = _script(tmp_path, "t.json", [CROP, "<answer>The answer is (B).</answer>"])
    plain = _script(tmp_path, "p.json", ["<think>Too small to read; guessing.</think><answer>A</answer>"])
    assert run_thyme("eval", "run", str(path), "--script", str(tools), cwd=tmp_path).returncode == 0
    result = run_thyme("eval", str(path), "--no-tools", "--script", str(plain), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "28.6 (2/7)" in result.stdout  # "A" is right on two number rows only
    records = _lines(tmp_path / "synth.no-tools.jsonl")
    assert all(r["steps"] == [] and r["answer"] == "A" for r in records)
    trace = json.loads((tmp_path / records[0]["run_dir"] / "trace.json").read_text())
    assert trace["sandbox"] == "none" and len(trace["turns"]) == 1  # no code could run, so no jail was needed

    result = run_thyme("eval", "compare", "synth.tools.jsonl", "synth.no-tools.jsonl", "-o", "cmp.md", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    md = (tmp_path / "cmp.md").read_text()
    assert "| **accuracy** | 57.1 (4/7) | 28.6 (2/7) | -28.6 |" in md
    assert "| word | 75.0 (3/4) | 0.0 (0/4) | -75.0 |" in md and "| number | 33.3 (1/3) | 66.7 (2/3) | +33.3 |" in md
    assert "| items with code (%) | 100.0 | 0.0 |" in md and "![accuracy per category](cmp.png)" in md
    assert "both right 0, only scripted (tools) right 4, only scripted (no tools) right 2, both wrong 1" in md
    assert (tmp_path / "cmp.png").read_bytes()[:4] == b"\x89PNG"
    assert "scripted (tools)" in result.stdout and "-28.6" in result.stdout

    result = run_thyme(
        "eval",
        "compare",
        "synth.tools.jsonl",
        "synth.no-tools.jsonl",
        "-o",
        "out/cmp.html",
        "--label",
        "Thyme",
        "--label",
        "direct",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "out" / "cmp.html").read_text()
    assert "<th>Thyme</th><th>direct</th>" in page and "data:image/png;base64," in page


def test_shards_merge_and_resume_continues(
    run_thyme: RunThyme, tmp_path: Path, bench: tuple[Path, list[SynthItem]], sandbox_backend: str
) -> None:
    path, _ = bench
    script = _script(tmp_path, "b.json", ["<answer>B</answer>"])
    for shard in ("1/2", "2/2"):
        result = run_thyme("eval", str(path), "--script", str(script), "--shard", shard, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    parts = sorted(tmp_path.glob("synth.tools.shard*of2.jsonl"))
    assert len(parts) == 2 and sum(len(_lines(p)) for p in parts) == 7
    for part in parts:  # each shard decodes only its own images and reports its own items as the total
        done = len(_lines(part))
        assert 0 < len(list((part.with_suffix(".eval") / "images").iterdir())) < 7
        summary = json.loads((part.with_suffix(".eval") / "summary.json").read_text())
        assert summary["items"] == summary["done"] == done and summary["pending"] == 0
    result = run_thyme("eval", "report", *map(str, parts), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    merged = json.loads(result.stdout)
    assert merged["done"] == 7 and merged["correct"] == 4 and merged["accuracy"] == 57.1

    out = tmp_path / "r.jsonl"
    assert run_thyme("eval", str(path), "--script", str(script), "--limit", "3", "-o", str(out)).returncode == 0
    assert len(_lines(out)) == 3
    again = run_thyme("eval", str(path), "--script", str(script), "-o", str(out))
    assert again.returncode == 2 and "already exists" in again.stderr and "--resume" in again.stderr
    other_mode = run_thyme("eval", str(path), "--no-tools", "--script", str(script), "-o", str(out), "--resume")
    assert other_mode.returncode == 2 and "was run with tools" in other_mode.stderr
    result = run_thyme("eval", str(path), "--script", str(script), "-o", str(out), "--resume", "-j", "2")
    assert result.returncode == 0, result.stderr
    assert "done earlier (skipped)" in result.stderr and "57.1 (4/7)" in result.stdout
    ids = [r["id"] for r in _lines(out)]
    assert sorted(ids, key=int) == [str(i) for i in range(1, 8)] and len(ids) == len(set(ids))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("index,image,question\n1,x,q\n", "not a TSV file"),
        ("index\timage\tanswer\n1\tx\tA\n", "missing column(s) question"),
        ("index\timage\tquestion\tA\tB\tanswer\n1\t" + "%" * 90 + "\tq\tx\ty\tA\n", "not valid base64"),
        ("index\timage\tquestion\tA\tB\tanswer\n1\t1\tq\tx\ty\tC\n", "the answer 'C' is not one of the options A, B"),
    ],
    ids=["not-tsv", "missing-columns", "broken-base64", "unknown-letter"],
)
def test_bad_benchmarks_exit_2_with_one_line(run_thyme: RunThyme, tmp_path: Path, content: str, message: str) -> None:
    bad = tmp_path / "bad.tsv"
    bad.write_text(content)
    result = run_thyme("eval", str(bad), "--script", str(_script(tmp_path, "s.json", ["B"])), cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2 and not (tmp_path / "bad.tools.jsonl").exists()


def test_report_and_compare_refuse_bad_inputs(run_thyme: RunThyme, tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"id": "1", "answer": "B"}\n')
    result = run_thyme("eval", "report", str(tmp_path / "a.jsonl"))
    assert result.returncode == 2 and "no eval data next to it" in result.stderr and "--benchmark" in result.stderr
    result = run_thyme("eval", "compare", str(tmp_path / "a.jsonl"))
    assert result.returncode == 2 and "at least two" in result.stderr
    result = run_thyme("eval", "compare", str(tmp_path / "a.jsonl"), str(tmp_path / "a.jsonl"), "-o", "x.pdf")
    assert result.returncode == 2 and "must end in .md or .html" in result.stderr


def test_report_against_a_benchmark_for_concatenated_results(
    run_thyme: RunThyme, tmp_path: Path, bench: tuple[Path, list[SynthItem]]
) -> None:
    path, truth = bench
    lines: list[dict[str, Any]] = [
        {
            "id": t.index,
            "answer": f"<answer>{t.answer}</answer>" if t.category == "word" else "no idea",
            "steps": [],
            "error": None,
            "model": "elsewhere",
            "timings": {"item_s": 1.0},
        }
        for t in truth
    ]
    (tmp_path / "all.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    result = run_thyme(
        "eval", "report", str(tmp_path / "all.jsonl"), "--benchmark", str(path), "-o", str(tmp_path / "rep.md")
    )
    assert result.returncode == 0, result.stderr
    assert "57.1 (4/7)" in result.stdout and "elsewhere" in result.stdout and "(tools)" not in result.stdout
    assert "| number | 0.0 (0/3) |" in (tmp_path / "rep.md").read_text()


def test_eval_run_mirrors_every_batch_option() -> None:
    import typer

    from thyme_cli.cli import app

    group = typer.main.get_command(app)
    batch_opts = {o for p in group.commands["batch"].params for o in p.opts}  # type: ignore[attr-defined]
    run_opts = {o for p in group.commands["eval"].commands["run"].params for o in p.opts}  # type: ignore[attr-defined]
    assert batch_opts - run_opts == {"--question", "-q", "inputs"}
    assert {"--no-tools", "--limit"} <= run_opts
    assert set(group.commands["eval"].commands) == {"run", "report", "compare"}  # type: ignore[attr-defined]


def test_help_works_for_the_group_and_each_command(run_thyme: RunThyme) -> None:
    for args in (["eval"], ["eval", "--help"], ["eval", "run", "--help"], ["eval", "compare", "-h"]):
        result = run_thyme(*args)
        assert "Usage" in result.stdout, args
    assert "thyme eval FILE" in run_thyme("eval", "--help").stdout


# ---- per-item answers: a routed script (different replies per question) ----------------------


@pytest.fixture
def routed_engines(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Records the engines the real runner.load_model builds, so a test can read what each model saw."""
    import thyme_cli.models.loading as runner

    original = runner.load_model
    engines: list[Any] = []

    def recording(*args: Any, **kwargs: Any) -> Any:
        loaded = original(*args, **kwargs)
        engines.append(loaded.engine)
        return loaded

    monkeypatch.setattr(runner, "load_model", recording)
    return engines


def _options_block(item: SynthItem) -> str:
    return "Options:\n" + "\n".join(f"{k}. {v}" for k, v in item.options.items())


def _zoom(item: SynthItem) -> str:
    left, top, right, bottom = item.box
    return (
        "<think>Find the small text and zoom in.</think><code>\n```python\nimg = Image.open(image_path)\n"
        f"crop = img.crop(({left - 30}, {top - 20}, {right + 30}, {bottom + 20}))\n"
        "crop = crop.resize((crop.width * 4, crop.height * 4))\n"
        "crop.save('/mnt/data/temp_processed_images/zoom.png')\n"
        "print('/mnt/data/temp_processed_images/zoom.png')\n```\n</code>"
    )


def _invoke(args: list[str], cwd: Path) -> Any:
    import os

    from typer.testing import CliRunner

    from thyme_cli.cli import app

    old = Path.cwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(app, args)
    finally:
        os.chdir(old)


def test_routed_model_zooms_per_item_and_tools_beat_direct_answers(
    tmp_path: Path, sandbox_backend: str, routed_engines: list[Any]
) -> None:
    path = tmp_path / "synth.tsv"
    truth = write_synthetic_tsv(path, per_category=3, seed=7)
    words = [t for t in truth if t.category == "word"]
    n1, n2, n3 = (t for t in truth if t.category == "number")
    phrasings = [
        "<answer>{L}</answer>",
        "<answer>The answer is ({L}).</answer>",
        "<answer>{T}</answer>",
        "<answer>{L}. {T}</answer>",
    ]
    routes = [
        {"match": _options_block(t), "replies": [_zoom(t), phrasings[i].format(L=t.answer, T=t.truth)]}
        for i, t in enumerate(words)
    ]
    wrong = next(k for k in n2.options if k != n2.answer)
    routes += [
        {"match": _options_block(n1), "replies": [_zoom(n1), f"<answer>Answer: {n1.answer.lower()}</answer>"]},
        {"match": _options_block(n2), "replies": ["<code>print(undefined_name)</code>", f"<answer>{wrong}</answer>"]},
        {"match": _options_block(n3), "replies": ["<answer>A or B</answer>"]},
    ]
    tools = _script(tmp_path, "routes.json", {"routes": routes})
    # --on-error show: this run checks how a failed step that the model saw is counted (the
    # default, as in the paper's evaluation, discards it and regenerates)
    result = _invoke(["eval", str(path), "--script", str(tools), "--on-error", "show"], tmp_path)
    assert result.exit_code == 0, result.output
    report = (tmp_path / "synth.tools.eval" / "report.md").read_text()
    assert "## Settings" in report and "| failed code step | show (differs) |" in report
    assert "| code steps per question | 5 | 5 (max_iterations) |" in report
    summary = json.loads((tmp_path / "synth.tools.eval" / "summary.json").read_text())
    assert (summary["correct"], summary["scored"]) == (5, 7)
    assert {c["name"]: (c["correct"], c["scored"]) for c in summary["categories"]} == {"word": (4, 4), "number": (1, 3)}
    assert summary["no_choice"] == 1 and summary["tool_use"]["items_with_code"] == 6
    assert summary["tool_use"]["step_errors"] == 1 and summary["tool_use"]["sandbox_error_rate"] == 16.7
    rules = {s["id"]: s["rule"] for s in _lines(tmp_path / "synth.tools.eval" / "scored.jsonl")}
    assert [rules[t.index] for t in words] == ["letter", "declared", "text", "label"]
    assert rules[n3.index] == "ambiguous"
    # The zoom really ran on the decoded benchmark image: the crop holds the small dark text.
    record = next(r for r in _lines(tmp_path / "synth.tools.jsonl") if r["id"] == words[0].index)
    from PIL import Image

    with Image.open(tmp_path / record["run_dir"] / record["steps"][0]["images"][0]) as crop:
        darkest, _ = cast(tuple[int, int], crop.convert("L").getextrema())
        assert crop.size[0] > 4 * (words[0].box[2] - words[0].box[0]) and darkest < 80
    tools_engine = routed_engines[-1]
    assert all("<code>" in c.fed[0].text for c in tools_engine.conversations)

    # Without tools the same "model" cannot read the words (it picks a wrong option) but reads the numbers.
    direct = [
        {
            "match": _options_block(t),
            "replies": [
                f"<answer>{next(k for k in t.options if k != t.answer) if t.category == 'word' else t.answer}</answer>"
            ],
        }
        for t in truth
    ]
    plain = _script(tmp_path, "plain.json", {"routes": direct})
    result = _invoke(["eval", str(path), "--no-tools", "--script", str(plain)], tmp_path)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "synth.no-tools.eval" / "summary.json").read_text())
    assert (summary["correct"], summary["scored"]) == (3, 7) and summary["tool_use"]["items_with_code"] == 0
    for conversation in routed_engines[-1].conversations:
        system, user = conversation.fed[0], conversation.fed[1]
        assert system.text == "You are a helpful assistant." and "<code>" not in user.text
        assert "Please select the correct answer from the options above." in user.text

    result = _invoke(["eval", "compare", "synth.tools.jsonl", "synth.no-tools.jsonl"], tmp_path)
    assert result.exit_code == 0, result.output
    md = (tmp_path / "compare.md").read_text()
    assert "| **accuracy** | 71.4 (5/7) | 42.9 (3/7) | -28.6 |" in md
    assert "| word | 100.0 (4/4) | 0.0 (0/4) | -100.0 |" in md
