"""A whole batch after the flags: shard, journal, one model load, the items, the summary.

Shared by `thyme batch` and the commands built on it (`thyme eval`). Stops that leave the output
resumable are raised as ``BatchStopped`` (exit code 130 when interrupted, 1 when the backend went
away), so callers need no CLI framework.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from thyme_cli.errors import ThymeError, UsageError
from thyme_cli.ui.console import warn

if TYPE_CHECKING:
    from thyme_cli.batch.inputs import Item
    from thyme_cli.batch.journal import Journal
    from thyme_cli.batch.run import BatchSummary
    from thyme_cli.models.loading import LoadedModel, ModelSettings
    from thyme_cli.question.settings import QuestionSettings


class BatchStopped(ThymeError):
    """The batch stopped early; every finished item is saved and ``--resume`` continues it."""


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

    Shared by `thyme batch` and the commands built on it (eval). Raises BatchStopped when
    interrupted (the output stays resumable).
    """
    from thyme_cli.batch.journal import Journal
    from thyme_cli.ui.batch_progress import print_batch_summary
    from thyme_cli.ui.crash_guard import guard

    guard(command)
    items = _in_shard(items, shard)
    out_path = None if output == "-" else Path(output).expanduser()
    journal = Journal(out_path, resume=resume)
    runs_root = _open_runs_root(out_path, runs, command)
    if journal.dropped_tail:
        warn(f"cut off an incomplete last line ({journal.dropped_tail} bytes) left by an interrupted run")
    model_settings = _decoded_together(model_settings, jobs * question_settings.samples)
    loaded = _load_model(journal, model_settings, question_settings, jobs, assume_yes, interactive)
    summary = _run_items(items, loaded, question_settings, journal, runs_root, jobs, command)
    print_batch_summary(summary, output, runs_root)
    if summary.interrupted:
        _raise_stopped(summary, command, output, resumable=out_path is not None)
    return summary


def _in_shard(items: list[Item], shard: str | None) -> list[Item]:
    """The items of ``--shard i/n`` (all of them without it)."""
    from thyme_cli.batch.inputs import in_shard, parse_shard

    if not shard:
        return items
    index, total = parse_shard(shard)
    return [item for item in items if in_shard(item.id, index, total)]


def _open_runs_root(out_path: Path | None, runs: Path | None, command: str) -> Path:
    """Where the items' run dirs go: --runs, else beside the output file, else a new run dir."""
    from thyme_cli import paths
    from thyme_cli.question.trace import new_run_dir
    from thyme_cli.ui.crash_guard import announce_run_dir

    if out_path is not None:
        runs_root = runs or out_path.with_name(out_path.name.removesuffix(".jsonl") + ".runs")
    else:
        runs_root = runs or new_run_dir(paths.runs_dir(), command)
    if not runs_root.exists() or not any(runs_root.iterdir()):
        announce_run_dir(runs_root)  # removed after a native crash if no item finished
    runs_root.mkdir(parents=True, exist_ok=True)
    return runs_root


def _decoded_together(model_settings: ModelSettings, n_seq: int) -> ModelSettings:
    """Local engine: the items in flight (and their --samples trajectories) are sequences of one
    context, decoded together."""
    if n_seq > 1 and model_settings.backend == "local" and model_settings.script is None:
        from dataclasses import replace

        return replace(model_settings, n_seq=n_seq)
    return model_settings


def _load_model(
    journal: Journal,
    model_settings: ModelSettings,
    question_settings: QuestionSettings,
    jobs: int,
    assume_yes: bool,
    interactive: bool,
) -> LoadedModel:
    """Check the sandbox and load the model once; on failure the journal is closed."""
    from thyme_cli.models.loading import load_model
    from thyme_cli.models.registry import load_registry
    from thyme_cli.question.assemble import check_sandbox

    try:
        check_sandbox(question_settings)
        loaded = load_model(load_registry(), model_settings, assume_yes=assume_yes, interactive=interactive)
    except BaseException:
        journal.close()
        raise
    if jobs > 1 and not getattr(loaded.engine, "concurrent", False):
        loaded.engine.close()
        journal.close()
        raise UsageError(
            f"--jobs {jobs}: the {loaded.spec.name} engine runs one conversation at a time",
            hint="use --jobs 1 with a local model, or a remote backend for parallel items",
        )
    return loaded


def _run_items(
    items: list[Item],
    loaded: LoadedModel,
    question_settings: QuestionSettings,
    journal: Journal,
    runs_root: Path,
    jobs: int,
    command: str,
) -> BatchSummary:
    """Run the items with a progress display; the journal and the engine are closed after."""
    from thyme_cli.batch.run import outcome, run_batch
    from thyme_cli.ui.batch_progress import BatchProgress

    done_before = sum(1 for item in items if item.id in journal.done_ids)
    progress = BatchProgress(len(items), done_before)
    try:
        return run_batch(
            items,
            loaded,
            question_settings,
            journal,
            runs_root,
            on_item=lambda record: progress.item(record, outcome(record)),
            jobs=jobs,
            group_images=command == "batch",
        )
    finally:
        progress.close()
        journal.close()
        loaded.engine.close()


def _raise_stopped(summary: BatchSummary, command: str, output: str, *, resumable: bool) -> None:
    """The batch stopped early: say why and how to go on (exit 1 for a lost backend, 130 for Ctrl-C)."""
    again = f"thyme {command} ... -o {output} --resume" if resumable else "write to a file with -o to resume"
    if summary.stopped_by:
        raise BatchStopped(
            f"stopped: {summary.stopped_by}; every finished item is saved",
            hint=f"when it is back: {again}",
            exit_code=1,
        )
    raise BatchStopped("interrupted; every finished item is saved", hint=f"continue with: {again}", exit_code=130)
