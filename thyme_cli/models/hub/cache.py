"""The Hugging Face cache layout, read and written with the standard library only.

``thyme models list`` says what is installed without importing huggingface_hub, and our resumable
downloads land where huggingface_hub looks (the layout is in docs/models.md). The environment is read
at call time (huggingface_hub reads it once, at import).
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_TRUE = {"1", "ON", "YES", "TRUE"}


def hub_cache_dir() -> Path:
    """The hub cache folder, resolved like huggingface_hub does (HF_HUB_CACHE > HF_HOME/hub > XDG)."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    home = os.environ.get("HF_HOME")
    if not home:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        home = os.path.join(xdg, "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def offline_mode() -> bool:
    """True when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) asks for no network at all."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in _TRUE


def hub_endpoint() -> str:
    """The Hub base URL (HF_ENDPOINT), used for messages and download URLs."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def repo_dir(repo_id: str) -> Path:
    """models--org--name inside the hub cache."""
    return hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))


def blob_path(repo_id: str, etag: str) -> Path:
    return repo_dir(repo_id) / "blobs" / etag


def partial_path(repo_id: str, etag: str) -> Path:
    """Where an interrupted download of this blob waits to be resumed."""
    return repo_dir(repo_id) / "blobs" / f"{etag}.incomplete"


def lock_path(repo_id: str, etag: str) -> Path:
    """The per-blob lock huggingface_hub also takes, so the two never write one blob at once."""
    return hub_cache_dir() / ".locks" / ("models--" + repo_id.replace("/", "--")) / f"{etag}.lock"


def resolve_commit(repo_id: str, revision: str) -> str | None:
    """The commit a revision points to locally: itself if it is a commit, else what refs/ says."""
    if COMMIT_RE.fullmatch(revision):
        return revision
    ref = repo_dir(repo_id) / "refs" / revision
    try:
        commit = ref.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return commit or None


def cached_file(repo_id: str, filename: str, revision: str) -> Path | None:
    """The snapshot path of a complete cached file (what try_to_load_from_cache would return), else None."""
    commit = resolve_commit(repo_id, revision)
    if commit is None:
        return None
    pointer = repo_dir(repo_id) / "snapshots" / commit / filename
    return pointer if pointer.is_file() else None


def write_ref(repo_id: str, revision: str, commit: str) -> None:
    """Record that REVISION is COMMIT (atomically; nothing to do for a commit revision)."""
    if revision == commit:
        return
    ref = repo_dir(repo_id) / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    try:
        if ref.read_text(encoding="utf-8") == commit:
            return
    except OSError:
        pass
    tmp = ref.with_name(f"{ref.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(commit, encoding="utf-8")
    os.replace(tmp, ref)


def link_snapshot(repo_id: str, commit: str, filename: str, etag: str) -> Path:
    """Point snapshots/<commit>/<filename> at blobs/<etag> with a relative symlink, as the Hub client does.

    Where symlinks are not allowed the blob is moved into place instead (the client's own fallback).
    """
    blob = blob_path(repo_id, etag)
    pointer = repo_dir(repo_id) / "snapshots" / commit / filename
    pointer.parent.mkdir(parents=True, exist_ok=True)
    if pointer.is_symlink() or pointer.exists():
        if pointer.resolve() == blob.resolve():
            return pointer
        pointer.unlink()
    try:
        os.symlink(os.path.relpath(blob, pointer.parent), pointer)
    except OSError:
        shutil.move(str(blob), str(pointer))
    return pointer


@dataclass(frozen=True)
class Removal:
    """What removing some files of one repo did."""

    freed: int
    removed: list[Path]
    kept_shared: list[Path]


def _snapshot_links(repo: Path) -> list[Path]:
    """Every file or link under snapshots/ (any commit)."""
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return []
    return [p for p in snapshots.rglob("*") if p.is_symlink() or p.is_file()]


def _target(link: Path) -> Path | None:
    """The blob a snapshot link points to (None for a plain file or a dangling link)."""
    if not link.is_symlink():
        return None
    target = link.resolve()
    return target if target.exists() else None


def remove_files(repo_id: str, filenames: set[str]) -> Removal:
    """Delete FILENAMES from every snapshot of REPO_ID, and the blobs no remaining snapshot uses.

    Other files in the repo folder (another tool's downloads) and blobs they link to stay. Empty
    snapshot folders go; the repo folder goes only when nothing but empty scaffolding is left.
    """
    repo = repo_dir(repo_id)
    snapshots = repo / "snapshots"
    ours: list[Path] = []
    others: list[Path] = []
    for link in _snapshot_links(repo):
        in_repo = "/".join(link.relative_to(snapshots).parts[1:])  # drop the commit folder
        (ours if in_repo in filenames else others).append(link)
    still_used = {t for t in (_target(p) for p in others) if t is not None}
    freed = 0
    removed: list[Path] = []
    kept: list[Path] = []
    candidates: set[Path] = set()
    for link in ours:
        target = _target(link)
        if target is None:  # a plain file (no-symlink platforms) holds the bytes itself
            freed += link.stat().st_size if link.exists() and not link.is_symlink() else 0
        else:
            candidates.add(target)
        link.unlink()
        removed.append(link)
    for blob in sorted(candidates):
        if blob in still_used:
            kept.append(blob)
            continue
        freed += blob.stat().st_size
        blob.unlink()
        removed.append(blob)
    _prune_empty(repo)
    return Removal(freed=freed, removed=removed, kept_shared=kept)


def _prune_empty(repo: Path) -> None:
    """Drop empty snapshot folders; drop the whole repo folder if no file or blob is left in it."""
    snapshots = repo / "snapshots"
    if snapshots.is_dir():
        for folder in sorted((p for p in snapshots.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            if not any(folder.iterdir()):
                folder.rmdir()
    blobs = repo / "blobs"
    has_snapshots = snapshots.is_dir() and any(snapshots.iterdir())
    has_blobs = blobs.is_dir() and any(blobs.iterdir())
    if not has_snapshots and not has_blobs and repo.is_dir():
        shutil.rmtree(repo)
