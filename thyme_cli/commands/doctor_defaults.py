"""What the engine would use on this machine, and why: the rows `thyme doctor` adds about CPU defaults
and memory. Kept apart from the checks of doctor.py (which ask "does it work?")."""

from __future__ import annotations

from typing import TYPE_CHECKING

from thyme_cli.ui.console import human_size

if TYPE_CHECKING:
    from thyme_cli.models.spec import ModelSpec

# (name, status, detail, hint), as doctor.Check takes them.
Row = tuple[str, str, str, str]


def engine_defaults() -> list[Row]:
    from thyme_cli.engine.llama.cpu import cpu_defaults
    from thyme_cli.engine.settings import EngineOptions

    cpu = cpu_defaults()
    base = EngineOptions()
    rows: list[Row] = [
        ("cpu", "ok", f"{cpu.logical} CPU(s) usable, {cpu.physical} physical core(s)", ""),
        (
            "threads",
            "ok",
            cpu.why + f"; the vision projector uses {cpu.batch_threads}",
            "override with --threads N (one count for everything)",
        ),
        (
            "KV cache",
            "ok",
            f"{base.kv_cache_type}, batch {base.n_batch} tokens (q8_0 saves little time at "
            "Thyme's context lengths and needs flash attention)",
            "",
        ),
        (
            "flash attention",
            "ok",
            "off for the language model on a CPU (its prompt batches are faster without, "
            "and --jobs sequences match a single one), llama.cpp's choice on a GPU; on for the image encoder "
            "(about 4x faster, gigabytes less memory)",
            "override the language model's with --flash-attn",
        ),
        (
            "model loading",
            "ok",
            "mmap (the weights stay in the page cache between runs, so a warm load takes seconds), no mlock",
            "",
        ),
    ]
    rows += _model_rows()
    return rows


def _model_rows() -> list[Row]:
    """Image-token budget and memory for the default model (from the registry; estimate if installed)."""
    from thyme_cli.engine.llama.memory import machine_memory
    from thyme_cli.errors import ThymeError
    from thyme_cli.models.registry import load_registry
    from thyme_cli.models.store import preferred_default

    have = machine_memory()
    memory = ("memory", "ok", f"{human_size(have)} on this machine" if have else "unknown", "")
    try:
        registry = load_registry()
        name = preferred_default(registry)
        spec = registry.get(name)
    except ThymeError:
        return [memory]
    tokens = (
        "image tokens",
        "ok",
        f"{name}: {spec.image_min_tokens or '-'} to "
        f"{spec.image_max_tokens or '-'} per image, context {spec.n_ctx} tokens",
        "lower with --max-image-tokens / --ctx to save time and memory",
    )
    return [tokens, _memory_need(name, spec, have) or memory]


def _memory_need(name: str, spec: ModelSpec, have: int | None) -> Row | None:
    """Whether the installed model fits this machine's memory (None: not installed, or no estimate)."""
    from thyme_cli.engine.llama.memory import estimate
    from thyme_cli.engine.settings import EngineOptions
    from thyme_cli.errors import ThymeError
    from thyme_cli.models.store import installed_files

    files = installed_files(spec)
    if files is None or have is None:
        return None
    try:
        need = estimate(files.model, files.mmproj, EngineOptions.from_spec(spec))
    except ThymeError:
        return None
    fits = need.total <= have
    return (
        "memory",
        "ok" if fits else "fail",
        f"{name} needs about {human_size(need.total)} of {human_size(have)} (model {human_size(need.weights)}, "
        f"projector {human_size(need.projector)}, KV cache {human_size(need.kv_cache)})",
        "" if fits else "use a smaller model or a shorter --ctx",
    )
