"""Option types shared by the commands that run the model (ask, batch, eval, replay), and the one place
that turns those flags into settings."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from thyme_cli import defaults as d

if TYPE_CHECKING:
    from thyme_cli.models.loading import ModelSettings
    from thyme_cli.question.settings import QuestionSettings
    from thyme_cli.sandbox.host.limits import Limits

MODEL_PANEL = "Model"
SANDBOX_PANEL = "Sandbox"
OUTPUT_PANEL = "Output"
DEV_PANEL = "Developer"


class SandboxChoice(StrEnum):
    auto = "auto"
    nsjail = "nsjail"
    bwrap = "bwrap"
    none = "none"


class Backend(StrEnum):
    local = "local"
    openai = "openai"


class KeepImages(StrEnum):
    all = "all"
    final = "final"
    none = "none"


class OnError(StrEnum):
    show = "show"
    retry = "retry"


ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Model name from `thyme models list`, or any GGUF vision repo on the Hub: "
        "hf.co/ORG/REPO[:QUANT] (default: the registry's default).",
        rich_help_panel=MODEL_PANEL,
    ),
]
TemperatureOpt = Annotated[
    float,
    typer.Option(
        "--temperature",
        "-t",
        min=0.0,
        help="Sampling temperature for prose; code is always greedy.",
        rich_help_panel=MODEL_PANEL,
    ),
]
TopPOpt = Annotated[
    float, typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling.", rich_help_panel=MODEL_PANEL)
]
TopKOpt = Annotated[int, typer.Option("--top-k", min=0, help="Top-k sampling (0 = off).", rich_help_panel=MODEL_PANEL)]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed for sampling.", rich_help_panel=MODEL_PANEL)]
CtxOpt = Annotated[
    int | None,
    typer.Option("--ctx", min=512, help="Context size in tokens (default: the model's).", rich_help_panel=MODEL_PANEL),
]
MaxImageTokensOpt = Annotated[
    int | None,
    typer.Option(
        "--max-image-tokens",
        min=4,
        help="Most vision tokens per image (default: the model's).",
        rich_help_panel=MODEL_PANEL,
    ),
]
GpuLayersOpt = Annotated[
    int | None,
    typer.Option(
        "--gpu-layers",
        help="Layers to offload to the GPU (default: all when the build has a GPU; 0 = CPU).",
        rich_help_panel=MODEL_PANEL,
    ),
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option("--threads", min=1, help="CPU threads (default: physical cores).", rich_help_panel=MODEL_PANEL),
]
FlashAttnOpt = Annotated[
    bool | None,
    typer.Option(
        "--flash-attn/--no-flash-attn",
        help="The language model's flash attention (default: off on a CPU, llama.cpp decides on a GPU).",
        rich_help_panel=MODEL_PANEL,
    ),
]
ChatFormatOpt = Annotated[
    str | None,
    typer.Option(
        "--chat-format",
        metavar="NAME",
        help="Prompt format for a GGUF without a chat template: one of llama.cpp's built-in formats "
        "(gemma, chatml, llama3, ...), or 'template' / 'auto'.",
        rich_help_panel=MODEL_PANEL,
    ),
]
ChatTemplateOpt = Annotated[
    Path | None,
    typer.Option(
        "--chat-template",
        metavar="FILE",
        help="A Jinja chat template file to use instead of the GGUF's.",
        rich_help_panel=MODEL_PANEL,
    ),
]
SamplesOpt = Annotated[
    int,
    typer.Option(
        "--samples",
        min=1,
        max=16,
        help="Trajectories per question, prose sampled at --temperature (code greedy); the answer "
        "is their majority vote. A local model decodes them together from one shared prefix.",
        rich_help_panel=MODEL_PANEL,
    ),
]
MaxTurnsOpt = Annotated[
    int,
    typer.Option(
        "--max-turns",
        min=0,
        max=50,
        help="Code steps allowed before the model must answer.",
        rich_help_panel=MODEL_PANEL,
    ),
]
MaxTokensOpt = Annotated[
    int, typer.Option("--max-tokens", min=16, help="Token budget of each model turn.", rich_help_panel=MODEL_PANEL)
]
SandboxOpt = Annotated[
    SandboxChoice,
    typer.Option(
        "--sandbox",
        help="Where code runs: the first backend that starts (auto), nsjail, bwrap, or "
        "none (NO isolation; only when you trust the model).",
        rich_help_panel=SANDBOX_PANEL,
    ),
]
StepTimeoutOpt = Annotated[
    float, typer.Option("--step-timeout", min=0.5, help="Seconds one code step may run.", rich_help_panel=SANDBOX_PANEL)
]
StepImagesOpt = Annotated[
    str | None,
    typer.Option(
        "--step-images",
        metavar="PIXELS,BYTES",
        help="Most that one code step's images may add up to on the host, e.g. 100MP,256MB "
        "(default; bytes counted uncompressed); the rest are skipped with a note.",
        rich_help_panel=SANDBOX_PANEL,
    ),
]
QuestionImagesOpt = Annotated[
    str | None,
    typer.Option(
        "--question-images",
        metavar="PIXELS,BYTES",
        help="The same for all the steps of one question, e.g. 400MP,1GB (default).",
        rich_help_panel=SANDBOX_PANEL,
    ),
]
KeepImagesOpt = Annotated[
    KeepImages,
    typer.Option(
        "--keep-images",
        help="Step images each item's run directory keeps: all, final (those of the "
        "last step that made any) or none. The input is linked, not copied, when thyme does not "
        "change it.",
        rich_help_panel=OUTPUT_PANEL,
    ),
]
OnErrorOpt = Annotated[
    OnError,
    typer.Option(
        "--on-error",
        help="A failed code step: show the error to the model, or discard the step and retry.",
        rich_help_panel=SANDBOX_PANEL,
    ),
]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run: skip the items already in -o.")]
ShardOpt = Annotated[str | None, typer.Option("--shard", help="Run only shard i of N (i/N, 1-based), for N machines.")]
JobsOpt = Annotated[
    int,
    typer.Option(
        "--jobs",
        "-j",
        min=1,
        max=256,
        help="Items in flight at once: parallel requests to a remote server, or with a "
        "local model sequences of one llama.cpp context decoded together.",
    ),
]
RunsOpt = Annotated[
    Path | None, typer.Option("--runs", help="Where each item's run directory goes (default: next to -o).")
]
YesOpt = Annotated[
    bool,
    typer.Option(
        "--yes", "-y", help="Download the model without asking when it is missing.", rich_help_panel=MODEL_PANEL
    ),
]
ScriptOpt = Annotated[
    Path | None,
    typer.Option(
        "--script",
        help="Replay model replies from a JSON file instead of running a model (demos, tests).",
        rich_help_panel=DEV_PANEL,
        exists=False,
    ),
]
VerboseOpt = Annotated[
    bool, typer.Option("--verbose", "-v", help="Show model counters and details.", rich_help_panel=OUTPUT_PANEL)
]
BackendOpt = Annotated[
    Backend,
    typer.Option(
        "--backend",
        envvar="THYME_BACKEND",
        help="Run the model here (local, llama.cpp) or on an "
        "OpenAI-compatible server (openai: vLLM, SGLang, llama-server).",
        rich_help_panel=MODEL_PANEL,
    ),
]
BaseUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--base-url",
        envvar="THYME_BASE_URL",
        help="The server's URL for --backend openai, e.g. http://gpu-box:8000/v1.",
        rich_help_panel=MODEL_PANEL,
    ),
]
ApiModelOpt = Annotated[
    str | None,
    typer.Option(
        "--api-model",
        envvar="THYME_API_MODEL",
        help="The model name the server serves "
        "(default: the only one it lists). The API key comes from THYME_API_KEY or OPENAI_API_KEY.",
        rich_help_panel=MODEL_PANEL,
    ),
]
ProtocolOpt = Annotated[
    str | None,
    typer.Option(
        "--protocol",
        help="Prompt protocol: thyme or generic (default: the --model entry's; "
        "generic for hf.co/ references; thyme for a remote model without --model).",
        rich_help_panel=MODEL_PANEL,
    ),
]


def warn_if_unsandboxed(sandbox: SandboxChoice) -> None:
    """`--sandbox none` is allowed only when asked for, and never silently."""
    if sandbox == SandboxChoice.none:
        from thyme_cli.ui.console import warn

        warn("--sandbox none: the model's code runs WITHOUT isolation, with your user's rights")


def parse_image_budget(text: str, option: str) -> tuple[int | None, int | None]:
    """'100MP,128MB' -> (pixels, bytes); either part may be left out. Units: MP, KP, P (pixels)
    and GB, MB, KB, B (bytes, powers of 1024)."""
    from thyme_cli.errors import UsageError

    units = {"gp": 10**9, "mp": 10**6, "kp": 10**3, "p": 1,
             "gb": 1024**3, "mb": 1024**2, "kb": 1024, "b": 1}  # fmt: skip
    pixels: int | None = None
    size: int | None = None
    for part in (p.strip().lower() for p in text.split(",")):
        number = part.rstrip("gmkpb ")
        unit = part[len(number) :].strip()
        try:
            value = float(number)
        except ValueError:
            value = -1.0
        if unit not in units or value <= 0:
            raise UsageError(
                f"{option} {text!r}: expected something like 100MP,128MB",
                hint="pixels in MP (megapixels), bytes in MB; both must be positive",
            )
        amount = max(1, int(value * units[unit]))
        if unit.endswith("p"):
            pixels = amount
        else:
            size = amount
    return pixels, size


def sandbox_limits(step_images: str | None, question_images: str | None) -> Limits | None:
    """The sandbox limits with the image budgets asked for (None: all defaults)."""
    if step_images is None and question_images is None:
        return None
    import dataclasses

    from thyme_cli.sandbox.host.limits import Limits

    changes: dict[str, int] = {}
    for text, option, scope in ((step_images, "--step-images", "step"),
                                (question_images, "--question-images", "question")):  # fmt: skip
        if text is None:
            continue
        pixels, size = parse_image_budget(text, option)
        if pixels is not None:
            changes[f"{scope}_image_pixels"] = pixels
        if size is not None:
            changes[f"{scope}_image_bytes"] = size
    return dataclasses.replace(Limits(), **changes)


@dataclass(frozen=True)
class RunFlags:
    """The model and sandbox flags that ask, batch and eval share, as the command received them.

    A command declares them all at once with `@with_run_flags()` (they appear in its --help where
    its `flags` parameter stands) and receives them as one RunFlags."""

    model: str | None = None
    backend: Backend = Backend.local
    base_url: str | None = None
    api_model: str | None = None
    protocol: str | None = None
    sandbox: SandboxChoice = SandboxChoice.auto
    step_timeout: float = d.STEP_TIMEOUT_S
    step_images: str | None = None
    question_images: str | None = None
    keep_images: KeepImages = KeepImages.all
    on_error: OnError = OnError.show
    max_turns: int = d.MAX_TURNS
    samples: int = d.SAMPLES
    max_tokens: int = d.MAX_TOKENS
    temperature: float = d.TEMPERATURE
    top_p: float = d.TOP_P
    top_k: int = d.TOP_K
    seed: int = d.SEED
    ctx: int | None = None
    max_image_tokens: int | None = None
    gpu_layers: int | None = None
    threads: int | None = None
    flash_attn: bool | None = None
    chat_format: str | None = None
    chat_template: Path | None = None
    yes: bool = False
    script: Path | None = None

    @classmethod
    def of(cls, params: Mapping[str, Any]) -> RunFlags:
        """The shared flags among a command's parameters (the others are the command's own)."""
        names = {f.name for f in fields(cls)}
        return cls(**{name: value for name, value in params.items() if name in names})

    def settings(self, *, n_seq: int = 1) -> tuple[ModelSettings, QuestionSettings]:
        """The settings the library runs with (eval puts the paper's on top: eval/run.py).
        n_seq: sequences of one context decoded together (ask --samples with a local model)."""
        return self._model_settings(n_seq), self.question_settings()

    def _model_settings(self, n_seq: int) -> ModelSettings:
        from thyme_cli.models.loading import ModelSettings

        return ModelSettings(
            name=self.model,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
            n_ctx=self.ctx,
            max_image_tokens=self.max_image_tokens,
            gpu_layers=self.gpu_layers,
            threads=self.threads,
            flash_attn=self.flash_attn,
            chat_format=self.chat_format,
            chat_template=self.chat_template,
            script=self.script,
            backend=self.backend.value,
            base_url=self.base_url,
            api_model=self.api_model,
            protocol=self.protocol,
            n_seq=n_seq,
        )

    def question_settings(self) -> QuestionSettings:
        """How each question runs: the sandbox, its limits, the loop's options (replay: the sandbox only)."""
        from thyme_cli.question.loop import AgentOptions
        from thyme_cli.question.settings import QuestionSettings

        return QuestionSettings(
            sandbox=self.sandbox.value,
            step_timeout_s=self.step_timeout,
            limits=sandbox_limits(self.step_images, self.question_images),
            keep_images=self.keep_images.value,
            agent=AgentOptions(max_turns=self.max_turns, max_step_tokens=self.max_tokens, on_error=self.on_error.value),
            samples=self.samples,
        )


# The option type of each RunFlags field, in RunFlags' order (the order of --help).
_OPTION_TYPES: dict[str, Any] = {
    "model": ModelOpt,
    "backend": BackendOpt,
    "base_url": BaseUrlOpt,
    "api_model": ApiModelOpt,
    "protocol": ProtocolOpt,
    "sandbox": SandboxOpt,
    "step_timeout": StepTimeoutOpt,
    "step_images": StepImagesOpt,
    "question_images": QuestionImagesOpt,
    "keep_images": KeepImagesOpt,
    "on_error": OnErrorOpt,
    "max_turns": MaxTurnsOpt,
    "samples": SamplesOpt,
    "max_tokens": MaxTokensOpt,
    "temperature": TemperatureOpt,
    "top_p": TopPOpt,
    "top_k": TopKOpt,
    "seed": SeedOpt,
    "ctx": CtxOpt,
    "max_image_tokens": MaxImageTokensOpt,
    "gpu_layers": GpuLayersOpt,
    "threads": ThreadsOpt,
    "flash_attn": FlashAttnOpt,
    "chat_format": ChatFormatOpt,
    "chat_template": ChatTemplateOpt,
    "yes": YesOpt,
    "script": ScriptOpt,
}


def with_run_flags(
    *, leave_out: Collection[str] = (), last: Collection[str] = (), **replace: Any
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Declare the shared flags on a Typer command in place of its `flags: RunFlags` parameter; the
    command is called with them as one RunFlags. `leave_out`: flags the command does not take;
    `last`: flags listed after the command's own; `replace`: NAME=OptionType or NAME=(OptionType,
    default) for a flag the command declares differently (eval's --ctx, its --on-error default)."""
    shared = [_flag_parameter(f.name, f.default, replace.get(f.name)) for f in fields(RunFlags)]
    taken = [p for p in shared if p.name not in leave_out]

    def declare(command: Callable[..., None]) -> Callable[..., None]:
        own = list(inspect.signature(command, eval_str=True).parameters.values())
        at = [p.name for p in own].index("flags")
        first, tail = [p for p in taken if p.name not in last], [p for p in taken if p.name in last]
        after = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own[at + 1 :]]
        parameters = [*own[:at], *first, *after, *tail]

        @functools.wraps(command)
        def run_command(**kwargs: Any) -> None:
            given = {p.name: kwargs.pop(p.name) for p in taken}
            command(**kwargs, flags=RunFlags(**given))

        run_command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        return run_command

    return declare


def _flag_parameter(name: str, default: Any, replacement: Any) -> inspect.Parameter:
    """One shared flag as the keyword parameter Typer reads: its option type and default."""
    option_type = _OPTION_TYPES[name]
    if isinstance(replacement, tuple):
        option_type, default = replacement
    elif replacement is not None:
        option_type = replacement
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=option_type)
