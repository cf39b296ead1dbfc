"""Will this model fit? An estimate from the GGUF headers, checked before anything loads.

Weights + KV cache for n_ctx + compute buffers, against the machine's physical memory (or cgroup
limit): a load that cannot fit is refused in one line instead of meeting the OOM killer minutes
later (docs/engine.md, "Options").
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from thyme_cli.engine.llama.gguf_meta import read_gguf_keys
from thyme_cli.engine.settings import EngineOptions
from thyme_cli.errors import EngineError

# Set to a byte count to override the detected memory (containers whose limit is not visible, tests).
MEMORY_ENV = "THYME_MEMORY_BYTES"
# llama.cpp's compute buffers (prompt batches, the vision encoder's activations), the logits, and
# the Python process: measured peak RSS minus weights and KV on the real-shape 3B/7B benchmark.
COMPUTE_ALLOWANCE = 1_500_000_000
_KV_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    projector: int
    kv_cache: int
    compute: int
    attention: int = 0  # a prompt batch's attention scores at a full context (flash attention off)

    @property
    def total(self) -> int:
        return self.weights + self.projector + self.kv_cache + self.compute + self.attention


def estimate(model_path: Path, mmproj_path: Path, options: EngineOptions) -> MemoryEstimate:
    """Bytes one loaded pair needs with ``options`` (its context size and KV cache type)."""
    arch = read_gguf_keys(model_path, ["general.architecture"], what="model")["general.architecture"]
    keys = [
        f"{arch}.block_count",
        f"{arch}.embedding_length",
        f"{arch}.attention.head_count",
        f"{arch}.attention.head_count_kv",
        f"{arch}.attention.key_length",
        f"{arch}.attention.value_length",
    ]
    meta = read_gguf_keys(model_path, keys, what="model")

    def num(key: str, default: int = 0) -> int:
        value = meta.get(f"{arch}.{key}")
        return int(value) if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default

    n_layer, n_embd = num("block_count"), num("embedding_length")
    n_head = num("attention.head_count", 1)
    n_head_kv = num("attention.head_count_kv", n_head)
    k_len = num("attention.key_length", n_embd // n_head if n_head else 0)
    v_len = num("attention.value_length", k_len)
    kv = int(options.n_ctx * n_layer * n_head_kv * (k_len + v_len) * _KV_BYTES[options.kv_cache_type])
    # Without flash attention (the CPU default for the language model, engine/options.py) llama.cpp
    # materialises one batch's scores: batch x context x heads f32 values, reused layer by layer.
    attention = 0 if options.flash_attn else min(options.n_batch, options.n_ctx) * options.n_ctx * n_head * 4
    return MemoryEstimate(
        weights=model_path.stat().st_size,
        projector=mmproj_path.stat().st_size,
        kv_cache=kv,
        compute=COMPUTE_ALLOWANCE,
        attention=attention,
    )


def machine_memory() -> int | None:
    """Physical memory, or the cgroup's limit when lower; THYME_MEMORY_BYTES overrides both."""
    env = os.environ.get(MEMORY_ENV)
    if env:
        try:
            return int(env)
        except ValueError:
            raise EngineError(f"{MEMORY_ENV} must be a number of bytes, got {env!r}") from None
    total: int | None = None
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = None
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < (total or 1 << 62):
            total = int(raw)
    return total


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB"


def check_fits(model_path: Path, mmproj_path: Path, options: EngineOptions, *, on_gpu: bool) -> MemoryEstimate | None:
    """EngineError (before loading) when the pair cannot fit in this machine's memory.

    Skipped when layers go to a GPU: there the weights live in video memory, which llama.cpp
    checks itself."""
    if on_gpu:
        return None
    have = machine_memory()
    need = estimate(model_path, mmproj_path, options)
    if have is not None and need.total > have:
        raise EngineError(
            f"{model_path.name} needs about {_gb(need.total)} of memory (model {_gb(need.weights)}, projector "
            f"{_gb(need.projector)}, {options.n_ctx}-token context {_gb(need.kv_cache)}, buffers "
            f"{_gb(need.compute + need.attention)}) but this machine has {_gb(have)}",
            hint="use a smaller model, a shorter --ctx, or a machine with more memory",
        )
    return need
