"""`thyme eval`: benchmark accuracy with and without tools, and side-by-side comparisons.

`thyme eval FILE` is short for `thyme eval run FILE`: the group resolves a first argument that is
not a subcommand name as the benchmark of `run`. The run, its scoring and the reports are eval/'s
(eval/run.py, eval/results.py); this module parses and shows. Heavy imports stay inside the
functions so `thyme --help` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from thyme_cli.commands import flags as o
from thyme_cli.errors import UsageError
from thyme_cli.ui.console import err_console, handle_errors, info, out_console, warn

if TYPE_CHECKING:
    from thyme_cli.eval.score import RunScore

REPORT_PANEL = "Report"


class _RunByDefault(TyperGroup):
    """A group whose first argument, when it names no subcommand, is the benchmark of `run`."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # ctx: typer's own click Context
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["run", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_RunByDefault,
    no_args_is_help=True,
    help="Measure accuracy on a benchmark (VLMEvalKit TSV or JSONL), with or without tools, and compare runs.\n\n"
    "`thyme eval FILE` is short for `thyme eval run FILE`.",
)

OutputOpt = Annotated[
    Path | None,
    typer.Option(
        "--output",
        "-o",
        help="Results JSONL (default: BENCHMARK.tools.jsonl or .no-tools.jsonl here); "
        "scoring data and reports go to the .eval/ folder next to it.",
        rich_help_panel=o.OUTPUT_PANEL,
    ),
]
NoToolsOpt = Annotated[
    bool,
    typer.Option(
        "--no-tools", help="Ablation: the model answers directly and runs no code.", rich_help_panel=o.MODEL_PANEL
    ),
]
LimitOpt = Annotated[
    int | None, typer.Option("--limit", min=1, help="Only the first N items of the benchmark (a quick check).")
]
BenchmarkOpt = Annotated[
    Path | None,
    typer.Option(
        "--benchmark",
        help="Score against this benchmark file (for results without their .eval/ folder, "
        "e.g. shard files concatenated into one).",
        rich_help_panel=REPORT_PANEL,
    ),
]


# eval's own defaults: the paper's image budget and a context that holds it (eval/paper.py)
EvalCtxOpt = Annotated[
    int | None,
    typer.Option(
        "--ctx",
        min=512,
        help="Context size in tokens (default: room for the paper's image budget).",
        rich_help_panel=o.MODEL_PANEL,
    ),
]
EvalMaxImageTokensOpt = Annotated[
    int | None,
    typer.Option(
        "--max-image-tokens",
        min=4,
        help="Most vision tokens per image (default: the paper's 16384).",
        rich_help_panel=o.MODEL_PANEL,
    ),
]


@app.command("run")
@handle_errors
@o.with_run_flags(  # the paper's settings: its image budget, and failed steps discarded (eval/paper.py)
    ctx=EvalCtxOpt, max_image_tokens=EvalMaxImageTokensOpt, on_error=(o.OnErrorOpt, o.OnError.retry)
)
def run(
    benchmark: Annotated[
        Path,
        typer.Argument(
            help="A VLMEvalKit .tsv (V*, HRBench, MME-RealWorld, ...) or a .jsonl "
            "manifest (image, question, options, answer, category, id)."
        ),
    ],
    output: OutputOpt = None,
    no_tools: NoToolsOpt = False,
    limit: LimitOpt = None,
    resume: o.ResumeOpt = False,
    shard: o.ShardOpt = None,
    jobs: o.JobsOpt = 1,
    runs: o.RunsOpt = None,
    *,
    flags: o.RunFlags,
) -> None:
    """Run every benchmark item through the model and report accuracy, per category, tool use and time.

    Exit codes: 0 done, 1 some items failed (counted wrong), 2 bad usage or benchmark, 130 interrupted (--resume).
    """
    from thyme_cli.eval.run import EvalRequest, run_eval

    model_settings, question_settings = flags.settings()
    request = EvalRequest(benchmark, output, no_tools, limit, resume=resume, shard=shard, jobs=jobs, runs=runs)
    done = run_eval(
        request,
        model_settings,
        question_settings,
        assume_yes=flags.yes,
        interactive=sys.stdin.isatty() and sys.stderr.isatty(),
        warn_unsandboxed=lambda: o.warn_if_unsandboxed(flags.sandbox),
    )
    _show([done.score], f"thyme eval: {done.score.benchmark}")
    info(f"report: {done.paths.report}; per item: {done.paths.scored}; summary: {done.paths.summary}")
    if done.failed:
        raise typer.Exit(1)


def _show(runs: list[RunScore], title: str) -> None:
    from thyme_cli.eval.report import print_runs

    print_runs(runs, out_console(), title)


@app.command("report")
@handle_errors
def report(
    results: Annotated[list[Path], typer.Argument(help="Results JSONL of one eval; several files (shards) merge.")],
    benchmark: BenchmarkOpt = None,
    write: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Also write the report here (.md or .html).", rich_help_panel=REPORT_PANEL),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as JSON instead of a table.", rich_help_panel=REPORT_PANEL)
    ] = False,
    label: Annotated[
        str | None, typer.Option("--label", help="Name of the run in the report.", rich_help_panel=REPORT_PANEL)
    ] = None,
) -> None:
    """Score results again (e.g. shards from several machines, merged) and print the report."""
    import json

    from thyme_cli.eval.results import load_run, write_report

    run_score = load_run(results, benchmark, label)
    title = f"thyme eval: {run_score.benchmark}"
    if write is not None:
        write_report([run_score], write, title, plot=None)
    if as_json:
        typer.echo(json.dumps(run_score.to_dict(), indent=2, ensure_ascii=False))
    else:
        _show([run_score], title)


@app.command("compare")
@handle_errors
def compare(
    results: Annotated[
        list[Path], typer.Argument(help="Two or more results JSONL files (tools vs no tools, model vs model, ...).")
    ],
    write: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="The report: .md (Markdown, the plot beside it) or .html (self-contained).",
            rich_help_panel=REPORT_PANEL,
        ),
    ] = Path("compare.md"),
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot", help="The PNG plot (default: the report's name with .png).", rich_help_panel=REPORT_PANEL
        ),
    ] = None,
    labels: Annotated[
        list[str] | None,
        typer.Option("--label", help="A name per run, in order (repeat the option).", rich_help_panel=REPORT_PANEL),
    ] = None,
    benchmark: BenchmarkOpt = None,
) -> None:
    """Side by side: accuracy overall and per category, tool use and time, a plot, and a report file."""
    from thyme_cli.eval.plot import plot_runs
    from thyme_cli.eval.results import load_run, unique_labels, write_report

    if len(results) < 2:
        raise UsageError("compare needs at least two results files")
    if labels and len(labels) != len(results):
        raise UsageError(f"{len(labels)} --label for {len(results)} results files; give one per file")
    if write.suffix.lower() not in (".md", ".html", ".htm"):
        raise UsageError(f"--output {write}: the report must end in .md or .html")
    runs = [load_run([path], benchmark, labels[i] if labels else None) for i, path in enumerate(results)]
    unique_labels(runs, results)
    if len({r.benchmark for r in runs}) > 1:
        warn("these runs are on different benchmarks: " + ", ".join(sorted({r.benchmark for r in runs})))
    title = "thyme eval: " + " vs ".join(dict.fromkeys(r.benchmark for r in runs))
    png = plot_runs(runs, plot or write.with_suffix(".png"), title)
    write_report(runs, write, title, plot=png)
    _show(runs, title)
    err_console().print(f"report: {write}; plot: {png}", markup=False, highlight=False)
