"""`thyme eval`: benchmark accuracy with and without tools, and side-by-side comparisons.

`thyme eval FILE` is short for `thyme eval run FILE`: the group resolves a first argument that is
not a subcommand name as the benchmark of `run`. The run itself is `thyme batch`'s machinery
(execute_batch: one model load, journal, --resume, --shard, --jobs); this module turns benchmark
rows into batch items before it and scores the results after it. Heavy imports stay inside the
functions so `thyme --help` stays fast.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from thyme_cli import defaults as d
from thyme_cli.commands import flags as o
from thyme_cli.errors import UsageError
from thyme_cli.ui.console import err_console, handle_errors, info, out_console, warn

if TYPE_CHECKING:
    from thyme_cli.eval.items import EvalItem
    from thyme_cli.eval.score import RunScore
    from thyme_cli.eval.store import EvalPaths, SideTable
    from thyme_cli.question.loop import AgentOptions

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
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted eval: skip items already in -o.")
    ] = False,
    shard: Annotated[
        str | None, typer.Option("--shard", help="Run only shard i of N (i/N, 1-based), for N machines.")
    ] = None,
    jobs: Annotated[
        int,
        typer.Option(
            "--jobs",
            "-j",
            min=1,
            max=256,
            help="Items in flight at once (needs an engine that serves several conversations, e.g. a remote server).",
        ),
    ] = 1,
    runs: Annotated[
        Path | None, typer.Option("--runs", help="Where each item's run directory goes (default: next to -o).")
    ] = None,
    model: o.ModelOpt = None,
    backend: o.BackendOpt = o.Backend.local,
    base_url: o.BaseUrlOpt = None,
    api_model: o.ApiModelOpt = None,
    protocol: o.ProtocolOpt = None,
    sandbox: o.SandboxOpt = o.SandboxChoice.auto,
    step_timeout: o.StepTimeoutOpt = d.STEP_TIMEOUT_S,
    step_images: o.StepImagesOpt = None,
    question_images: o.QuestionImagesOpt = None,
    keep_images: o.KeepImagesOpt = o.KeepImages.all,
    on_error: o.OnErrorOpt = o.OnError.retry,  # the paper's evaluation discards failed steps (eval/paper.py)
    max_turns: o.MaxTurnsOpt = d.MAX_TURNS,
    samples: o.SamplesOpt = d.SAMPLES,
    max_tokens: o.MaxTokensOpt = d.MAX_TOKENS,
    temperature: o.TemperatureOpt = d.TEMPERATURE,
    top_p: o.TopPOpt = d.TOP_P,
    top_k: o.TopKOpt = d.TOP_K,
    seed: o.SeedOpt = d.SEED,
    ctx: EvalCtxOpt = None,
    max_image_tokens: EvalMaxImageTokensOpt = None,
    gpu_layers: o.GpuLayersOpt = None,
    threads: o.ThreadsOpt = None,
    flash_attn: o.FlashAttnOpt = None,
    chat_format: o.ChatFormatOpt = None,
    chat_template: o.ChatTemplateOpt = None,
    yes: o.YesOpt = False,
    script: o.ScriptOpt = None,
) -> None:
    """Run every benchmark item through the model and report accuracy, per category, tool use and time.

    Exit codes: 0 done, 1 some items failed (counted wrong), 2 bad usage or benchmark, 130 interrupted (--resume).
    """
    from thyme_cli.batch.execute import execute_batch
    from thyme_cli.batch.inputs import Item, in_shard, parse_shard
    from thyme_cli.eval.items import fingerprint
    from thyme_cli.eval.load import load_benchmark
    from thyme_cli.eval.store import EvalPaths, check_resumable, write_side_table
    from thyme_cli.models.loading import ModelSettings
    from thyme_cli.question.settings import QuestionSettings

    if output is not None and str(output) == "-":
        raise UsageError("eval scores its results file afterwards, so -o - (stdout) is not supported")
    if not benchmark.exists() and not benchmark.suffix:
        raise UsageError(
            f"{benchmark}: no such benchmark file, and not a command",
            hint="commands: thyme eval run FILE, thyme eval report R.jsonl, thyme eval compare A.jsonl B.jsonl",
        )
    shard_pos = parse_shard(shard) if shard else None
    paths = EvalPaths(output or _default_output(benchmark, no_tools, shard_pos))
    if paths.results.exists() and paths.results.stat().st_size > 0 and not resume:
        raise UsageError(
            f"{paths.results} already exists; nothing was overwritten",
            hint="add --resume to continue that eval, or choose another -o",
        )
    wanted = (lambda item_id: in_shard(item_id, *shard_pos)) if shard_pos else None
    items = load_benchmark(benchmark, paths.images.resolve(), wanted, limit=limit)
    from thyme_cli.eval.paper import eval_context, paper_image_tokens

    # the paper's image-token budget (OCRBench: larger minimum); --max-image-tokens replaces the maximum
    min_image_tokens, max_image_tokens = paper_image_tokens(_benchmark_name(benchmark), max_image_tokens)
    ctx = eval_context(ctx, max_image_tokens, max_turns, max_tokens)  # a 16,384-token image must fit
    meta = {
        "benchmark": str(benchmark.resolve()),
        "benchmark_name": _benchmark_name(benchmark),
        "fingerprint": fingerprint(items),
        "tools": not no_tools,
        "items": len(items),
        "limit": limit,
        "model": model or (f"scripted:{script.name}" if script else api_model),
        "shard": shard,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": {
            "benchmark": _benchmark_name(benchmark),
            "tools": not no_tools,
            "max_turns": max_turns,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "on_error": on_error.value,
            "max_image_tokens": max_image_tokens,
            "min_image_tokens": min_image_tokens,
            "ctx": ctx,
        },
    }
    if resume:
        check_resumable(paths, items, tools=not no_tools)
    write_side_table(paths, items, meta)
    if no_tools and sandbox == o.SandboxChoice.auto:
        sandbox = o.SandboxChoice.none  # no code can run, so no jail is needed (works where none starts)
    else:
        o.warn_if_unsandboxed(sandbox)
    model_settings = ModelSettings(
        name=model,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=seed,
        n_ctx=ctx,
        max_image_tokens=max_image_tokens,
        min_image_tokens=min_image_tokens,
        gpu_layers=gpu_layers,
        threads=threads,
        flash_attn=flash_attn,
        chat_format=chat_format,
        chat_template=chat_template,
        script=script,
        backend=backend.value,
        base_url=base_url,
        api_model=api_model,
        protocol=protocol,
    )
    question_settings = QuestionSettings(
        sandbox=sandbox.value,
        step_timeout_s=step_timeout,
        samples=samples,
        limits=o.sandbox_limits(step_images, question_images),
        keep_images=keep_images.value,
        agent=agent_options(no_tools=no_tools, max_turns=max_turns, max_tokens=max_tokens, on_error=on_error.value),
    )
    batch_items = [Item(item.id, item.image, item.prompt, item.answer) for item in items]
    summary = execute_batch(
        batch_items,
        output=str(paths.results),
        resume=resume,
        shard=shard,
        runs=runs,
        jobs=jobs,
        model_settings=model_settings,
        question_settings=question_settings,
        assume_yes=yes,
        interactive=sys.stdin.isatty() and sys.stderr.isatty(),
        command="eval",
    )
    run_score = _score_and_save(paths)
    _show([run_score], f"thyme eval: {run_score.benchmark}")
    info(f"report: {paths.report}; per item: {paths.scored}; summary: {paths.summary}")
    if summary.counts.get("failed"):
        raise typer.Exit(1)


def agent_options(*, no_tools: bool, max_turns: int, max_tokens: int, on_error: str) -> AgentOptions:
    """The agent's options; --no-tools: no code instructions in the prompt and no code turns.

    --on-error retry as the paper's evaluation does it (eval/paper.py): a discarded attempt uses up
    one of the max_turns steps, and the retried turn is generated with the same (greedy) sampling."""
    from thyme_cli.question.loop import AgentOptions

    return AgentOptions(
        max_turns=0 if no_tools else max_turns,
        max_step_tokens=max_tokens,
        on_error="retry" if on_error == "retry" else "show",
        tools=not no_tools,
        max_retries=max_turns,
        retry_warm=False,
        retries_use_turns=True,
    )


def _default_output(benchmark: Path, no_tools: bool, shard: tuple[int, int] | None) -> Path:
    part = f".shard{shard[0]}of{shard[1]}" if shard else ""
    return Path(f"{benchmark.stem}.{'no-tools' if no_tools else 'tools'}{part}.jsonl")


def _benchmark_name(path: Path) -> str:
    return path.stem


def _score_and_save(paths: EvalPaths) -> RunScore:
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


def _show(runs: list[RunScore], title: str) -> None:
    from thyme_cli.eval.report import print_runs

    print_runs(runs, out_console(), title)


def _load_run(results: list[Path], benchmark: Path | None, label: str | None) -> RunScore:
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
    from thyme_cli.eval.items import fingerprint
    from thyme_cli.eval.load import load_benchmark
    from thyme_cli.eval.store import read_side_table, side_table_from_items

    if benchmark is None:
        return read_side_table(paths)
    items: list[EvalItem] = load_benchmark(benchmark, paths.images, wanted=lambda _id: False)
    tools = read_side_table(paths).meta.get("tools") if paths.meta.is_file() else None
    meta = {
        "benchmark": str(benchmark.resolve()),
        "benchmark_name": _benchmark_name(benchmark),
        "fingerprint": fingerprint(items),
        "tools": tools,
    }
    return side_table_from_items(items, meta)


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

    run_score = _load_run(results, benchmark, label)
    title = f"thyme eval: {run_score.benchmark}"
    if write is not None:
        _write_report([run_score], write, title, plot=None)
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

    if len(results) < 2:
        raise UsageError("compare needs at least two results files")
    if labels and len(labels) != len(results):
        raise UsageError(f"{len(labels)} --label for {len(results)} results files; give one per file")
    if write.suffix.lower() not in (".md", ".html", ".htm"):
        raise UsageError(f"--output {write}: the report must end in .md or .html")
    runs = [_load_run([path], benchmark, labels[i] if labels else None) for i, path in enumerate(results)]
    _unique_labels(runs, results)
    if len({r.benchmark for r in runs}) > 1:
        warn("these runs are on different benchmarks: " + ", ".join(sorted({r.benchmark for r in runs})))
    title = "thyme eval: " + " vs ".join(dict.fromkeys(r.benchmark for r in runs))
    png = plot_runs(runs, plot or write.with_suffix(".png"), title)
    _write_report(runs, write, title, plot=png)
    _show(runs, title)
    err_console().print(f"report: {write}; plot: {png}", markup=False, highlight=False)


def _unique_labels(runs: list[RunScore], results: list[Path]) -> None:
    labels = [r.label for r in runs]
    for run, path in zip(runs, results, strict=True):
        if labels.count(run.label) > 1:
            run.label = f"{run.label} [{path.stem}]"


def _write_report(runs: list[RunScore], path: Path, title: str, plot: Path | None) -> None:
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
