"""What `thyme models pull` and `thyme models rm` decide before they act: which model a name means
(a registry entry, or a Hub reference resolved to one), and what removing a model deletes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from thyme_cli.errors import UsageError

if TYPE_CHECKING:
    from thyme_cli.models.registry import Registry
    from thyme_cli.models.spec import ModelSpec


def pull_target(
    registry: Registry,
    name: str,
    *,
    model_file: str | None = None,
    mmproj_file: str | None = None,
    protocol: str | None = None,
    revision: str | None = None,
) -> tuple[ModelSpec, bool]:
    """The model NAME means, and whether it was resolved just now (a Hub reference not pulled before,
    or pulled with other files, protocol or revision). Those four apply only to Hub references."""
    from thyme_cli.models.hub.ref import find_pulled, parse_reference, resolve_reference

    overrides = model_file or mmproj_file or protocol or revision
    if name not in registry.models and "/" in name and parse_reference(name) is not None:
        pulled = None if overrides else find_pulled(registry.models, name)
        if pulled is not None:
            return pulled, False
        spec = resolve_reference(
            name,
            model_file=model_file,
            mmproj_file=mmproj_file,
            protocol=protocol or "generic",
            revision=revision or "main",
        )
        return spec, True
    if overrides:
        raise UsageError(
            "--model-file, --mmproj-file, --protocol and --revision apply to Hub references (hf.co/ORG/REPO:QUANT)",
            hint="for a registry model, edit its entry in the config file",
        )
    return registry.get(name), False


@dataclass(frozen=True)
class Removal:
    """What `models rm` would delete: question is what to ask first (None: nothing is installed)."""

    spec: ModelSpec
    question: str | None


def plan_removal(registry: Registry, name: str) -> Removal:
    """What removing NAME means; a built-in local pair cannot be removed."""
    from thyme_cli.models.hub import cache as hub_cache
    from thyme_cli.models.store import UNFINISHED, converted_dir, model_state
    from thyme_cli.ui.console import human_size

    spec = registry.get(name)
    state = model_state(spec)
    if spec.is_local:
        if spec.source != "user":
            raise UsageError(f"{name} is built in and cannot be removed")
        return Removal(spec, f"Remove the entry {name} from {registry.config_path}? (your GGUF files stay)")
    if not state.present and state.label != UNFINISHED:
        return Removal(spec, None)
    where = converted_dir(spec) if spec.needs_conversion else hub_cache.repo_dir(spec.repo or "")
    return Removal(spec, f"Delete {name} ({human_size(state.size_on_disk)}) from {where}?")


@dataclass(frozen=True)
class Removed:
    """What `models rm` deleted: bytes freed, files kept for other models, saved prompt states."""

    freed: int
    shared: dict[str, list[str]] = field(default_factory=dict)
    states: int = 0
    states_bytes: int = 0
    entry_removed: bool = False  # a converted model the user registered: its config entry went too


def remove_model(registry: Registry, spec: ModelSpec) -> Removed:
    """Delete the model's files (a local pair: its config entry) and the saved prompt states of
    this model (a local pair's), or of any model whose file is now gone."""
    from thyme_cli.engine.llama import prompt_state
    from thyme_cli.models.registry import builtin_names
    from thyme_cli.models.store import remove, shared_with

    models = list(registry.models.values())
    shared = shared_with(spec, models)
    freed = remove(spec, registry_models=models)
    own: list[Path] = [spec.model_path] if spec.is_local and spec.model_path else []
    states, states_bytes = prompt_state.remove(models=own, orphans=True)
    entry = spec.needs_conversion and spec.source == "user" and spec.name not in builtin_names()
    return Removed(freed, shared, states, states_bytes, entry)
