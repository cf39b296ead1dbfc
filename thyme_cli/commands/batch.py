"""`thyme batch`: many images, one model load, JSONL out, resumable and shardable."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from thyme_cli.commands import flags as o
from thyme_cli.ui.console import err_console, handle_errors, print_error, warn
from thyme_cli.errors import UsageError

if TYPE_CHECKING:
    from thyme_cli.batch.run import BatchSummary
    from thyme_cli.batch.inputs import Item
    from thyme_cli.question.assemble import ModelSettings, QuestionSettings


class BatchProgress:
    """A rich progress bar on a terminal; one plain line per item otherwise (both on stderr)."""

    def __init__(self, total: int, done_before: int) -> None:
        self.total = total
        self.done = done_before
        self.counts: dict[str, int] = {"answered": 0, "no_answer": 0, "failed": 0}
        self.console = err_console()
        self.started = time.perf_counter()
        self._progress: Any = None
        if self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]batch"), BarColumn(), MofNCompleteColumn(), TextColumn("ETA"),
                TimeRemainingColumn(), TextColumn("{task.fields[counts]}"), console=self.console, transient=False,
            )
            self._task = self._progress.add_task("batch", total=total, completed=done_before, counts=self._counts())
            self._progress.start()

    def _counts(self) -> str:
        c = self.counts
        return f"answered {c['answered']} · no answer {c['no_answer']} · failed {c['failed']}"

    def item(self, record: dict[str, Any], kind: str) -> None:
        self.done += 1
        self.counts[kind] += 1
        if self._progress is not None:
            self._progress.update(self._task, completed=self.done, counts=self._counts())
            return
        seconds = record.get("timings", {}).get("item_s", 0.0)
        detail = record.get("error") or (record.get("answer") or "")[:60].replace("\n", " ")
        self.console.print(f"[{self.done}/{self.total}] {record['id']}: {kind} ({seconds:.1f} s) {detail}",
                           markup=False, highlight=False)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


def _print_summary(summary: BatchSummary, output: str, runs_root: Path) -> None:
    from rich.table import Table

    console = err_console()
    table = Table(title="batch summary", title_justify="left")
    table.add_column("")
    table.add_column("items", justify="right")
    for label, key in (("answered", "answered"), ("no answer", "no_answer"), ("failed", "failed")):
        table.add_row(label, str(summary.counts.get(key, 0)))
    if summary.skipped:
        table.add_row("done earlier (skipped)", str(summary.skipped))
    table.add_row("total", str(summary.total))
    console.print(table)
    per_item = summary.seconds / summary.processed if summary.processed else 0.0
    console.print(f"{summary.processed} item(s) in {summary.seconds:.1f} s ({per_item:.2f} s/item); "
                  f"results: {output}; runs: {runs_root}", markup=False, highlight=False)


@handle_errors
def batch(
    inputs: Annotated[
        list[str],
        typer.Argument(help="Directories (recursive), globs, manifests (.jsonl/.csv with image, question, id, "
                            "answer), image files, or '-' for image paths on stdin."),
    ],
    question: Annotated[
        str | None, typer.Option("--question", "-q", help="The question for every image (manifests may carry their own).")
    ] = None,
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="JSONL results file, or '-' for stdout (default: results.jsonl).")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted batch: skip items already in -o.")] = False,
    shard: Annotated[str | None, typer.Option("--shard", help="Process only shard i of N (i/N, 1-based), for N machines.")] = None,
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", min=1, max=256,
                          help="Items in flight at once: parallel requests to a remote server, or with a "
                               "local model sequences of one llama.cpp context decoded together.")
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
    step_timeout: o.StepTimeoutOpt = 30.0,
    step_images: o.StepImagesOpt = None,
    question_images: o.QuestionImagesOpt = None,
    keep_images: o.KeepImagesOpt = o.KeepImages.all,
    on_error: o.OnErrorOpt = o.OnError.show,
    max_turns: o.MaxTurnsOpt = 5,
    samples: o.SamplesOpt = 1,
    max_tokens: o.MaxTokensOpt = 2048,
    temperature: o.TemperatureOpt = 0.0,
    top_p: o.TopPOpt = 0.9,
    top_k: o.TopKOpt = 50,
    seed: o.SeedOpt = 0,
    ctx: o.CtxOpt = None,
    max_image_tokens: o.MaxImageTokensOpt = None,
    gpu_layers: o.GpuLayersOpt = None,
    threads: o.ThreadsOpt = None,
    flash_attn: o.FlashAttnOpt = None,
    chat_format: o.ChatFormatOpt = None,
    chat_template: o.ChatTemplateOpt = None,
    yes: o.YesOpt = False,
    script: o.ScriptOpt = None,
) -> None:
    """Ask questions about many images with one model load; one JSON line per item.

    Exit codes: 0 all items processed, 1 some items failed, 2 bad usage, 130 interrupted (resumable).
    """
    from thyme_cli.question.loop import AgentOptions
    from thyme_cli.batch.inputs import collect_items
    from thyme_cli.question.assemble import ModelSettings, QuestionSettings

    if inputs.count("-") > 1:
        raise UsageError("'-' (stdin) may be given only once")
    stdin = sys.stdin if "-" in inputs else None
    items = collect_items(inputs, question, stdin=stdin)
    o.warn_if_unsandboxed(sandbox)
    model_settings = ModelSettings(
        name=model, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, n_ctx=ctx,
        max_image_tokens=max_image_tokens, gpu_layers=gpu_layers, threads=threads, flash_attn=flash_attn,
        chat_format=chat_format, chat_template=chat_template,
        script=script, backend=backend.value, base_url=base_url, api_model=api_model, protocol=protocol,
    )
    question_settings = QuestionSettings(
        sandbox=sandbox.value, step_timeout_s=step_timeout, samples=samples,
        limits=o.sandbox_limits(step_images, question_images), keep_images=keep_images.value,
        agent=AgentOptions(max_turns=max_turns, max_step_tokens=max_tokens, on_error=on_error.value),
    )
    summary = execute_batch(
        items, output=output or "results.jsonl", resume=resume, shard=shard, runs=runs, jobs=jobs,
        model_settings=model_settings, question_settings=question_settings, assume_yes=yes,
        interactive=sys.stdin.isatty() and sys.stderr.isatty() and stdin is None,
    )
    if summary.counts.get("failed"):
        raise typer.Exit(1)


def execute_batch(
    items: list[Item],
    *,
    output: str,
    resume: bool,
    shard: str | None,
    runs: Path | None,
    jobs: int,
    model_settings: ModelSettings,
    question_settings: QuestionSettings,
    assume_yes: bool,
    interactive: bool,
    command: str = "batch",
) -> BatchSummary:
    """Everything after the flags: shard, journal, one model load, the items, the summary.

    Shared by `thyme batch` and the commands built on it (eval). Raises typer.Exit(130) when
    interrupted (the output stays resumable).
    """
    from thyme_cli import paths
    from thyme_cli.batch.run import outcome, run_batch
    from thyme_cli.batch.inputs import in_shard, parse_shard
    from thyme_cli.batch.journal import Journal
    from thyme_cli.ui.crash_guard import announce_run_dir, guard
    from thyme_cli.models.registry import load_registry
    from thyme_cli.question.assemble import check_sandbox, load_model
    from thyme_cli.question.trace import new_run_dir

    guard(command)
    if shard:
        index, total = parse_shard(shard)
        items = [item for item in items if in_shard(item.id, index, total)]
    out_path = None if output == "-" else Path(output).expanduser()
    journal = Journal(out_path, resume=resume)
    if out_path is not None:
        runs_root = runs or out_path.with_name(out_path.name.removesuffix(".jsonl") + ".runs")
    else:
        runs_root = runs or new_run_dir(paths.runs_dir(), command)
    if not runs_root.exists() or not any(runs_root.iterdir()):
        announce_run_dir(runs_root)  # removed after a native crash if no item finished
    runs_root.mkdir(parents=True, exist_ok=True)
    if journal.dropped_tail:
        warn(f"cut off an incomplete last line ({journal.dropped_tail} bytes) left by an interrupted run")
    n_seq = jobs * question_settings.samples
    if n_seq > 1 and model_settings.backend == "local" and model_settings.script is None:
        from dataclasses import replace

        # Local engine: the items in flight (and their --samples trajectories) are sequences of one
        # context, decoded together.
        model_settings = replace(model_settings, n_seq=n_seq)
    try:
        check_sandbox(question_settings)
        loaded = load_model(load_registry(), model_settings, assume_yes=assume_yes, interactive=interactive)
    except BaseException:
        journal.close()
        raise
    if jobs > 1 and not getattr(loaded.engine, "concurrent", False):
        loaded.engine.close()
        journal.close()
        raise UsageError(f"--jobs {jobs}: the {loaded.spec.name} engine runs one conversation at a time",
                         hint="use --jobs 1 with a local model, or a remote backend for parallel items")
    done_before = sum(1 for item in items if item.id in journal.done_ids)
    progress = BatchProgress(len(items), done_before)
    try:
        summary = run_batch(items, loaded, question_settings, journal, runs_root,
                            on_item=lambda record: progress.item(record, outcome(record)), jobs=jobs,
                            group_images=command == "batch")
    finally:
        progress.close()
        journal.close()
        loaded.engine.close()
    _print_summary(summary, output, runs_root)
    if summary.interrupted:
        again = f"thyme {command} ... -o {output} --resume" if out_path else "write to a file with -o to resume"
        if summary.stopped_by:
            print_error(f"stopped: {summary.stopped_by}; every finished item is saved", hint=f"when it is back: {again}")
            raise typer.Exit(1)
        print_error("interrupted; every finished item is saved", hint=f"continue with: {again}")
        raise typer.Exit(130)
    return summary
