"""Reports: one run (terminal + Markdown) and side-by-side comparisons (terminal, Markdown, HTML).

The same rows feed every format, so the terminal table, report.md and the HTML agree. Numbers are
percentages with one decimal, with the counts next to them so small samples are visible.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from thyme_cli.eval.score import Group, RunScore

if TYPE_CHECKING:
    from rich.console import Console

# The paper's Thyme-7B numbers (arXiv 2508.11630, main table), shown next to a matching benchmark.
PAPER = {"v*": 82.2, "vstar": 82.2, "hrbench4k": 77.0, "hrbench8k": 72.0, "mmerealworld": 64.8}


def paper_reference(benchmark: str) -> float | None:
    key = "".join(ch for ch in benchmark.lower() if ch.isalnum() or ch == "*")
    if "lite" in key or key.endswith("cn"):  # subsets and translations have other numbers
        return None
    return next((value for name, value in PAPER.items() if key.startswith(name)), None)


def pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def acc_cell(group: Group | None) -> str:
    if group is None or group.accuracy is None:
        return "–"
    return f"{group.accuracy:.1f} ({group.correct}/{group.scored})"


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}" if value < 10 else f"{value:.1f}"


@dataclass
class Row:
    name: str
    cells: list[str]
    section: str = ""
    values: list[float | None] | None = None  # unrounded accuracies, for the difference column


def comparison_rows(runs: list[RunScore]) -> list[Row]:
    """The rows of a side-by-side table: accuracy, per category, answers, tool use, time."""
    rows = [
        _acc_row("accuracy", [r.overall for r in runs], "accuracy"),
        Row("mean over categories", [pct(r.macro) for r in runs], "accuracy", [r.macro for r in runs]),
    ]
    for name in _ordered({g.name for r in runs for g in r.categories}, runs, "categories"):
        rows.append(_acc_row(name, [_group(r.categories, name) for r in runs], "category"))
    for name in _ordered({g.name for r in runs for g in r.l2_categories}, runs, "l2_categories"):
        rows.append(_acc_row(name, [_group(r.l2_categories, name) for r in runs], "sub-category"))
    rows += [
        Row("items done / total", [f"{r.done}/{r.total}" for r in runs], "answers"),
        Row("no option picked", [str(r.no_choice) for r in runs], "answers"),
        Row("failed items", [str(r.failed) for r in runs], "answers"),
        Row("items with code (%)", [pct(r.code_share) for r in runs], "tool use"),
        Row(
            "code steps per item",
            [_seconds(r.steps_per_item) if r.steps_per_item is None else f"{r.steps_per_item:.2f}" for r in runs],
            "tool use",
        ),
        Row("sandbox errors (% of steps)", [pct(r.sandbox_error_rate) for r in runs], "tool use"),
        Row("median s / item", [_seconds(r.timing().get("median_s")) for r in runs], "time"),
        Row("mean s / item", [_seconds(r.timing().get("mean_s")) for r in runs], "time"),
        Row("  of which model", [_seconds(r.model_s / r.done if r.done else None) for r in runs], "time"),
        Row("  of which sandbox", [_seconds(r.sandbox_s / r.done if r.done else None) for r in runs], "time"),
        Row("total item time (s)", [_seconds(r.timing().get("total_s")) for r in runs], "time"),
    ]
    return rows


def _acc_row(name: str, groups: list[Group | None], section: str) -> Row:
    return Row(name, [acc_cell(g) for g in groups], section, [g.accuracy if g else None for g in groups])


def _ordered(names: set[str], runs: list[RunScore], attr: str) -> list[str]:
    order: list[str] = []
    for run in runs:
        order += [g.name for g in getattr(run, attr) if g.name in names and g.name not in order]
    return order


def _group(groups: list[Group], name: str) -> Group | None:
    return next((g for g in groups if g.name == name), None)


def flips(a: RunScore, b: RunScore) -> dict[str, int]:
    """Item-level agreement of two runs on the items both scored."""
    right_a = {i.id: i.correct for i in a.items if i.expected is not None}
    right_b = {i.id: i.correct for i in b.items if i.expected is not None}
    common = right_a.keys() & right_b.keys()
    return {
        "common": len(common),
        "both right": sum(right_a[i] and right_b[i] for i in common),
        "only first right": sum(right_a[i] and not right_b[i] for i in common),
        "only second right": sum(right_b[i] and not right_a[i] for i in common),
        "both wrong": sum(not right_a[i] and not right_b[i] for i in common),
    }


def _notes(run: RunScore) -> list[str]:
    notes = []
    if run.pending:
        notes.append(
            f"{run.label}: {run.pending} of {run.total} items not run yet; accuracy covers the {run.done} done"
        )
    if len(run.models) > 1:
        notes.append(f"{run.label}: results come from several models ({', '.join(run.models)})")
    if run.unknown_ids:
        notes.append(f"{run.label}: {run.unknown_ids} result line(s) with ids not in the benchmark were ignored")
    if run.unscored:
        notes.append(f"{run.label}: {run.unscored} item(s) have no expected answer and are not scored")
    reference = paper_reference(run.benchmark)
    if reference is not None:
        notes.append(f"paper (Thyme-7B, bf16, tools) on {run.benchmark}: {reference:.1f}")
    return notes


# ---- terminal ---------------------------------------------------------------------------------


def print_runs(runs: list[RunScore], console: Console, title: str) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("")
    for run in runs:
        table.add_column(run.label, justify="right")
    if len(runs) == 2:
        table.add_column("Δ", justify="right")
    section = ""
    for row in comparison_rows(runs):
        if row.section != section and section:
            table.add_section()
        section = row.section
        extra = [_delta(row, runs)] if len(runs) == 2 else []
        table.add_row(row.name, *row.cells, *extra)
    console.print(table)
    for note in [n for run in runs for n in _notes(run)]:
        console.print(note, markup=False, highlight=False)


def _delta(row: Row, runs: list[RunScore]) -> str:
    """The second run minus the first, in points (accuracy rows only)."""
    if row.values is None or len(row.values) != 2:
        return ""
    a, b = row.values
    return "" if a is None or b is None else f"{b - a:+.1f}"


# ---- Markdown and HTML ----------------------------------------------------------------------


def markdown(runs: list[RunScore], title: str, plot: str | None = None) -> str:
    heads = ["", *[r.label for r in runs], *(["Δ"] if len(runs) == 2 else [])]
    lines = [
        f"# {title}",
        "",
        "| " + " | ".join(_md(h) for h in heads) + " |",
        "|" + "---|" + "---:|" * (len(heads) - 1),
    ]
    for row in comparison_rows(runs):
        extra = [_delta(row, runs)] if len(runs) == 2 else []
        name = f"**{row.name}**" if row.section == "accuracy" else _md(row.name)
        lines.append("| " + " | ".join([name, *[_md(c) for c in row.cells], *extra]) + " |")
    if len(runs) == 2:
        f = flips(*runs)
        lines += [
            "",
            f"Per item ({f['common']} scored by both): both right {f['both right']}, only "
            f"{_md(runs[0].label)} right {f['only first right']}, only {_md(runs[1].label)} right "
            f"{f['only second right']}, both wrong {f['both wrong']}.",
        ]
    notes = [n for run in runs for n in _notes(run)]
    if notes:
        lines += ["", *[f"- {_md(n)}" for n in notes]]
    if plot:
        lines += ["", f"![accuracy per category]({plot})"]
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def html_report(runs: list[RunScore], title: str, plot_png: Path | None = None) -> str:
    """A self-contained HTML page (the plot is inlined)."""
    esc = html.escape
    heads = ["", *[r.label for r in runs], *(["Δ"] if len(runs) == 2 else [])]
    out = [
        "<!doctype html>",
        "<meta charset='utf-8'>",
        f"<title>{esc(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 10px;border-bottom:1px solid #ddd}"
        "td:not(:first-child),th:not(:first-child){text-align:right}</style>",
        f"<h1>{esc(title)}</h1>",
        "<table>",
        "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in heads) + "</tr>",
    ]
    for row in comparison_rows(runs):
        extra = [_delta(row, runs)] if len(runs) == 2 else []
        out.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in [row.name, *row.cells, *extra]) + "</tr>")
    out.append("</table>")
    if len(runs) == 2:
        f = flips(*runs)
        out.append(
            f"<p>Per item ({f['common']} scored by both): both right {f['both right']}, only "
            f"{esc(runs[0].label)} right {f['only first right']}, only {esc(runs[1].label)} right "
            f"{f['only second right']}, both wrong {f['both wrong']}.</p>"
        )
    notes = [n for run in runs for n in _notes(run)]
    if notes:
        out.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    if plot_png is not None:
        data = base64.b64encode(plot_png.read_bytes()).decode()
        out.append(f"<img alt='accuracy per category' src='data:image/png;base64,{data}'>")
    return "\n".join(out) + "\n"
