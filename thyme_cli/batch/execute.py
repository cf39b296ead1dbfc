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
    from thyme_cli.batch.run import BatchSummary
    from thyme_cli.models.loading import ModelSettings
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
    from thyme_cli import paths
    from thyme_cli.batch.inputs import in_shard, parse_shard
    from thyme_cli.batch.journal import Journal
    from thyme_cli.batch.run import outcome, run_batch
    from thyme_cli.models.loading import load_model
    from thyme_cli.models.registry import load_registry
    from thyme_cli.question.assemble import check_sandbox
    from thyme_cli.question.trace import new_run_dir
    from thyme_cli.ui.batch_progress import BatchProgress, print_batch_summary
    from thyme_cli.ui.crash_guard import announce_run_dir, guard

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
        raise UsageError(
            f"--jobs {jobs}: the {loaded.spec.name} engine runs one conversation at a time",
            hint="use --jobs 1 with a local model, or a remote backend for parallel items",
        )
    done_before = sum(1 for item in items if item.id in journal.done_ids)
    progress = BatchProgress(len(items), done_before)
    try:
        summary = run_batch(
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
    print_batch_summary(summary, output, runs_root)
    if summary.interrupted:
        again = f"thyme {command} ... -o {output} --resume" if out_path else "write to a file with -o to resume"
        if summary.stopped_by:
            raise BatchStopped(
                f"stopped: {summary.stopped_by}; every finished item is saved",
                hint=f"when it is back: {again}",
                exit_code=1,
            )
        raise BatchStopped("interrupted; every finished item is saved", hint=f"continue with: {again}", exit_code=130)
    return summary
