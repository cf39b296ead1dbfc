"""Several questions about one image (or one PDF page), one model load, one run directory each: the
work behind `thyme ask`. The command shows what happens through the hooks; this module knows no UI."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from thyme_cli.models.loading import LoadedModel, ModelSettings
    from thyme_cli.models.registry import Registry
    from thyme_cli.question.input_image import InputImage
    from thyme_cli.question.loop import AgentEvents
    from thyme_cli.question.settings import QuestionSettings
    from thyme_cli.question.trace import Trace


@dataclass(frozen=True)
class ImageQuestions:
    """What `thyme ask` was asked: the image ('-': stdin; a PDF: one page of it) and the questions."""

    image: str
    questions: list[str]
    out: Path | None = None  # the run directory, or for several questions DIR/q1, DIR/q2, ...
    page: int | None = None
    dpi: float | None = None


def _nothing(_arg: object) -> None:
    pass


@dataclass(frozen=True)
class AskHooks:
    """What the command hears about. events(index, run_dir): the display of one question's run;
    run_dir_made(run_dir): a run directory this process created; before_load(registry): the input
    is ready and the model is about to load (warnings belong here)."""

    events: Callable[[int, Path], AgentEvents]
    run_dir_made: Callable[[Path], None] = _nothing
    before_load: Callable[[Registry], None] = _nothing


@dataclass(frozen=True)
class Answered:
    """One question's outcome: its trace and the run directory it was saved in."""

    index: int
    question: str
    trace: Trace
    run_dir: Path


def answer_questions(
    request: ImageQuestions,
    model: ModelSettings,
    settings: QuestionSettings,
    hooks: AskHooks,
    *,
    assume_yes: bool,
    interactive: bool,
) -> Generator[Answered, None, None]:
    """Answer the questions one after the other with one loaded model, yielding each as it is done.
    The model is closed when the iteration ends (use contextlib.closing when stopping early)."""
    from thyme_cli.models.registry import load_registry

    registry = load_registry()
    inputs = _Inputs(request, *_read_source(request, registry, model), hooks.run_dir_made)
    run_dir, input_image, created = inputs.for_question(0)
    hooks.before_load(registry)
    loaded = _load(registry, model, settings, (run_dir if created else None), assume_yes, interactive)
    try:
        yield from _answer_each(request, loaded, settings, hooks, inputs, (run_dir, input_image))
    finally:
        loaded.engine.close()


def _answer_each(
    request: ImageQuestions,
    loaded: LoadedModel,
    settings: QuestionSettings,
    hooks: AskHooks,
    inputs: _Inputs,
    first: tuple[Path, InputImage],
) -> Generator[Answered, None, None]:
    from thyme_cli.question.assemble import ask_one

    run_dir, input_image = first
    for index, question in enumerate(request.questions):
        if index:
            run_dir, input_image, _created = inputs.for_question(index)
        trace = ask_one(loaded, input_image, question, run_dir, settings, hooks.events(index, run_dir))
        yield Answered(index, question, trace, run_dir)


def _read_source(
    request: ImageQuestions, registry: Registry, model: ModelSettings
) -> tuple[Path | bytes, str, str | None]:
    """The input (a path, or the bytes read from stdin or rendered from a PDF page), its label and
    the note saying how a PDF page was rendered."""
    from thyme_cli.errors import UsageError
    from thyme_cli.question import pdf
    from thyme_cli.question.input_image import read_stdin_image

    image = request.image
    source: Path | bytes = read_stdin_image(sys.stdin.buffer) if image == "-" else Path(image).expanduser()
    if isinstance(source, Path) and source.is_file() and pdf.is_pdf(source):
        from thyme_cli.models.store import preferred_default

        entry = registry.models.get(model.name or preferred_default(registry))
        budget = pdf.pixel_budget(model.max_image_tokens or (entry.image_max_tokens if entry else None))
        page, note = pdf.render_page(source, request.page or 1, dpi=request.dpi, max_pixels=budget)
        return page, f"{image}#p{request.page or 1}", note
    if request.page is not None or request.dpi is not None:
        raise UsageError("--page and --dpi apply to PDF input", hint=f"{image} is not a PDF")
    return source, image, None


@dataclass
class _Inputs:
    """Each question's run directory with the checked input image saved in it."""

    request: ImageQuestions
    source: Path | bytes
    label: str
    pdf_note: str | None
    run_dir_made: Callable[[Path], None]

    def for_question(self, index: int) -> tuple[Path, InputImage, bool]:
        """The run directory of question `index`, its input image, and whether it was created here."""
        from thyme_cli.question.assemble import prepare_input

        run_dir, created = self._run_dir(index)
        input_image = prepare_input(self.source, run_dir, label=self.label, remove_on_error=created)
        if self.pdf_note:
            input_image.notes.insert(0, self.pdf_note)
        return run_dir, input_image, created

    def _run_dir(self, index: int) -> tuple[Path, bool]:
        """--out DIR holds one run, or DIR/q1, DIR/q2, ... for several questions."""
        from thyme_cli import paths
        from thyme_cli.question.trace import new_run_dir, prepare_out_dir

        out, questions = self.request.out, self.request.questions
        target = (out / f"q{index + 1}" if len(questions) > 1 else out) if out else None
        created = target is None or not target.exists()
        run_dir = prepare_out_dir(target) if target else new_run_dir(paths.runs_dir(), questions[index])
        if created:
            self.run_dir_made(run_dir)
        return run_dir, created


def _load(
    registry: Registry,
    model: ModelSettings,
    settings: QuestionSettings,
    made: Path | None,
    assume_yes: bool,
    interactive: bool,
) -> LoadedModel:
    """Check the sandbox, then load the model; on failure the run directory made for it goes."""
    from thyme_cli.models.loading import load_model
    from thyme_cli.question.assemble import check_sandbox

    try:
        check_sandbox(settings)
        return load_model(registry, model, assume_yes=assume_yes, interactive=interactive)
    except BaseException:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        raise
