"""Putting one question together: the input image, a sandbox, the loop, the trace.

`thyme ask` calls this once; `thyme batch` loads the engine once (models/loading.py) and calls
`ask_one` per item.
"""

from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thyme_cli.errors import ThymeError, UsageError
from thyme_cli.question.input_image import InputImage, load_input_image
from thyme_cli.question.loop import AgentEvents, answer_question
from thyme_cli.question.settings import QuestionSettings
from thyme_cli.question.trace import Trace, write_trace

if TYPE_CHECKING:
    from thyme_cli.engine.base import Conversation
    from thyme_cli.engine.settings import SamplingOptions
    from thyme_cli.models.loading import LoadedModel
    from thyme_cli.sandbox.host.pool import PerQuestionPool, SandboxPool
    from thyme_cli.sandbox.host.session import WorkerSandbox


def prepare_input(
    image: Path | bytes, run_dir: Path, *, label: str | None, remove_on_error: bool, link: bool = False
) -> InputImage:
    """Check and save the input image before anything expensive; a bad image leaves no run dir.
    With `link` (batch), an input thyme does not change is linked into the run dir, not copied."""
    try:
        return load_input_image(image, run_dir, label=label, link=link)
    except ThymeError:
        if remove_on_error:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def check_sandbox(settings: QuestionSettings) -> str:
    """Fail early (before a model loads) when the chosen sandbox cannot start; returns its name."""
    from thyme_cli.sandbox.host.factory import select_backend

    return select_backend(settings.sandbox).name


def open_sandbox_pool(settings: QuestionSettings) -> SandboxPool | PerQuestionPool:
    """Sandboxes for many questions (batch): one warm jail whose zygote forks a fresh child per
    question, or one jail per question where that is off (THYME_SANDBOX_POOL=0) or cannot start."""
    from thyme_cli.sandbox.host.pool import open_pool

    return open_pool(settings.sandbox, timeout_s=settings.step_timeout_s, limits=settings.limits)


def open_question_sandbox(
    input_image: InputImage,
    run_dir: Path,
    settings: QuestionSettings,
    pool: SandboxPool | PerQuestionPool | None = None,
) -> WorkerSandbox:
    """The question's sandbox; its worker boots in the background, so open it as early as possible."""
    if pool is not None:
        return pool.open(image=input_image.path, images_dir=run_dir / "images")
    from thyme_cli.sandbox.host.factory import open_sandbox

    return open_sandbox(
        settings.sandbox,
        image=input_image.path,
        images_dir=run_dir / "images",
        timeout_s=settings.step_timeout_s,
        limits=settings.limits,
    )


def ask_one(
    model: LoadedModel,
    input_image: InputImage,
    question: str,
    run_dir: Path,
    settings: QuestionSettings,
    events: AgentEvents,
    *,
    sandbox: WorkerSandbox | None = None,
    sampling: SamplingOptions | None = None,
) -> Trace:
    """Answer one question about one image; everything lands in run_dir (trace.json last).

    ``sandbox`` is one already opened for this question (batch opens the next item's while the
    current one runs); it is closed here either way.
    """
    if not question.strip():
        _close(sandbox)
        raise UsageError("the question is empty")
    if settings.samples > 1:
        _close(sandbox)  # each trajectory opens its own
        from thyme_cli.question.samples import ask_samples

        return ask_samples(model.engine, partial(ask_one, model, input_image, question), run_dir, settings, events)
    for note in input_image.notes:
        events.note(f"input image {note}")
    with sandbox or open_question_sandbox(input_image, run_dir, settings) as sandbox:
        trace = _new_trace(model, input_image, question, sandbox.backend)
        conversation = _open_conversation(model, sampling, events)
        try:
            answer_question(conversation, sandbox, trace, input_image, run_dir, settings.agent, events)
        except ThymeError as e:
            # Keep what happened so far: the trace says where and why the run broke.
            trace.stop_reason, trace.stop_detail = "error", e.message
            raise
        finally:
            conversation.close()
            write_trace(trace, run_dir)
    return trace


def _close(sandbox: WorkerSandbox | None) -> None:
    if sandbox is not None:
        sandbox.close()


def _new_trace(model: LoadedModel, input_image: InputImage, question: str, backend: str) -> Trace:
    return Trace(
        question=question,
        image=input_image.path.name,
        image_source=input_image.source,
        image_size=(input_image.width, input_image.height),
        model=model.spec.name,
        protocol=model.spec.protocol,
        sandbox=backend,
        notes=[f"input image {n}" for n in input_image.notes],
    )


def _open_conversation(model: LoadedModel, sampling: SamplingOptions | None, events: AgentEvents) -> Conversation:
    """A fresh conversation (with a seed per --samples trajectory) that reports a long feed's progress."""
    opener: Any = model.engine.open
    conversation = opener(sampling) if sampling is not None else opener()
    if hasattr(conversation, "on_progress"):  # engines that can tell how a long feed is going
        setattr(conversation, "on_progress", getattr(events, "progress", None))  # noqa: B010
    return conversation
