"""The model registry: built-in models.toml merged with the user's config file.

Entries become ``ModelSpec`` records (spec.py). Reading the registry is cheap and imports nothing
heavy, so ``thyme models list`` stays fast. A name can also be a Hub reference (hub/ref.py).
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from thyme_cli import paths
from thyme_cli.errors import ConfigError, ModelNotFound, UsageError
from thyme_cli.models.spec import PROTOCOLS, ModelSpec

_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "description": (str,),
    "repo": (str,),
    "model_file": (str,),
    "mmproj_file": (str,),
    "revision": (str,),
    "size_gb": (int, float),
    "license": (str,),
    "protocol": (str,),
    "n_ctx": (int,),
    "image_min_tokens": (int,),
    "image_max_tokens": (int,),
    "needs_conversion": (bool,),
    "source_dir": (str,),
    "model_path": (str,),
    "mmproj_path": (str,),
    "chat_format": (str,),
    "chat_template": (str,),
}
_KNOWN = {f.name for f in fields(ModelSpec)}


def _spec_from_table(name: str, table: dict[str, Any], source: Literal["builtin", "user"], where: str) -> ModelSpec:
    """Validate one [models.NAME] table and build its ModelSpec; errors name the file and entry."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [models.{name}] must be a table")
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in table.items():
        expected = _FIELD_TYPES.get(key)
        if expected is None:
            extra[key] = value
            continue
        if not isinstance(value, expected) or (expected == (int,) and isinstance(value, bool)):
            kind = " or ".join(t.__name__ for t in expected)
            raise ConfigError(f"{where}: [models.{name}] {key} must be {kind}, got {value!r}")
        kwargs[key] = value
    if kwargs.get("protocol", "generic") not in PROTOCOLS:
        raise ConfigError(f"{where}: [models.{name}] protocol must be one of {', '.join(PROTOCOLS)}")
    for key in ("model_path", "mmproj_path", "source_dir", "chat_template"):
        if key in kwargs:
            kwargs[key] = Path(kwargs[key]).expanduser()
    if "size_gb" in kwargs:
        kwargs["size_gb"] = float(kwargs["size_gb"])
    spec = ModelSpec(name=name, source=source, extra=extra, **kwargs)
    local = spec.model_path is not None and spec.mmproj_path is not None
    files = spec.model_file is not None and spec.mmproj_file is not None
    hub = spec.repo is not None and files
    converted_locally = spec.needs_conversion and spec.source_dir is not None and files
    if not (local or hub or converted_locally):
        raise ConfigError(
            f"{where}: [models.{name}] needs either model_path and mmproj_path, or repo, model_file and mmproj_file"
            + (" (or source_dir, for needs_conversion)" if spec.needs_conversion else "")
        )
    return spec


def _read_toml(path: Path, what: str) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{what} {path} is not valid TOML: {e}", hint="fix or move the file away") from e
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}") from e


def builtin_registry_text() -> str:
    """The text of the models.toml shipped with the package (or of the source tree's, when editable)."""
    packaged = resources.files("thyme_cli").joinpath("models.toml")
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    source_tree = Path(__file__).resolve().parent.parent.parent / "models.toml"
    return source_tree.read_text(encoding="utf-8")


def builtin_names() -> set[str]:
    """Names of the models shipped in models.toml."""
    return set(tomllib.loads(builtin_registry_text()).get("models", {}))


@dataclass
class Registry:
    """All known models (built-in, then the user's entries on top) and the default model name."""

    models: dict[str, ModelSpec]
    default_model: str
    config_path: Path
    # The [defaults] model of the user's config file, when set: it always wins over thyme's choice.
    user_default: str | None = None

    def get(self, name: str) -> ModelSpec:
        """The spec for NAME, or a ModelNotFound naming the closest known names."""
        spec = self.models.get(name)
        if spec is not None:
            return spec
        if "/" in name:  # hf.co/ORG/REPO[:QUANT]: a pulled one is registered, else ask the Hub
            from thyme_cli.models.hub import ref as hub_ref

            if hub_ref.parse_reference(name) is not None:
                return hub_ref.find_pulled(self.models, name) or hub_ref.resolve_reference(name)
        close = difflib.get_close_matches(name, list(self.models), n=2, cutoff=0.5)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}?" if close else None
        raise ModelNotFound(
            f"unknown model {name!r} (known: {', '.join(sorted(self.models))})",
            hint=hint or "see `thyme models list`, or register a local GGUF pair with `thyme models add`",
        )


