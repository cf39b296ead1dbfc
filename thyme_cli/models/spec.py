"""What thyme knows about one model: a ``ModelSpec`` (a plain record, no I/O).

Where its two GGUF files come from (a Hub repo, or local paths the user registered) and how to
talk to it (prompt protocol, context size, image-token limits). The registry (registry.py) reads
them from models.toml and the user's config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

# The prompt format a model was trained on: Thyme's own, or a generic chat model's.
PromptProtocol = Literal["thyme", "generic"]
PROTOCOLS: tuple[str, ...] = ("thyme", "generic")


@dataclass(frozen=True)
class ModelSpec:
    """One model thyme knows about."""

    name: str
    description: str = ""
    repo: str | None = None
    model_file: str | None = None
    mmproj_file: str | None = None
    revision: str | None = None
    size_gb: float | None = None
    license: str | None = None
    protocol: PromptProtocol = "generic"
    n_ctx: int = 8192
    image_min_tokens: int | None = None
    image_max_tokens: int | None = None
    needs_conversion: bool = False
    # A needs_conversion model made from a local safetensors checkpoint instead of a Hub repo.
    source_dir: Path | None = None
    # Local GGUF pairs registered with `thyme models add` (no Hub involved).
    model_path: Path | None = None
    mmproj_path: Path | None = None
    source: Literal["builtin", "user"] = "builtin"
    # For GGUFs without a chat template: a llama.cpp built-in format name, or a Jinja template file.
    chat_format: str | None = None
    chat_template: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def is_local(self) -> bool:
        """True when the files are local paths rather than Hub files."""
        return self.model_path is not None
