"""Putting one question together: engine loading, the input image, a sandbox, the loop, the trace.

`thyme ask` calls this once; `thyme batch` loads the engine once and calls `ask_one` per item.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thyme_cli.question.loop import AgentEvents, AgentOptions, answer_question
from thyme_cli.engine.base import Engine
from thyme_cli.errors import ThymeError, UsageError
from thyme_cli.question.input_image import InputImage, load_input_image
from thyme_cli.models.registry import ModelSpec, Registry
from thyme_cli.question.trace import Trace, write_trace

if TYPE_CHECKING:
    from thyme_cli.engine.settings import SamplingOptions
    from thyme_cli.sandbox.host.limits import Limits
    from thyme_cli.sandbox.host.pool import PerQuestionPool, SandboxPool
    from thyme_cli.sandbox.host.session import WorkerSandbox


@dataclass
class ModelSettings:
    """Everything about which model runs and how it samples (from the command line)."""

    name: str | None = None
    temperature: float = 0.0
    top_p: float = 0.9
    top_k: int = 50
    seed: int = 0
    n_ctx: int | None = None
    max_image_tokens: int | None = None
    min_image_tokens: int | None = None  # None: the registry's (eval raises it for OCRBench, as the paper did)
    gpu_layers: int | None = None
    threads: int | None = None
    flash_attn: bool | None = None  # None: llama.cpp decides
    chat_format: str | None = None  # None: the model entry's, else "auto"
    chat_template: Path | None = None  # a Jinja file instead of the GGUF's template
    script: Path | None = None
    backend: str = "local"  # "local" (llama.cpp here) or "openai" (an OpenAI-compatible server)
    base_url: str | None = None
    api_model: str | None = None
    protocol: str | None = None  # for remote models: "thyme" or "generic"
    n_seq: int = 1  # local engine: questions that run at once as sequences of one context (batch --jobs)


@dataclass
class LoadedModel:
    engine: Engine
    spec: ModelSpec
    notes: list[str] = field(default_factory=list)


def load_model(registry: Registry, settings: ModelSettings, *, assume_yes: bool, interactive: bool) -> LoadedModel:
    """Resolve the model name, make sure its files are here (asking to download), load the engine."""
    if settings.script is not None:
        from thyme_cli.engine.scripted import ScriptedEngine

        spec = registry.get(settings.name) if settings.name else ModelSpec(name="scripted", protocol="thyme",
                                                                           model_path=settings.script,
                                                                           mmproj_path=settings.script)
        return LoadedModel(ScriptedEngine.from_file(settings.script), spec)
    if settings.backend == "openai":
        from thyme_cli.engine.remote.engine import load_remote

        return load_remote(registry, settings)
    from thyme_cli.models.store import ensure_model, preferred_default

    spec = registry.get(settings.name or preferred_default(registry))
    if settings.protocol is not None:  # e.g. --model hf.co/ORG/REPO:QUANT --protocol thyme
        from dataclasses import replace

        from thyme_cli.models.registry import PROTOCOLS

        if settings.protocol not in PROTOCOLS:
            raise UsageError(f"--protocol must be one of {', '.join(PROTOCOLS)}")
        spec = replace(spec, protocol="thyme" if settings.protocol == "thyme" else "generic")

    files = ensure_model(spec, assume_yes=assume_yes, interactive=interactive)
    from thyme_cli.engine.llama.engine import EngineOptions, LlamaEngine, SamplingOptions

    extra = {"image_min_tokens": settings.min_image_tokens} if settings.min_image_tokens else {}
    options = EngineOptions.from_spec(
        spec, n_ctx=settings.n_ctx, max_image_tokens=settings.max_image_tokens,
        n_gpu_layers=settings.gpu_layers, n_threads=settings.threads, flash_attn=settings.flash_attn,
        chat_format=settings.chat_format or spec.chat_format or "auto",
        chat_template_file=settings.chat_template or spec.chat_template, **extra,
    )
    if settings.n_seq > 1:  # each sequence gets the context one question would have
        from dataclasses import replace as _replace

        options = _replace(options, n_seq=settings.n_seq, n_ctx=options.n_ctx * settings.n_seq)
    sampling = SamplingOptions(
        temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k, seed=settings.seed
    )
    engine = LlamaEngine.load(files.model, files.mmproj, options=options, sampling=sampling)
    return LoadedModel(engine, spec)


@dataclass
class QuestionSettings:
    sandbox: str = "auto"
    step_timeout_s: float = 30.0
    limits: Limits | None = None  # sandbox limits (None: the defaults)
    keep_images: str = "all"  # batch/eval: which step images a run dir keeps (run_storage.KEEP_CHOICES)
    agent: AgentOptions = field(default_factory=AgentOptions)
    samples: int = 1  # --samples: trajectories per question, answer by vote (thyme_cli/question/samples.py)


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

    return open_sandbox(settings.sandbox, image=input_image.path, images_dir=run_dir / "images",
                        timeout_s=settings.step_timeout_s, limits=settings.limits)


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
        if sandbox is not None:
            sandbox.close()
        raise UsageError("the question is empty")
    if settings.samples > 1:
        if sandbox is not None:
            sandbox.close()  # each trajectory opens its own
        from thyme_cli.question.samples import ask_samples

        base = getattr(model.engine, "sampling", None)
        return ask_samples(model, input_image, question, run_dir, settings, events, n=settings.samples,
                           seed=getattr(base, "seed", 0))
    for note in input_image.notes:
        events.note(f"input image {note}")
    with sandbox or open_question_sandbox(input_image, run_dir, settings) as sandbox:
        trace = Trace(
            question=question,
            image=input_image.path.name,
            image_source=input_image.source,
            image_size=(input_image.width, input_image.height),
            model=model.spec.name,
            protocol=model.spec.protocol,
            sandbox=sandbox.backend,
            notes=[f"input image {n}" for n in input_image.notes],
        )
        opener: Any = model.engine.open
        conversation = opener(sampling) if sampling is not None else opener()  # a seed per --samples trajectory
        if hasattr(conversation, "on_progress"):  # engines that can tell how a long feed is going
            setattr(conversation, "on_progress", getattr(events, "progress", None))  # noqa: B010
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
