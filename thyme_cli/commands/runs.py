"""`thyme runs ...`: what you asked yesterday, shown again, opened in a browser, or cleaned up.

Thin: flags -> thyme_cli.runs (finding and naming runs) / run_view (terminal playback) / report
(HTML). Tables and JSON go to stdout, messages to stderr. A run is named by its short id (or a
prefix of at least 4 characters) or by its directory.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from thyme_cli.errors import ThymeError, UsageError
from thyme_cli.ui.console import handle_errors, human_size, info, out_console

app = typer.Typer(help="List, show, open and delete past runs (thyme ask / batch).", no_args_is_help=True)

RUN_ARG = typer.Argument(..., metavar="RUN", help="A run id (from `thyme runs list`) or a run directory.")


def _one_line(text: str | None, width: int) -> str:
    from thyme_cli.ui.render import terminal_safe

    flat = " ".join(terminal_safe(text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


@app.command("list")
@handle_errors
def list_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    limit: Annotated[int, typer.Option("--limit", "-n", min=0, help="Show at most this many (0: all).")] = 50,
) -> None:
    """Past runs, newest first: time, id, model, question, answer, steps, seconds."""
    from thyme_cli import paths
    from thyme_cli.runs import list_runs

    runs = list_runs()
    shown = runs[:limit] if limit else runs
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in shown], indent=2, ensure_ascii=False))
        return
    if not runs:
        info(f"no runs yet in {paths.runs_dir()}")
        return
    from rich.table import Table

    table = Table(title=f"thyme runs ({paths.runs_dir()})", title_justify="left")
    for col in ("time", "id", "model"):
        table.add_column(col, no_wrap=True)
    table.add_column("question", ratio=2)
    table.add_column("answer", ratio=1)
    table.add_column("steps", justify="right", no_wrap=True)
    table.add_column("seconds", justify="right", no_wrap=True)
    for r in shown:
        answer = _one_line(r.answer, 60) if r.answer is not None else f"({r.stop_reason or 'no answer'})"
        table.add_row(
            r.started_at.replace("T", " ")[:19],
            r.id,
            r.model,
            _one_line(r.question, 80),
            answer,
            str(r.steps),
            f"{r.seconds:.1f}",
        )
    out_console().print(table)
    if len(runs) > len(shown):
        info(f"{len(runs) - len(shown)} older run(s) not shown (--limit 0 shows all)")


@app.command("show")
@handle_errors
def show_cmd(
    run: str = RUN_ARG,
    as_json: Annotated[bool, typer.Option("--json", help="Print the trace as JSON instead.")] = False,
    previews: Annotated[
        bool, typer.Option("--previews/--no-previews", help="Image thumbnails in the terminal (when it is one).")
    ] = True,
) -> None:
    """The run as it looked live: question, input image, model text, code, outputs, images, answer."""
    from thyme_cli.question.trace import read_trace
    from thyme_cli.runs import run_id

    run_dir = resolve(run)
    trace = read_trace(run_dir)
    if as_json:
        typer.echo(json.dumps({**trace.to_dict(), "run_dir": str(run_dir), "id": run_id(run_dir)}, ensure_ascii=False))
        return
    from thyme_cli.ui.render import inline_image_protocol
    from thyme_cli.ui.run_view import show_run

    console = out_console()
    show_run(trace, run_dir, console, inline_image_protocol(sys.stdout) if previews else None)


def resolve(run: str) -> Path:
    from thyme_cli.runs import resolve_run

    return resolve_run(run)


@app.command("open")
@handle_errors
def open_cmd(run: str = RUN_ARG) -> None:
    """Open the run's HTML report in your browser (writing report.html first if it is missing)."""
    import webbrowser

    from thyme_cli.question.trace import read_trace
    from thyme_cli.ui.html_report import write_html_report

    run_dir = resolve(run)
    report = run_dir / "report.html"
    if not report.is_file():
        write_html_report(read_trace(run_dir), run_dir)
        info(f"wrote {report}")
    if not webbrowser.open(report.resolve().as_uri()):
        raise ThymeError(f"no browser to open {report}", hint="open the file yourself, or set BROWSER")
    typer.echo(str(report))


def _confirm_or_refuse(question: str, yes: bool) -> bool:
    from thyme_cli.ui.console import confirm

    if yes:
        return True
    if not sys.stdin.isatty():
        raise UsageError("not deleting without confirmation", hint="pass --yes to confirm")
    return confirm(question)


@app.command("rm")
@handle_errors
def rm_cmd(
    runs: Annotated[list[str], typer.Argument(metavar="RUN...", help="Run ids or run directories.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete runs (their whole directories)."""
    from thyme_cli.runs import delete_run, dir_bytes

    dirs = list(dict.fromkeys(resolve(r) for r in runs))  # every name checked before anything goes
    total = sum(dir_bytes(d) for d in dirs)
    names = ", ".join(str(d) for d in dirs[:3]) + (f" and {len(dirs) - 3} more" if len(dirs) > 3 else "")
    if not _confirm_or_refuse(f"Delete {len(dirs)} run(s) ({human_size(total)}): {names}?", yes):
        info("nothing removed")
        return
    freed = sum(delete_run(d) for d in dirs)
    info(f"removed {len(dirs)} run(s); freed {human_size(freed)}")


@app.command("gc")
@handle_errors
def gc_cmd(
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than", help="Delete runs started longer ago than this (30d, 12h, 2w; a bare number is days)."
        ),
    ] = "30d",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be deleted.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete old runs under the runs directory."""
    from thyme_cli.runs import delete_run, dir_bytes, parse_age
    from thyme_cli.runs import older_than as find_old

    age = parse_age(older_than)
    old = find_old(age)
    if not dry_run:
        from thyme_cli.engine.llama import prompt_state

        # Saved system-prompt states (engine/llama/prompt_state.py): those of deleted models, and those
        # not used for as long as the runs being deleted.
        states, states_bytes = prompt_state.remove(orphans=True, unused_for_s=age)
        if states:
            info(f"removed {states} saved prompt state(s); freed {human_size(states_bytes)}")
    if not old:
        info(f"no run is older than {older_than}")
        return
    total = sum(dir_bytes(r.path) for r in old)
    if dry_run:
        for r in old:
            typer.echo(f"{r.id}  {r.started_at}  {r.path}")
        info(f"{len(old)} run(s), {human_size(total)} would be deleted")
        return
    if not _confirm_or_refuse(f"Delete {len(old)} run(s) older than {older_than} ({human_size(total)})?", yes):
        info("nothing removed")
        return
    freed = sum(delete_run(r.path) for r in old)
    info(f"removed {len(old)} run(s) older than {older_than}; freed {human_size(freed)}")
