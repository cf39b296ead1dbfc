"""Model files on this machine: what is installed, the default model, removal, disk-space checks.

Hub models live in the Hugging Face cache, local pairs where the user keeps them, converted models
in ``<data dir>/models/<name>/``. Checking what is installed never touches the network or imports
huggingface_hub, so ``thyme models list`` stays fast.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from thyme_cli import paths
from thyme_cli.errors import DiskSpaceError
from thyme_cli.models.hub import cache as hub_cache
from thyme_cli.models.registry import Registry, builtin_names, load_registry, remove_user_model
from thyme_cli.models.spec import ModelSpec

DISK_MARGIN_MIN = 64 * 1024 * 1024  # keep this much free after a download, or 2% of it if more
PREFERRED_MODEL = "thyme-7b"  # what `thyme ask` runs by default once it is installed
UNFINISHED = "conversion unfinished"


@dataclass(frozen=True)
class ModelFiles:
    """The two local files a vision-language model needs."""

    model: Path
    mmproj: Path


@dataclass(frozen=True)
class ModelState:
    """Where a model stands on this machine, for `models list` and `models info`."""

    label: str  # installed | not installed | 1 of 2 files | missing files
    files: ModelFiles | None
    present: tuple[Path, ...]
    size_on_disk: int | None

    @property
    def installed(self) -> bool:
        return self.files is not None


def converted_dir(spec: ModelSpec) -> Path:
    """Where the converter puts the GGUF pair of a needs_conversion model."""
    return paths.local_models_dir() / spec.name


def conversion_work_dir(spec: ModelSpec) -> Path:
    """Where an unfinished conversion keeps its state, logs and intermediate files."""
    return converted_dir(spec) / ".convert"


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _candidate_paths(spec: ModelSpec) -> tuple[Path | None, Path | None]:
    """The two local paths the model's files have (or would have) on this machine."""
    if spec.is_local:
        return spec.model_path, spec.mmproj_path
    assert spec.model_file is not None and spec.mmproj_file is not None
    if spec.needs_conversion:
        folder = converted_dir(spec)
        return folder / spec.model_file, folder / spec.mmproj_file
    assert spec.repo is not None
    revision = spec.revision or "main"
    return (
        hub_cache.cached_file(spec.repo, spec.model_file, revision),
        hub_cache.cached_file(spec.repo, spec.mmproj_file, revision),
    )


def _split_parts_present(spec: ModelSpec, model: Path) -> bool:
    """A split model (name-00001-of-0000N.gguf) is installed only with all of its parts."""
    from thyme_cli.models.hub.ref import split_siblings

    return all((model.parent / Path(p).name).is_file() for p in split_siblings(model.name))


def installed_files(spec: ModelSpec) -> ModelFiles | None:
    """Local paths of both files if both are present, else None. Never touches the network."""
    model, mmproj = _candidate_paths(spec)
    if (
        model is not None
        and mmproj is not None
        and model.is_file()
        and mmproj.is_file()
        and _split_parts_present(spec, model)
    ):
        return ModelFiles(model=model, mmproj=mmproj)
    return None


def model_state(spec: ModelSpec) -> ModelState:
    """Installed or not, which files are there, and their size on disk."""
    present = tuple(p for p in _candidate_paths(spec) if p is not None and p.is_file())
    if present and spec.model_file and not spec.is_local:  # the other parts of a split model count too
        from thyme_cli.models.hub.ref import split_siblings

        extra = (present[0].parent / Path(n).name for n in split_siblings(spec.model_file)[1:])
        present = present + tuple(p for p in extra if p.is_file())
    files = installed_files(spec)
    size = sum(p.stat().st_size for p in present) if present else None
    if files is not None:
        label = "installed"
    elif spec.is_local:
        label = "missing files"
    elif spec.needs_conversion and conversion_work_dir(spec).is_dir():
        label = UNFINISHED
        size = (size or 0) + _folder_bytes(conversion_work_dir(spec))
    elif present:
        label = f"{len(present)} of 2 files"
    else:
        label = "not installed"
    return ModelState(label=label, files=files, present=present, size_on_disk=size)


def approx_size(spec: ModelSpec) -> str:
    return f"~{spec.size_gb:.1f} GB" if spec.size_gb else "unknown size"


