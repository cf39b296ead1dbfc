"""Settings of the llama.cpp engine: one dataclass for load time, one for sampling.

Kept free of heavy imports so the CLI can build them (and validate flags) without loading
llama_cpp.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Protocol

from thyme_cli.defaults import SEED, TEMPERATURE, TOP_K, TOP_P
from thyme_cli.errors import UsageError


class ModelSizes(Protocol):
    """What the engine reads from a model's registry entry (models.spec.ModelSpec has these)."""

    @property
    def n_ctx(self) -> int: ...
    @property
    def image_min_tokens(self) -> int | None: ...
    @property
    def image_max_tokens(self) -> int | None: ...


ImageResize = Literal["auto", "qwen", "none"]
# "auto", "chatml", "template", or the name of one of llama.cpp's built-in formats ("gemma", ...).
ChatFormat = str
KvCacheType = Literal["f32", "f16", "bf16", "q8_0", "q4_0"]


@dataclass(frozen=True)
class EngineOptions:
    """How to load a model + projector pair.

    ``None`` means "let the engine pick": all layers on the GPU when the build can offload
    (else 0), one thread per physical core for decoding and every CPU for prompt/image work
    (engine/cpu.py), flash attention off for the language model on a CPU and as llama.cpp decides
    elsewhere and for the projector (measured: docs/engine.md "CPU defaults"), the projector on
    the GPU when there is one.
    """

    n_ctx: int = 16384
    n_gpu_layers: int | None = None
    n_threads: int | None = None
    # The language model's flash attention. None: off when every layer runs on the CPU (its prompt
    # batches are faster without it, and sequences decoded together then match one decoded alone),
    # llama.cpp's choice on a GPU.
    flash_attn: bool | None = None
    # The vision encoder's. None: llama.cpp's choice (on a CPU: on; without it a photo encodes
    # about 4x slower and its attention matrices need gigabytes).
    mmproj_flash_attn: bool | None = None
    # Vision-token limits per image, set on the mtmd context. For Qwen-VL projectors they also
    # set smart_resize's min/max pixels (tokens * factor**2), so the two sizing rules agree.
    image_min_tokens: int | None = None
    image_max_tokens: int | None = None
    image_resize: ImageResize = "auto"
    chat_format: ChatFormat = "auto"
    chat_template_file: Path | None = None  # a Jinja template used instead of the GGUF's
    mmproj_gpu: bool | None = None
    # Run the vision encoder once at load so its buffers are allocated before the first image.
    # None: only when the projector is on the GPU (on a CPU a max-size dummy image is slow).
    mmproj_warmup: bool | None = None
    n_batch: int = 512
    # KV cache precision: f16 is llama.cpp's default; q8_0 halves its memory (needs flash
    # attention for V); f32 makes incremental and from-scratch evaluation agree to float rounding.
    kv_cache_type: KvCacheType = "f16"
    # Room kept free for the model's reply: a feed that would leave less raises EngineError
    # before anything is evaluated (instead of failing mid-answer).
    reserve_tokens: int = 512
    # Sequences the context can hold at once (engine/parallel.py decodes them together).
    n_seq: int = 1
    # Map the weights instead of reading them into private memory: they stay in the page cache
    # between runs (a warm load is a few seconds) and are not counted twice. Off reads them in full.
    use_mmap: bool = True
    verbose: bool = False

    def __post_init__(self) -> None:
        if self.n_ctx < 64:
            raise UsageError(f"context size {self.n_ctx} is too small", hint="use --ctx 4096 or more")
        if self.n_threads is not None and self.n_threads < 1:
            raise UsageError(f"thread count must be >= 1, got {self.n_threads}")
        for name in ("image_min_tokens", "image_max_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"{name} must be >= 1, got {value}")
        if self.n_batch < 1:
            raise UsageError(f"n_batch must be >= 1, got {self.n_batch}")
        if not 1 <= self.n_seq <= 64:
            raise UsageError(f"n_seq must be 1 to 64, got {self.n_seq}")
        if self.reserve_tokens < 0:
            raise UsageError(f"reserve_tokens must be >= 0, got {self.reserve_tokens}")
        if self.image_resize not in ("auto", "qwen", "none"):
            raise UsageError(f"image_resize must be auto, qwen or none, got {self.image_resize!r}")
        if self.kv_cache_type not in ("f32", "f16", "bf16", "q8_0", "q4_0"):
            raise UsageError(f"kv_cache_type must be f32, f16, bf16, q8_0 or q4_0, got {self.kv_cache_type!r}")
        if not self.chat_format.strip():
            raise UsageError("chat_format must not be empty", hint="auto, template, or a llama.cpp format like gemma")

    @property
    def token_limits(self) -> tuple[int | None, int | None]:
        """(min, max) vision tokens per image; a max below the min pulls the min down with it."""
        lo, hi = self.image_min_tokens, self.image_max_tokens
        if lo is not None and hi is not None and lo > hi:
            lo = hi
        return lo, hi

    @classmethod
    def from_spec(
        cls,
        spec: ModelSizes,
        *,
        n_ctx: int | None = None,
        max_image_tokens: int | None = None,
        **overrides: object,
    ) -> EngineOptions:
        """Options for a registry entry, with the user's --ctx / --max-image-tokens on top."""
        base = cls(
            n_ctx=n_ctx or spec.n_ctx,
            image_min_tokens=spec.image_min_tokens,
            image_max_tokens=max_image_tokens or spec.image_max_tokens,
        )
        return replace(base, **overrides)  # type: ignore[arg-type]


@dataclass(frozen=True)
class SamplingOptions:
    """Sampling outside code blocks; inside ``<code>...</code>`` decoding is always greedy (ATS).

    temperature 0 is greedy everywhere (deterministic). top_k 0, top_p 1 and min_p 0 switch
    those filters off. The seed makes warm sampling reproducible: every question starts from it.
    """

    temperature: float = TEMPERATURE
    top_p: float = TOP_P
    top_k: int = TOP_K
    min_p: float = 0.0
    seed: int = SEED
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    # Token id -> additive bias, applied everywhere (both inside and outside code).
    logit_bias: Mapping[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise UsageError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise UsageError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise UsageError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 <= self.min_p < 1.0:
            raise UsageError(f"min_p must be in [0, 1), got {self.min_p}")
        if self.repeat_penalty <= 0:
            raise UsageError(f"repeat_penalty must be > 0, got {self.repeat_penalty}")
        if not 0 <= self.seed <= 0xFFFFFFFE:
            raise UsageError(f"seed must be in [0, 4294967294], got {self.seed}")

    @property
    def greedy(self) -> bool:
        """True when prose is decoded greedily too (one sampler serves the whole turn)."""
        return self.temperature == 0.0
