"""Loading a model: the name resolved in the registry, its files made present, an engine built.

The local engine (llama.cpp), a remote OpenAI-compatible server, or a scripted engine (tests,
`thyme replay`). `thyme ask` loads once per question, `thyme batch` once per batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, cast
from urllib.parse import urlsplit

from thyme_cli.defaults import SEED, TEMPERATURE, TOP_K, TOP_P
from thyme_cli.engine.base import Engine
from thyme_cli.errors import UsageError
from thyme_cli.models.registry import Registry
from thyme_cli.models.spec import PROTOCOLS, ModelSpec, PromptProtocol

if TYPE_CHECKING:
    from collections.abc import Callable

    from thyme_cli.engine.remote.chat import RemoteSampling
    from thyme_cli.engine.remote.engine import RemoteConfig
    from thyme_cli.engine.remote.http import RemoteClient
    from thyme_cli.engine.remote.probe import ServerCaps
    from thyme_cli.engine.settings import EngineOptions


@dataclass
class ModelSettings:
    """Everything about which model runs and how it samples (from the command line)."""

    name: str | None = None
    temperature: float = TEMPERATURE
    top_p: float = TOP_P
    top_k: int = TOP_K
    seed: int = SEED
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
        return _load_scripted(registry, settings, settings.script)
    if settings.backend == "openai":
        return load_remote(registry, settings)
    from thyme_cli.models.pull import ensure_model

    spec = _local_spec(registry, settings)
    files = ensure_model(spec, assume_yes=assume_yes, interactive=interactive)
    from thyme_cli.engine.llama.engine import LlamaEngine  # after the download: llama.cpp takes a while to import
    from thyme_cli.engine.settings import SamplingOptions

    sampling = SamplingOptions(
        temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k, seed=settings.seed
    )
    engine = LlamaEngine.load(files.model, files.mmproj, options=_engine_options(spec, settings), sampling=sampling)
    return LoadedModel(engine, spec)


def _load_scripted(registry: Registry, settings: ModelSettings, script: Path) -> LoadedModel:
    """A scripted engine (tests, `thyme replay`), under the named model's spec or a stand-in one."""
    from thyme_cli.engine.scripted import ScriptedEngine

    spec = (
        registry.get(settings.name)
        if settings.name
        else ModelSpec(name="scripted", protocol="thyme", model_path=script, mmproj_path=script)
    )
    return LoadedModel(ScriptedEngine.from_file(script), spec)


def _local_spec(registry: Registry, settings: ModelSettings) -> ModelSpec:
    """The registry entry of --model (or the default model), with --protocol applied."""
    from thyme_cli.models.store import preferred_default

    spec = registry.get(settings.name or preferred_default(registry))
    if settings.protocol is not None:  # e.g. --model hf.co/ORG/REPO:QUANT --protocol thyme
        if settings.protocol not in PROTOCOLS:
            raise UsageError(f"--protocol must be one of {', '.join(PROTOCOLS)}")
        spec = replace(spec, protocol="thyme" if settings.protocol == "thyme" else "generic")
    return spec


def _engine_options(spec: ModelSpec, settings: ModelSettings) -> EngineOptions:
    """The llama.cpp engine's options: the entry's, overridden by the flags."""
    from thyme_cli.engine.settings import EngineOptions

    extra = {"image_min_tokens": settings.min_image_tokens} if settings.min_image_tokens else {}
    options = EngineOptions.from_spec(
        spec,
        n_ctx=settings.n_ctx,
        max_image_tokens=settings.max_image_tokens,
        n_gpu_layers=settings.gpu_layers,
        n_threads=settings.threads,
        flash_attn=settings.flash_attn,
        chat_format=settings.chat_format or spec.chat_format or "auto",
        chat_template_file=settings.chat_template or spec.chat_template,
        **extra,
    )
    if settings.n_seq > 1:  # each sequence gets the context one question would have
        options = replace(options, n_seq=settings.n_seq, n_ctx=options.n_ctx * settings.n_seq)
    return options


