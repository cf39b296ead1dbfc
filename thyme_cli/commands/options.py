"""Option types shared by the commands that run the model (ask, batch, replay)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

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


class OnError(StrEnum):
    show = "show"
    retry = "retry"


ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Model name from `thyme models list`, or any GGUF vision repo on the Hub: "
                 "hf.co/ORG/REPO[:QUANT] (default: the registry's default).",
                 rich_help_panel=MODEL_PANEL),
]
TemperatureOpt = Annotated[
    float,
    typer.Option("--temperature", "-t", min=0.0, help="Sampling temperature for prose; code is always greedy.",
                 rich_help_panel=MODEL_PANEL),
]
TopPOpt = Annotated[float, typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling.", rich_help_panel=MODEL_PANEL)]
TopKOpt = Annotated[int, typer.Option("--top-k", min=0, help="Top-k sampling (0 = off).", rich_help_panel=MODEL_PANEL)]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed for sampling.", rich_help_panel=MODEL_PANEL)]
CtxOpt = Annotated[
    int | None, typer.Option("--ctx", min=512, help="Context size in tokens (default: the model's).", rich_help_panel=MODEL_PANEL)
]
MaxImageTokensOpt = Annotated[
    int | None,
    typer.Option("--max-image-tokens", min=4, help="Most vision tokens per image (default: the model's).",
                 rich_help_panel=MODEL_PANEL),
]
GpuLayersOpt = Annotated[
    int | None,
    typer.Option("--gpu-layers", help="Layers to offload to the GPU (default: all when the build has a GPU; 0 = CPU).",
                 rich_help_panel=MODEL_PANEL),
]
ThreadsOpt = Annotated[
    int | None, typer.Option("--threads", min=1, help="CPU threads (default: physical cores).", rich_help_panel=MODEL_PANEL)
]
FlashAttnOpt = Annotated[
    bool | None,
    typer.Option("--flash-attn/--no-flash-attn", help="Flash attention (default: llama.cpp decides).",
                 rich_help_panel=MODEL_PANEL),
]
ChatFormatOpt = Annotated[
    str | None,
    typer.Option("--chat-format", metavar="NAME",
                 help="Prompt format for a GGUF without a chat template: one of llama.cpp's built-in formats "
                      "(gemma, chatml, llama3, ...), or 'template' / 'auto'.", rich_help_panel=MODEL_PANEL),
]
ChatTemplateOpt = Annotated[
    Path | None,
    typer.Option("--chat-template", metavar="FILE", help="A Jinja chat template file to use instead of the GGUF's.",
                 rich_help_panel=MODEL_PANEL),
]
SamplesOpt = Annotated[
    int, typer.Option("--samples", min=1, max=16,
                      help="Trajectories per question, prose sampled at --temperature (code greedy); the answer "
                           "is their majority vote. A local model decodes them together from one shared prefix.",
                      rich_help_panel=MODEL_PANEL)
]
MaxTurnsOpt = Annotated[
    int, typer.Option("--max-turns", min=0, max=50, help="Code steps allowed before the model must answer.",
                      rich_help_panel=MODEL_PANEL)
]
MaxTokensOpt = Annotated[
    int, typer.Option("--max-tokens", min=16, help="Token budget of each model turn.", rich_help_panel=MODEL_PANEL)
]
SandboxOpt = Annotated[
    SandboxChoice,
    typer.Option("--sandbox", help="Where code runs: the first backend that starts (auto), nsjail, bwrap, or "
                 "none (NO isolation; only when you trust the model).", rich_help_panel=SANDBOX_PANEL),
]
StepTimeoutOpt = Annotated[
    float, typer.Option("--step-timeout", min=0.5, help="Seconds one code step may run.", rich_help_panel=SANDBOX_PANEL)
]
OnErrorOpt = Annotated[
    OnError,
    typer.Option("--on-error", help="A failed code step: show the error to the model, or discard the step and retry.",
                 rich_help_panel=SANDBOX_PANEL),
]
YesOpt = Annotated[
    bool, typer.Option("--yes", "-y", help="Download the model without asking when it is missing.",
                       rich_help_panel=MODEL_PANEL)
]
ScriptOpt = Annotated[
    Path | None,
    typer.Option("--script", help="Replay model replies from a JSON file instead of running a model (demos, tests).",
                 rich_help_panel=DEV_PANEL, exists=False),
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Show model counters and details.", rich_help_panel=OUTPUT_PANEL)]
BackendOpt = Annotated[
    Backend,
    typer.Option("--backend", envvar="THYME_BACKEND", help="Run the model here (local, llama.cpp) or on an "
                 "OpenAI-compatible server (openai: vLLM, SGLang, llama-server).", rich_help_panel=MODEL_PANEL),
]
BaseUrlOpt = Annotated[
    str | None,
    typer.Option("--base-url", envvar="THYME_BASE_URL", help="The server's URL for --backend openai, "
                 "e.g. http://gpu-box:8000/v1.", rich_help_panel=MODEL_PANEL),
]
ApiModelOpt = Annotated[
    str | None,
    typer.Option("--api-model", envvar="THYME_API_MODEL", help="The model name the server serves "
                 "(default: the only one it lists). The API key comes from THYME_API_KEY or OPENAI_API_KEY.",
                 rich_help_panel=MODEL_PANEL),
]
ProtocolOpt = Annotated[
    str | None,
    typer.Option("--protocol", help="Prompt protocol: thyme or generic (default: the --model entry's; "
                 "generic for hf.co/ references; thyme for a remote model without --model).", rich_help_panel=MODEL_PANEL),
]


def warn_if_unsandboxed(sandbox: SandboxChoice) -> None:
    """`--sandbox none` is allowed only when asked for, and never silently."""
    if sandbox == SandboxChoice.none:
        from thyme_cli.console import warn

        warn("--sandbox none: the model's code runs WITHOUT isolation, with your user's rights")