def nearest_existing(path: Path) -> Path:
    """PATH, or its closest parent that exists (where a folder about to be created will live)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def fits(need: int, free: int) -> bool:
    """Whether NEED bytes fit in FREE while leaving a margin (64 MB, or 2% of NEED if more)."""
    return free >= need + max(DISK_MARGIN_MIN, need // 50)


def require_free_space(folder: Path, need: int, shortage: Callable[[int], str], *, hint: str) -> None:
    """Refuse before writing NEED bytes under FOLDER when its disk cannot hold them (see fits); the
    DiskSpaceError's message is SHORTAGE(free bytes)."""
    free = shutil.disk_usage(nearest_existing(folder)).free
    if not fits(need, free):
        raise DiskSpaceError(shortage(free), hint=hint)


def preferred_default(registry: Registry) -> str:
    """The model `thyme ask` / `thyme batch` run without --model.

    The user's own [defaults] model wins; otherwise Thyme itself (thyme-7b) once it is installed;
    otherwise the registry's ready-made default (Qwen2.5-VL 7B, the model Thyme was trained from).
    Never touches the network.
    """
    if registry.user_default:
        return registry.user_default
    spec = registry.models.get(PREFERRED_MODEL)
    if spec is not None and installed_files(spec) is not None:
        return PREFERRED_MODEL
    return registry.default_model


def default_model_note(registry: Registry) -> str | None:
    """One line for `thyme ask` when it runs the fallback because Thyme is not installed (else None)."""
    spec = registry.models.get(PREFERRED_MODEL)
    if registry.user_default or spec is None or preferred_default(registry) == PREFERRED_MODEL:
        return None
    return (
        f"using {registry.default_model}, a ready-made GGUF of Thyme's base model; for Thyme itself run "
        f"`thyme models pull {PREFERRED_MODEL}` (downloads {approx_size(spec)} and converts it locally, once)"
    )


def shared_with(spec: ModelSpec, registry_models: list[ModelSpec] | None = None) -> dict[str, list[str]]:
    """Files of SPEC that another fully installed model of the same repo also uses: filename -> names."""
    if spec.is_local or spec.needs_conversion or spec.repo is None:
        return {}
    models = registry_models if registry_models is not None else list(load_registry().models.values())
    ours = {spec.model_file, spec.mmproj_file}
    shared: dict[str, list[str]] = {}
    for other in models:
        if other.name == spec.name or other.repo != spec.repo or other.is_local or other.needs_conversion:
            continue
        common = {other.model_file, other.mmproj_file} & ours
        if common and installed_files(other) is not None:
            for filename in sorted(f for f in common if f is not None):
                shared.setdefault(filename, []).append(other.name)
    return shared


def remove(spec: ModelSpec, *, registry_models: list[ModelSpec] | None = None) -> int:
    """Delete SPEC's files; return the bytes freed.

    Hub models: only this model's snapshot links and the blobs nothing else links to; a file another
    installed model of the same repo uses stays. Local pairs: the config entry goes, the user's files
    never. Converted models: their two files and any unfinished conversion under converted_dir(); an
    entry `thyme models convert` created goes too (a built-in one such as thyme-7b stays).
    """
    if spec.is_local:
        remove_user_model(spec.name)
        return 0
    assert spec.model_file is not None and spec.mmproj_file is not None
    if spec.needs_conversion:
        freed = 0
        for path in (converted_dir(spec) / spec.model_file, converted_dir(spec) / spec.mmproj_file):
            if path.is_file():
                freed += path.stat().st_size
                path.unlink()
        work = conversion_work_dir(spec)
        if work.is_dir():
            freed += _folder_bytes(work)
            shutil.rmtree(work)
        with contextlib.suppress(OSError):
            converted_dir(spec).rmdir()  # only when nothing else is left in it
        if spec.source == "user" and spec.name not in builtin_names():
            remove_user_model(spec.name)
        return freed
    assert spec.repo is not None
    from thyme_cli.models.hub.ref import split_siblings
    from thyme_cli.models.pull_records import forget_pull

    keep = set(shared_with(spec, registry_models))
    filenames = {*split_siblings(spec.model_file), spec.mmproj_file} - keep
    freed = hub_cache.remove_files(spec.repo, filenames).freed
    forget_pull(spec.name)
    if spec.extra.get("reference") and spec.source == "user" and spec.name not in builtin_names():
        remove_user_model(spec.name)
    return freed
