"""The evaluated system prompt, saved on disk so the next `thyme ask` process need not evaluate it.

One file per (model files, context settings, prompt, llama.cpp version), checked on load and
deleted when it does not match; the directory is size-bounded. Key, layout and bounds are in
docs/engine.md ("Never paying twice").
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from thyme_cli.engine.llama.native import Native
    from thyme_cli.engine.settings import EngineOptions

MAGIC = b"THYMEPS1"
SUFFIX = ".state"
_DEFAULT_MAX_BYTES = 512 * 1024 * 1024


def state_dir() -> Path:
    """Where prompt states live: next to the runs, in thyme's data directory."""
    from thyme_cli import paths

    return paths.data_dir() / "prompt-state"


def max_bytes() -> int:
    """The size bound of the directory (THYME_PROMPT_STATE_MB overrides; 0 turns saving off)."""
    value = os.environ.get("THYME_PROMPT_STATE_MB")
    if value is not None:
        with contextlib.suppress(ValueError):
            return max(0, int(float(value) * 1024 * 1024))
    return _DEFAULT_MAX_BYTES


def _file_id(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


class PromptStore:
    """Saved system-prompt states for one loaded model pair and context configuration."""

    def __init__(self, directory: Path, settings: dict[str, Any], *, limit: int) -> None:
        self.directory = directory
        self.settings = settings
        self.limit = limit
        self.last_event = ""  # "loaded", "saved", "rebuilt (...)": for tests and --verbose

    @classmethod
    def for_engine(
        cls, model_path: Path, mmproj_path: Path, options: EngineOptions, native: Native
    ) -> PromptStore | None:
        """The store for this engine; None when saving is turned off or the files cannot be read."""
        import llama_cpp

        limit = max_bytes()
        if limit <= 0:
            return None
        try:
            files = {"model": _file_id(model_path), "mmproj": _file_id(mmproj_path)}
        except OSError:
            return None
        settings = {
            **files,
            "llama_cpp": llama_cpp.__version__,
            "n_ctx": native.n_ctx,
            "n_batch": native.n_batch,
            "kv_cache_type": options.kv_cache_type,
            "flash_attn": native.flash_attn,
            "n_gpu_layers": native.n_gpu_layers,
            "buffer_types": native.buffer_types,
            "n_threads_batch": native.n_threads_batch,
        }
        return cls(state_dir(), settings, limit=limit)

    def key(self, text: str) -> str:
        blob = json.dumps({**self.settings, "text": text}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()

    def path(self, text: str) -> Path:
        return self.directory / f"{self.key(text)[:32]}{SUFFIX}"

    # --- load / save ---------------------------------------------------------------------------------

    def load(self, native: Native, text: str, seq: int = 0) -> list[int] | None:
        """Put the saved state of ``text`` into the (empty) context; its tokens, or None when there
        is no usable file (a damaged or mismatched one is deleted)."""
        path = self.path(text)
        try:
            raw = path.read_bytes()
        except OSError:
            return None
        header, data = _parse(raw)
        why = _check(header, data, self.key(text))
        if why is None and header is not None and data is not None:
            if native.state_seq_set(data, seq):
                with contextlib.suppress(OSError):
                    os.utime(path)  # recently used: kept longest by prune()
                self.last_event = "loaded"
                return [int(t) for t in header["tokens"]]
            native.clear_seq(seq)
            why = "llama.cpp refused the state"
        self.last_event = f"rebuilt ({why})"
        with contextlib.suppress(OSError):
            path.unlink()
        return None

    def save(self, native: Native, text: str, tokens: Sequence[int], seq: int = 0) -> Path | None:
        """Save sequence ``seq`` (which holds exactly ``text``) atomically; None when it would not fit."""
        data = native.state_seq_get(seq)
        header = {
            "key": self.key(text),
            "tokens": list(tokens),
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "model": self.settings["model"]["path"],
        }
        blob = json.dumps(header).encode()
        total = len(MAGIC) + 4 + len(blob) + len(data)
        if total > self.limit:
            return None
        path = self.path(text)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                f.write(MAGIC + struct.pack("<I", len(blob)) + blob)
                f.write(data)
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
            return None
        self.last_event = "saved"
        prune(self.directory, self.limit, keep=path)
        return path


def _parse(raw: bytes) -> tuple[dict[str, Any] | None, bytes | None]:
    if not raw.startswith(MAGIC) or len(raw) < len(MAGIC) + 4:
        return None, None
    (n,) = struct.unpack_from("<I", raw, len(MAGIC))
    start = len(MAGIC) + 4
    try:
        header = json.loads(raw[start : start + n])
    except ValueError:
        return None, None
    return (header if isinstance(header, dict) else None), raw[start + n :]


def _check(header: dict[str, Any] | None, data: bytes | None, key: str) -> str | None:
    """Why the file cannot be used, or None."""
    if header is None or data is None:
        return "not a prompt-state file"
    if header.get("key") != key:
        return "made for other settings"
    if header.get("size") != len(data) or header.get("sha256") != hashlib.sha256(data).hexdigest():
        return "damaged"
    tokens = header.get("tokens")
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, int) for t in tokens):
        return "damaged"
    return None


def _files(directory: Path) -> list[Path]:
    try:
        return [p for p in directory.iterdir() if p.suffix == SUFFIX and p.is_file()]
    except OSError:
        return []


def prune(directory: Path, limit: int, *, keep: Path | None = None) -> int:
    """Delete the least recently used files until the directory holds at most ``limit`` bytes."""
    entries = []
    for p in _files(directory):
        with contextlib.suppress(OSError):
            st = p.stat()
            entries.append((st.st_mtime, st.st_size, p))
    total = sum(size for _, size, _ in entries)
    freed = 0
    for _, size, p in sorted(entries, key=lambda e: e[0]):
        if total <= limit:
            break
        if p == keep:
            continue
        with contextlib.suppress(OSError):
            p.unlink()
            total -= size
            freed += size
    return freed


def _model_of(path: Path) -> str | None:
    """The model path a state file was made for (from its header), or None when unreadable."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(MAGIC) + 4)
            if len(head) < len(MAGIC) + 4 or not head.startswith(MAGIC):
                return None
            (n,) = struct.unpack_from("<I", head, len(MAGIC))
            header = json.loads(f.read(n))
    except (OSError, ValueError):
        return None
    model = header.get("model") if isinstance(header, dict) else None
    return model if isinstance(model, str) else None


def remove(
    directory: Path | None = None,
    *,
    models: Iterable[Path] | None = None,
    orphans: bool = False,
    unused_for_s: float | None = None,
) -> tuple[int, int]:
    """Delete saved states: all of them by default; else those made for one of ``models``, those
    whose model file is gone (``orphans``) or unreadable, and those unused for ``unused_for_s``.
    Returns (files, bytes) freed."""
    import time

    directory = directory or state_dir()
    wanted = {str(Path(m).resolve()) for m in models} if models is not None else None
    select = wanted is not None or orphans or unused_for_s is not None
    now = time.time()
    count = freed = 0
    for p in _files(directory):
        try:
            st = p.stat()
        except OSError:
            continue
        if select:
            model = _model_of(p)
            hit = model is None and (orphans or unused_for_s is not None)
            hit = hit or (wanted is not None and model in wanted)
            hit = hit or (orphans and model is not None and not Path(model).exists())
            hit = hit or (unused_for_s is not None and now - st.st_mtime > unused_for_s)
            if not hit:
                continue
        with contextlib.suppress(OSError):
            p.unlink()
            count += 1
            freed += st.st_size
    return count, freed
