"""`thyme ask IMAGE QUESTION`: one question, shown live, saved as a run directory."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from thyme_cli.commands import flags as o
from thyme_cli.errors import EXIT_NO_ANSWER, EXIT_RUNTIME, UsageError
from thyme_cli.runs import run_id
from thyme_cli.ui.console import handle_errors, info, warn

if TYPE_CHECKING:
    from thyme_cli.models.registry import Registry
    from thyme_cli.question.image_questions import Answered
    from thyme_cli.question.loop import AgentEvents


@handle_errors
@o.with_run_flags(leave_out=("keep_images",), last=("script",))
def ask(
    image: Annotated[
        str,
        typer.Argument(
            help="The image (PNG, JPEG, WebP, TIFF, BMP) or a PDF (see --page), or '-' to read it from stdin."
        ),
    ],
    questions: Annotated[
        list[str],
        typer.Argument(
            help="What you want to know about it. Several questions are answered one after the other, "
            "each on its own (a run and an answer each); the image is encoded once for all.",
            metavar="QUESTION",
        ),
    ],
    *,
    flags: o.RunFlags,
    page: Annotated[
        int | None, typer.Option("--page", min=1, help="For a PDF: the page to ask about (default 1).")
    ] = None,
    dpi: Annotated[
        float | None,
        typer.Option(
            "--dpi",
            help="For a PDF: render resolution (default: the page fits the model's image budget, at most 300 dpi).",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Run directory to create (default: a new one under the data dir).",
            rich_help_panel=o.OUTPUT_PANEL,
        ),
    ] = None,
    html: Annotated[
        bool,
        typer.Option(
            "--html",
            help="Also write report.html (self-contained) into the run directory.",
            rich_help_panel=o.OUTPUT_PANEL,
        ),
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="Print one JSON object with the whole run on stdout.", rich_help_panel=o.OUTPUT_PANEL
        ),
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print only the answer.", rich_help_panel=o.OUTPUT_PANEL)
    ] = False,
    verbose: o.VerboseOpt = False,
    previews: Annotated[
        bool,
        typer.Option(
            "--previews/--no-previews",
            help="Thumbnails of new images in the terminal (kitty, "
            "iTerm2, sixel, else colour half-blocks; only when stderr is a terminal).",
            rich_help_panel=o.OUTPUT_PANEL,
        ),
    ] = True,
) -> None:
    """Ask questions about one image. Exit codes: 0 answered, 1 error, 2 bad usage, 3 no answer
    (for several questions: 1 if any failed, else 3 if any has no answer)."""
    if not questions or any(not q.strip() for q in questions):
        raise UsageError("the question is empty")
    from contextlib import closing

    from thyme_cli.question.image_questions import AskHooks, ImageQuestions, answer_questions
    from thyme_cli.ui.crash_guard import announce_run_dir, guard

    guard("ask")
    model_settings, question_settings = flags.settings(n_seq=flags.samples if _local_model(flags) else 1)
    live = not (quiet or as_json)
    show = _Display(questions, live, html=html, as_json=as_json, quiet=quiet, verbose=verbose, previews=previews)
    hooks = AskHooks(show.events, run_dir_made=announce_run_dir, before_load=lambda r: _warnings(flags, live, r))
    request = ImageQuestions(image, questions, out=out, page=page, dpi=dpi)
    interactive = sys.stdin.isatty() and sys.stderr.isatty() and image != "-"
    answers = answer_questions(
        request, model_settings, question_settings, hooks, assume_yes=flags.yes, interactive=interactive
    )
    with closing(answers):
        outcomes = [show.answered(answered) for answered in answers]
    if "failed" in outcomes:
        raise typer.Exit(EXIT_RUNTIME)
    if "unanswered" in outcomes:
        raise typer.Exit(EXIT_NO_ANSWER)


def _local_model(flags: o.RunFlags) -> bool:
    """A model llama.cpp runs here: --samples then decode together from one shared prefix (one
    sequence each), and the default model is announced when none was named."""
    return flags.backend == o.Backend.local and flags.script is None


def _warnings(flags: o.RunFlags, live: bool, registry: Registry) -> None:
    """Before the model loads: --sandbox none, and which model runs when none was named."""
    o.warn_if_unsandboxed(flags.sandbox)
    if flags.model is None and _local_model(flags) and live:
        from thyme_cli.models.store import default_model_note

        if note := default_model_note(registry):
            warn(note)


@dataclass
class _Display:
    """How each question is shown: live, quiet (the answer only) or JSON; and its outcome."""

    questions: list[str]
    live: bool
    html: bool
    as_json: bool
    quiet: bool
    verbose: bool
    previews: bool = True

    def events(self, index: int, run_dir: Path) -> AgentEvents:
        """The display of one question's run (announced first when there are several)."""
        from thyme_cli.question.loop import QuietEvents
        from thyme_cli.ui.render import LiveRenderer

        if len(self.questions) > 1 and self.live:
            info(f"question {index + 1} of {len(self.questions)}: {self.questions[index]}")
        return LiveRenderer(run_dir, previews="auto" if self.previews else None) if self.live else QuietEvents()

    def answered(self, answered: Answered) -> str:
        """Show one question's result; its outcome: 'answered', 'unanswered' or 'failed'."""
        trace, run_dir = answered.trace, answered.run_dir
        if self.html:
            from thyme_cli.ui.html_report import write_html_report

            write_html_report(trace, run_dir)
        if self.as_json:
            typer.echo(
                json.dumps({**trace.to_dict(), "run_dir": str(run_dir), "id": run_id(run_dir)}, ensure_ascii=False)
            )
        else:
            self._summary(answered)
        if trace.stop_reason == "error":
            return "failed"
        if trace.answer is None:
            self._no_answer(answered)
            return "unanswered"
        return "answered"

    def _summary(self, answered: Answered) -> None:
        """The run's summary and id (live), then the answer."""
        from thyme_cli import paths
        from thyme_cli.ui.render import print_answer, print_summary

        trace, run_dir = answered.trace, answered.run_dir
        if self.live:
            print_summary(trace, run_dir, verbose=self.verbose)
            listed = run_dir.resolve().is_relative_to(paths.runs_dir().resolve())  # --out DIR: by path
            name = run_id(run_dir) if listed else str(run_dir)
            info(f"run id {run_id(run_dir)} (see it again with `thyme runs show {name}`)")
        if trace.answer is not None:
            print_answer(trace, quiet=self.quiet)

    def _no_answer(self, answered: Answered) -> None:
        if self.as_json:
            return
        from thyme_cli.ui.console import print_error

        detail = answered.trace.stop_detail
        several = len(self.questions) > 1
        print_error(f"no answer to question {answered.index + 1}: {detail}" if several else f"no answer: {detail}")
