"""Results files scored and written out: the run's own report after `thyme eval run`, and the runs
that `eval report` / `eval compare` read back (shards merged, scored against their side table)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from thyme_cli.errors import UsageError

if TYPE_CHECKING:
    from thyme_cli.eval.items import EvalItem
    from thyme_cli.eval.score import RunScore
    from thyme_cli.eval.store import EvalPaths, SideTable


def benchmark_name(path: Path) -> str:
    """The name a benchmark is known by in reports (and the paper's settings): its file's stem."""
    return path.stem


def benchmark_meta(benchmark: Path, items: list[EvalItem]) -> dict[str, Any]:
    """What identifies the benchmark in a side table: its file, name and the fingerprint of its items."""
    from thyme_cli.eval.items import fingerprint

    return {
        "benchmark": str(benchmark.resolve()),
        "benchmark_name": benchmark_name(benchmark),
        "fingerprint": fingerprint(items),
    }


def score_and_save(paths: EvalPaths) -> RunScore:
    """Score a finished run and write its per-item rows, summary and Markdown report next to it."""
    from thyme_cli.eval.paper import settings_markdown
    from thyme_cli.eval.report import markdown
    from thyme_cli.eval.score import item_rows, score_run
    from thyme_cli.eval.store import read_results, read_side_table, write_json, write_lines

    side = read_side_table(paths)
    run_score = score_run(read_results(paths.results), side)
    write_lines(paths.scored, item_rows(run_score))
    write_json(paths.summary, run_score.to_dict())
    report = markdown([run_score], f"thyme eval: {run_score.benchmark}")
    settings = side.meta.get("settings")
    if isinstance(settings, dict):
        report += "\n".join(settings_markdown(settings)) + "\n"
    paths.report.write_text(report, encoding="utf-8")
    return run_score


def load_run(results: list[Path], benchmark: Path | None, label: str | None) -> RunScore:
    """One run from one or more results files (shards); scored against their side table or --benchmark."""
    from thyme_cli.eval.score import score_run
    from thyme_cli.eval.store import EvalPaths, read_results

    side = _side_table(EvalPaths(results[0]), benchmark)
    records: list[dict[str, Any]] = []
    for path in results:
        if benchmark is None and path != results[0]:
            other = _side_table(EvalPaths(path), None)
            if other.meta.get("benchmark_name") != side.meta.get("benchmark_name"):
                raise UsageError(f"{path} and {results[0]} are results of different benchmarks")
            side.items.update(other.items)  # shards run with different --limit still merge
        records += read_results(path)
    if len(results) > 1:
        side.meta["shard"] = None  # merged shards: coverage is counted against the whole benchmark
    return score_run(records, side, label)


def _side_table(paths: EvalPaths, benchmark: Path | None) -> SideTable:
    """The run's own side table, or one made from --benchmark (for results without their .eval/)."""
    from thyme_cli.eval.load import load_benchmark
    from thyme_cli.eval.store import read_side_table, side_table_from_items

    if benchmark is None:
        return read_side_table(paths)
    items: list[EvalItem] = load_benchmark(benchmark, paths.images, wanted=lambda _id: False)
    tools = read_side_table(paths).meta.get("tools") if paths.meta.is_file() else None
    return side_table_from_items(items, {**benchmark_meta(benchmark, items), "tools": tools})


def unique_labels(runs: list[RunScore], results: list[Path]) -> None:
    """Runs that share a label get their results file's name added, so a comparison tells them apart."""
    labels = [r.label for r in runs]
    for run, path in zip(runs, results, strict=True):
        if labels.count(run.label) > 1:
            run.label = f"{run.label} [{path.stem}]"


def write_report(runs: list[RunScore], path: Path, title: str, plot: Path | None) -> None:
    """The report as Markdown (the plot linked beside it) or self-contained HTML, by path's suffix."""
    import os

    from thyme_cli.eval.report import html_report, markdown

    if path.suffix.lower() in (".html", ".htm"):
        text = html_report(runs, title, plot)
    elif path.suffix.lower() == ".md":
        rel = os.path.relpath(plot, path.parent) if plot is not None else None
        text = markdown(runs, title, rel)
    else:
        raise UsageError(f"{path}: the report must end in .md or .html")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