def load_registry(config_path: Path | None = None) -> Registry:
    """Read the built-in registry and merge the user's config file over it."""
    builtin = tomllib.loads(builtin_registry_text())
    models = {
        name: _spec_from_table(name, table, "builtin", "models.toml")
        for name, table in builtin.get("models", {}).items()
    }
    default = builtin.get("defaults", {}).get("model", next(iter(models)))
    config_path = config_path or paths.config_file()
    user_default = None
    if config_path.exists():
        user = _read_toml(config_path, "config file")
        user_models = user.get("models", {})
        if not isinstance(user_models, dict):
            raise ConfigError(f"config file {config_path}: [models] must be a table")
        for name, table in user_models.items():
            merged = dict(table) if isinstance(table, dict) else table
            base = builtin.get("models", {}).get(name)
            if isinstance(base, dict) and isinstance(merged, dict) and "model_path" not in merged:
                merged = {**base, **merged}
            models[name] = _spec_from_table(name, merged, "user", f"config file {config_path}")
        user_default = user.get("defaults", {}).get("model") if isinstance(user.get("defaults"), dict) else None
        if user_default:
            default = user_default
    return Registry(models=models, default_model=default, config_path=config_path, user_default=user_default or None)


def _toml_string(value: str) -> str:
    """A TOML basic string (JSON string escaping is valid TOML)."""
    import json

    return json.dumps(value, ensure_ascii=False)


def _toml_value(value: str | int | float | bool | Path) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return _toml_string(str(value))


def upsert_user_model(
    name: str, values: dict[str, str | int | float | bool | Path], config_path: Path | None = None
) -> Path:
    """Set VALUES in the user's [models.NAME] table, creating it if needed (a built-in entry is overridden).

    An existing table is merged with VALUES and rewritten at the end of the file (through
    remove_user_model, so the old file is kept as .bak); other tables and comments stay as they are.
    """
    config_path = config_path or paths.config_file()
    merged: dict[str, str | int | float | bool | Path] = {}
    if config_path.exists():
        existing = _read_toml(config_path, "config file").get("models", {})
        table = existing.get(name) if isinstance(existing, dict) else None
        if isinstance(table, dict):
            merged.update({k: v for k, v in table.items() if isinstance(v, str | int | float | bool)})
            remove_user_model(name, config_path)
    merged.update(values)
    lines = ["", f"[models.{_toml_string(name)}]", *(f"{k} = {_toml_value(v)}" for k, v in merged.items()), ""]
    config_path.parent.mkdir(parents=True, exist_ok=True)
    with config_path.open("a", encoding="utf-8") as f:
        f.write("\n".join(lines))
    load_registry(config_path).get(name)  # what we wrote must read back; a ConfigError names the problem
    return config_path