# ---- a model on an OpenAI-compatible server (--backend openai) -----------------------------------

_LOCAL_ONLY = (
    ("n_ctx", "--ctx"),
    ("gpu_layers", "--gpu-layers"),
    ("threads", "--threads"),
    ("flash_attn", "--flash-attn"),
)


def load_remote(registry: Registry, settings: ModelSettings) -> LoadedModel:
    """Connect, pick the served model, measure what the server can do; clear one-line errors."""
    from thyme_cli.engine.remote.engine import RemoteConfig, RemoteEngine, check_sampling
    from thyme_cli.engine.remote.probe import find_api_root, pick_model, probe_caps
    from thyme_cli.ui.console import warn

    protocol = _protocol(registry, settings)
    check_sampling(settings.temperature, settings.top_p, settings.top_k, settings.seed)
    entry = registry.get(settings.name) if settings.name else None
    config = RemoteConfig.from_env(settings.base_url)
    for attr, flag in _LOCAL_ONLY:
        if getattr(settings, attr) is not None:
            warn(f"{flag} has no effect with --backend openai (the server decides)")
    client = _remote_client(config, warn)
    try:
        model = pick_model(find_api_root(client), settings.api_model, client.shown_url)
        caps = probe_caps(client, model)
    except BaseException:
        client.close()
        raise
    notes = _caps_notes(caps, settings.temperature)
    for note in notes:
        warn(note)
    host = urlsplit(client.base_url).hostname or "server"
    sampling = _remote_sampling(settings, entry)
    engine = RemoteEngine(client, model, caps, sampling, config.extra_body, name=f"openai:{model}@{host}")
    spec = ModelSpec(name=model, description=f"{model} served at {client.shown_url} ({caps.detail})", protocol=protocol)
    return LoadedModel(engine, spec, notes)


def _remote_client(config: RemoteConfig, warn: Callable[[str], None]) -> RemoteClient:
    """The HTTP client of the server (its retries are reported as warnings)."""
    from thyme_cli.engine.remote.http import RemoteClient

    return RemoteClient(
        config.base_url,
        api_key=config.api_key,
        timeout_s=config.timeout_s,
        policy=config.policy,
        on_retry=_retry_warner(warn),
    )


def _remote_sampling(settings: ModelSettings, entry: ModelSpec | None) -> RemoteSampling:
    """Sampling flags as the server gets them; the image token cap falls back to the registry entry's."""
    from thyme_cli.engine.remote.chat import RemoteSampling

    return RemoteSampling(
        temperature=settings.temperature,
        top_p=settings.top_p,
        top_k=settings.top_k,
        seed=settings.seed,
        max_image_tokens=settings.max_image_tokens or (entry.image_max_tokens if entry else None),
    )


def _retry_warner(warn: Callable[[str], None]) -> Callable[[str], None]:
    return lambda message: warn(f"server: {message}")


def _caps_notes(caps: ServerCaps, temperature: float) -> list[str]:
    if not caps.continues:
        notes = [
            "this server does not continue an assistant message: Thyme's sandbox results go back as "
            "user turns, a format the model was not trained on (vLLM, SGLang and llama-server continue it)"
        ]
        if temperature > 0:
            notes.append("without continuation code is sampled at --temperature too (no greedy code blocks)")
        return notes
    if not caps.assistant_images:
        return [
            "this server takes no images inside an assistant message: image results of code steps go back "
            "as user turns (text results stay in the assistant turn)"
        ]
    return []


def _protocol(registry: Registry, settings: ModelSettings) -> PromptProtocol:
    if settings.protocol is not None:
        if settings.protocol not in PROTOCOLS:
            raise UsageError(f"--protocol must be one of {', '.join(PROTOCOLS)}, not {settings.protocol!r}")
        return cast("PromptProtocol", settings.protocol)
    if settings.name:
        return registry.get(settings.name).protocol
    return "thyme"
