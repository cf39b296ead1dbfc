"""What a conversion starts from: a Qwen2.5-VL safetensors checkpoint, on disk or on the Hub.

Everything here is checked before the first big byte moves: a checkpoint that is not Qwen2.5-VL,
lacks its weights, tokenizer or image preprocessor config, or has a vision layout llama.cpp does
not implement, stops with one line that says which. Hub checkpoints are downloaded file by file
with thyme's own resumable, verified downloader into the standard Hugging Face cache.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thyme_cli.errors import UsageError
from thyme_cli.models.hub import cache as hub_cache

if TYPE_CHECKING:
    from thyme_cli.models.hub.fetch import RemoteFile
    from thyme_cli.ui.hub_progress import Progress

ARCHITECTURE = "Qwen2_5_VLForConditionalGeneration"
MODEL_TYPE = "qwen2_5_vl"
REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Files a conversion reads (top level of the repo): weights, configs, tokenizer, templates.
_WANTED_SUFFIXES = (".safetensors", ".json", ".jinja")
_WANTED_NAMES = frozenset({"merges.txt", "vocab.txt", "tokenizer.model"})
_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
NOT_QWEN_HINT = (
    "thyme converts Qwen2.5-VL checkpoints (Thyme-RL and other fine-tunes); "
    "for another model, register a ready GGUF pair with `thyme models add`"
)


@dataclass(frozen=True)
class Checkpoint:
    """A checked local checkpoint: where it is, its weight bytes, and bytes per weight as stored."""

    path: Path
    weights_bytes: int
    dtype_bytes: int


def check_config(config: Any, where: str) -> int:
    """Refuse what is not a Qwen2.5-VL config llama.cpp can run; return the stored bytes per weight."""
    if not isinstance(config, dict):
        raise UsageError(f"{where}/config.json is not a JSON object")
    nested = config.get("text_config")
    text: dict[str, Any] = nested if isinstance(nested, dict) else {}
    archs = [*(config.get("architectures") or []), *(text.get("architectures") or [])]
    if config.get("model_type") != MODEL_TYPE and ARCHITECTURE not in archs:
        kind = config.get("model_type") or (archs[0] if archs else "unknown")
        raise UsageError(f"{where} is not a Qwen2.5-VL checkpoint (model type {kind!r})", hint=NOT_QWEN_HINT)
    vision = config.get("vision_config")
    if not isinstance(vision, dict):
        raise UsageError(f"{where}/config.json has no vision_config", hint=NOT_QWEN_HINT)
    if vision.get("window_size", 112) != 112:
        raise UsageError(
            f"{where}: vision window_size {vision.get('window_size')} is not 112, the only one llama.cpp runs"
        )
    if int(vision.get("depth", 0)) < 3 or not vision.get("fullatt_block_indexes"):
        raise UsageError(
            f"{where}: the vision tower (depth {vision.get('depth')}, no full-attention blocks?) "
            "is not a Qwen2.5-VL layout llama.cpp runs"
        )
    dtype = config.get("torch_dtype") or config.get("dtype") or text.get("torch_dtype") or text.get("dtype")
    return _DTYPE_BYTES.get(str(dtype), 2)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    except ValueError as e:
        raise UsageError(f"{path} is not valid JSON: {e}") from None


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint; every shard the index names must be there."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map", {})
        names = sorted(set(weight_map.values())) if isinstance(weight_map, dict) else []
        missing = [n for n in names if not (folder / n).is_file()]
        if missing or not names:
            raise UsageError(
                f"{folder} is incomplete: {len(missing)} of {len(names)} weight shards missing"
                + (f" ({missing[0]}, ...)" if missing else ""),
                hint="download the whole checkpoint (every model-*.safetensors file)",
            )
        return [folder / n for n in names]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UsageError(f"{folder} has no .safetensors weights", hint="thyme converts safetensors checkpoints only")
    return files


def require_files(names: set[str], where: str) -> None:
    """The tokenizer and image preprocessor config the converter reads besides config and weights."""
    if "tokenizer.json" not in names and not {"vocab.json", "merges.txt"} <= names:
        raise UsageError(f"{where} has no tokenizer (tokenizer.json, or vocab.json + merges.txt)")
    if "preprocessor_config.json" not in names:
        raise UsageError(f"{where} has no preprocessor_config.json (the image normalisation the projector needs)")


def check_checkpoint(folder: Path) -> Checkpoint:
    """Everything the converter will read is present and is Qwen2.5-VL."""
    if not folder.is_dir():
        raise UsageError(f"{folder}: not a directory")
    if not (folder / "config.json").is_file():
        raise UsageError(f"{folder} is not a Hugging Face checkpoint: no config.json")
    dtype_bytes = check_config(_read_json(folder / "config.json"), str(folder))
    weights = weight_files(folder)
    require_files({p.name for p in folder.iterdir() if p.is_file()}, str(folder))
    return Checkpoint(folder, sum(p.stat().st_size for p in weights), dtype_bytes)


def fingerprint(folder: Path) -> str:
    """Identifies a local checkpoint's contents cheaply (names, sizes, mtimes), for resuming safely."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        st = path.stat()
        h.update(f"{path.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def wanted_files(listing: dict[str, int]) -> list[str]:
    """The repo files a conversion needs: top-level weights, configs, tokenizer and templates."""
    return sorted(
        name for name in listing if "/" not in name and (name.endswith(_WANTED_SUFFIXES) or name in _WANTED_NAMES)
    )


@dataclass(frozen=True)
class HubSnapshot:
    """A Hub checkpoint resolved to one commit: the files to fetch and their metadata."""

    repo: str
    revision: str
    commit: str
    remotes: list[RemoteFile]
    dtype_bytes: int
    new_files: tuple[str, ...]  # files whose bytes were not in the cache before this conversion

    @property
    def weights_bytes(self) -> int:
        return sum(r.size or 0 for r in self.remotes if r.filename.endswith(".safetensors"))

    @property
    def folder(self) -> Path:
        return hub_cache.repo_dir(self.repo) / "snapshots" / self.commit


def resolve_snapshot(repo: str, revision: str, progress: Progress) -> HubSnapshot:
    """Pin REVISION to a commit, list and HEAD the needed files, and check config.json before the weights."""
    from thyme_cli.models.hub import fetch as hub_fetch

    config = hub_fetch.head(repo, "config.json", revision)
    listing = hub_fetch.list_files(repo, config.commit)
    names = wanted_files(listing)
    if not any(n.endswith(".safetensors") for n in names):
        raise UsageError(
            f"{repo} has no .safetensors weights at its top level", hint="thyme converts safetensors checkpoints only"
        )
    require_files(set(names), repo)
    config_was_cached = hub_cache.blob_path(repo, config.etag).exists()
    path = hub_fetch.fetch(config, progress, resume_hint="run the command again")
    dtype_bytes = check_config(_read_json(path), repo)
    remotes = [config if n == "config.json" else hub_fetch.head(repo, n, config.commit) for n in names]
    new = [r.filename for r in remotes if not hub_cache.blob_path(repo, r.etag).exists()]
    if not config_was_cached:
        new.append("config.json")
    return HubSnapshot(
        repo=repo,
        revision=revision,
        commit=config.commit,
        remotes=remotes,
        dtype_bytes=dtype_bytes,
        new_files=tuple(sorted(new)),
    )


def download_snapshot(snapshot: HubSnapshot, progress: Progress, resume_hint: str) -> Path:
    """Fetch every file (resumable, verified) and return the snapshot folder the converter reads."""
    from thyme_cli.models.hub import fetch as hub_fetch

    for remote in snapshot.remotes:
        hub_fetch.fetch(remote, progress, resume_hint=resume_hint)
    hub_cache.write_ref(snapshot.repo, snapshot.revision, snapshot.commit)
    return snapshot.folder