def add_local_model(
    name: str,
    model_path: Path,
    mmproj_path: Path,
    *,
    protocol: str,
    n_ctx: int,
    description: str,
    config_path: Path | None = None,
    chat_format: str | None = None,
    chat_template: Path | None = None,
) -> Path:
    """Register a local GGUF pair in the user's config file by appending a table (comments survive)."""
    config_path = config_path or paths.config_file()
    registry = load_registry(config_path)
    if name in registry.models:
        where = "built in" if registry.models[name].source == "builtin" else f"in {config_path}"
        raise UsageError(f"a model named {name!r} already exists ({where})", hint="choose another name")
    if protocol not in PROTOCOLS:
        raise UsageError(f"--protocol must be one of {', '.join(PROTOCOLS)}")
    for label, path in (("--model", model_path), ("--mmproj", mmproj_path)):
        if not path.is_file():
            raise UsageError(f"{label} {path}: no such file")
        with path.open("rb") as f:
            if f.read(4) != b"GGUF":
                raise UsageError(f"{label} {path}: not a GGUF file")
    lines = [
        "",
        f"[models.{_toml_string(name)}]",
        f"description = {_toml_string(description)}",
        f"model_path = {_toml_string(str(model_path.resolve()))}",
        f"mmproj_path = {_toml_string(str(mmproj_path.resolve()))}",
        f"protocol = {_toml_string(protocol)}",
        f"n_ctx = {n_ctx}",
    ]
    if chat_format:
        lines.append(f"chat_format = {_toml_string(chat_format)}")
    if chat_template is not None:
        if not chat_template.is_file():
            raise UsageError(f"--chat-template {chat_template}: no such file")
        lines.append(f"chat_template = {_toml_string(str(chat_template.resolve()))}")
    lines.append("")
    config_path.parent.mkdir(parents=True, exist_ok=True)
    with config_path.open("a", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return config_path


def _header_names(line: str) -> list[str] | None:
    """The dotted key of a `[table]` header line as a list of names, or None if LINE is no header."""
    stripped = line.strip()
    if not stripped.startswith("[") or stripped.startswith("[["):
        return None
    body = stripped[1:].split("]", 1)[0]
    try:
        parsed = tomllib.loads(f"[{body}]\n")
    except tomllib.TOMLDecodeError:
        return None
    names: list[str] = []
    node: Any = parsed
    while isinstance(node, dict) and len(node) == 1:
        key = next(iter(node))
        names.append(key)
        node = node[key]
    return names


def remove_user_model(name: str, config_path: Path | None = None) -> Path:
    """Delete the [models.NAME] table (and its sub-tables) from the user's config file.

    Only the table's header and keys go; every other line stays as it was, and so do the comments
    between the table's last key and the next table (they introduce the next one). The result is parsed
    before it is written (atomically, with a .bak copy of the old file), so a file we cannot edit
    safely is left untouched and the user is told to edit it by hand.
    """
    config_path = config_path or paths.config_file()
    text = config_path.read_text(encoding="utf-8")
    before = _read_toml(config_path, "config file")
    kept: list[str] = []
    span: list[str] = []  # lines of the table being removed, held until we know where it ends
    skipping = False
    for line in [*text.splitlines(keepends=True), None]:
        header = _header_names(line) if line is not None else None
        if (header is not None or line is None) and span:
            # Comments and blank lines at the end of the removed table introduce what follows: keep them.
            tail = len(span)
            while tail > 0 and (not span[tail - 1].strip() or span[tail - 1].lstrip().startswith("#")):
                tail -= 1
            kept.extend(span[tail:])
            span = []
        if line is None:
            break
        if header is not None:
            skipping = header[:2] == ["models", name]
        (span if skipping else kept).append(line)
    new_text = "".join(kept)
    models_before = before.get("models", {})
    if not isinstance(models_before, dict) or name not in models_before:
        raise ConfigError(f"{config_path} has no [models.{name}] entry")
    try:
        after: dict[str, Any] | None = tomllib.loads(new_text)
    except tomllib.TOMLDecodeError:
        after = None
    rest_before = {k: v for k, v in before.items() if k != "models"}
    safe = (
        after is not None
        and after.get("models", {}) == {k: v for k, v in models_before.items() if k != name}
        and {k: v for k, v in after.items() if k != "models"} == rest_before
    )
    if not safe:
        raise ConfigError(
            f"cannot remove [models.{name}] from {config_path} automatically",
            hint="edit the file by hand and delete that table",
        )
    backup = config_path.with_name(config_path.name + ".bak")
    backup.write_text(text, encoding="utf-8")
    tmp = config_path.with_name(config_path.name + ".tmp")
    tmp.write_text(new_text, encoding="utf-8")
    tmp.replace(config_path)
    return config_path
