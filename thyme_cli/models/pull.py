"""Getting a model's files onto this machine: pulling from the Hub (resuming), or converting.

`thyme models pull` calls `pull`; `thyme ask` / `batch` call `ensure_model`, which asks first on a
terminal and never downloads behind a script's back. What is installed is store.py's business.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from thyme_cli import paths
from thyme_cli.errors import DownloadError, ThymeError, UsageError
from thyme_cli.models.hub import cache as hub_cache
from thyme_cli.models.registry import load_registry
from thyme_cli.models.spec import ModelSpec
from thyme_cli.models.store import ModelFiles, approx_size, installed_files, require_free_space
from thyme_cli.ui.console import confirm, human_size

if TYPE_CHECKING:
    from thyme_cli.models.hub.fetch import RemoteFile


def pull(
    spec: ModelSpec, *, progress: bool = True, quant: str | None = None, keep_download: bool = False
) -> ModelFiles:
    """Download whatever of SPEC is missing (resuming partial files), verify it, and return the paths.

    A needs_conversion model is downloaded and converted (thyme_cli.models.convert.pipeline); QUANT picks another
    quantization of it and KEEP_DOWNLOAD keeps its safetensors in the Hugging Face cache.
    """
    if spec.needs_conversion:
        from thyme_cli.models.convert.pipeline import install_converted

        return install_converted(spec, quant=quant, keep_download=keep_download, progress=progress)
    if quant is not None:
        raise UsageError(f"{spec.name} is a ready GGUF; --quant applies to models thyme converts (like thyme-7b)")
    files = installed_files(spec)
    if files is not None:
        if spec.extra.get("reference") and spec.name not in load_registry().models:
            register_reference(spec)  # already in the cache (another tool fetched it): register it
        return files
    if spec.is_local:
        missing = [str(p) for p in (spec.model_path, spec.mmproj_path) if p is not None and not p.is_file()]
        raise UsageError(
            f"{spec.name} is a local model and its file is missing: {', '.join(missing)}",
            hint=f"fix the paths in {paths.config_file()} or register the pair again with `thyme models add`",
        )
    if hub_cache.offline_mode():
        from thyme_cli.models.hub.errors import offline_error

        raise offline_error(spec.name)
    try:
        return _pull_from_hub(spec, progress)
    except KeyboardInterrupt:
        raise ThymeError(
            f"download of {spec.name} interrupted; the partial file is kept",
            hint=f"run `thyme models pull {spec.name}` again to resume",
            exit_code=130,
        ) from None


def _pull_from_hub(spec: ModelSpec, progress: bool) -> ModelFiles:
    from thyme_cli.models.hub import fetch as hub_fetch
    from thyme_cli.models.hub.ref import split_siblings
    from thyme_cli.models.pull_records import record_pull
    from thyme_cli.ui.hub_progress import make_progress

    assert spec.repo and spec.model_file and spec.mmproj_file
    revision = spec.revision or "main"
    model = hub_fetch.head(spec.repo, spec.model_file, revision)
    # Every other file from the same commit; a split model brings all of its parts.
    others = [*split_siblings(spec.model_file)[1:], spec.mmproj_file]
    remotes = [model, *(hub_fetch.head(spec.repo, name, model.commit) for name in others)]
    check_disk_space(spec, remotes)
    bar = make_progress(progress)
    hint = f"run `thyme models pull {spec.name}` again to resume"
    try:
        for remote in remotes:
            hub_fetch.fetch(remote, bar, resume_hint=hint)
    finally:
        bar.close()
    hub_cache.write_ref(spec.repo, revision, model.commit)  # only now: a half pull never moves `main`
    files = installed_files(spec)
    if files is None:  # the layout we wrote is not what we read back: a bug, say so plainly
        raise DownloadError(f"{spec.name} was downloaded but is not found in {hub_cache.repo_dir(spec.repo)}")
    if spec.extra.get("reference") and spec.name not in load_registry().models:
        register_reference(spec)
    record_pull(spec.name, repo=spec.repo, revision=revision, commit=model.commit, files=[r.filename for r in remotes])
    return files


def register_reference(spec: ModelSpec) -> None:
    """Write a pulled hf.co/ORG/REPO:QUANT into the user's config, so list/info/rm/ask find it offline."""
    from thyme_cli.models.registry import upsert_user_model

    assert spec.repo and spec.model_file and spec.mmproj_file
    values: dict[str, str | int | float | bool | Path] = {
        "description": spec.description,
        "repo": spec.repo,
        "model_file": spec.model_file,
        "mmproj_file": spec.mmproj_file,
        "protocol": spec.protocol,
        "n_ctx": spec.n_ctx,
        "reference": str(spec.extra["reference"]),
    }
    if spec.revision:
        values["revision"] = spec.revision
    if spec.size_gb:
        values["size_gb"] = spec.size_gb
    upsert_user_model(spec.name, values)


def check_disk_space(spec: ModelSpec, remotes: list[RemoteFile]) -> None:
    """Refuse before the first byte when the cache's disk cannot hold what is left to download."""
    from thyme_cli.models.hub.fetch import remaining_bytes

    need = sum(remaining_bytes(r) for r in remotes)
    if need == 0:
        return
    cache = hub_cache.hub_cache_dir()
    require_free_space(
        cache,
        need,
        lambda free: (
            f"not enough disk space for {spec.name}: {human_size(need)} to download into {cache}, "
            f"{human_size(free)} free"
        ),
        hint="free some space, or set HF_HOME (or HF_HUB_CACHE) to a folder on a bigger disk",
    )


def ensure_model(spec: ModelSpec, *, assume_yes: bool, interactive: bool) -> ModelFiles:
    """The model's files for `thyme ask`: asks before a download on a terminal, never surprises a script."""
    files = installed_files(spec)
    if files is not None:
        return files
    if spec.is_local:
        return pull(spec)  # raises the clear error
    if hub_cache.offline_mode() and not spec.needs_conversion:  # a conversion knows what it still needs
        from thyme_cli.models.hub.errors import offline_error

        raise offline_error(spec.name)
    what = approx_size(spec)
    if spec.needs_conversion:
        what = "a local conversion" if spec.source_dir else f"{what} download, then a local conversion"
    if not assume_yes:
        if not interactive:
            raise DownloadError(
                f"model {spec.name} is not downloaded yet ({what})",
                hint=f"run `thyme models pull {spec.name}` first, or pass --yes to download it now",
            )
        verb = "Download and convert" if spec.needs_conversion else "Download"
        if not confirm(f"{verb} {spec.name} ({what})?"):
            raise DownloadError(
                f"model {spec.name} is not downloaded", hint=f"run `thyme models pull {spec.name}` when you want it"
            )
    return pull(spec, progress=True)
