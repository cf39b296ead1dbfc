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
from typing import TYPE_CHECKING, Any, Literal

from thyme_cli import paths
from thyme_cli.errors import ConfigError, ModelNotFound, UsageError
from thyme_cli.models.spec import PROTOCOLS, ModelSpec

if TYPE_CHECKING:
    from tomlkit.container import Container
    from tomlkit.items import Item, Key, Table
    from tomlkit.toml_document import TOMLDocument

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


def upsert_user_model(
    name: str, values: dict[str, str | int | float | bool | Path], config_path: Path | None = None
) -> Path:
    """Set VALUES in the user's [models.NAME] table, creating it if needed (a built-in entry is overridden).

    An existing entry is updated where it stands (the old file is kept as .bak); a new one is added
    after the other entries. Other tables and comments stay as they are (tomlkit keeps the file's style).
    """
    config_path = config_path or paths.config_file()
    doc = _read_document(config_path)
    models = _models_table(doc, config_path)
    entry = models.get(name)
    if isinstance(entry, dict):
        for key, value in values.items():
            entry[key] = _toml_item(value)
    else:
        models.append(_entry_key(name), _new_entry(values))
    _write_document(config_path, doc, backup=isinstance(entry, dict))
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
    """Register a local GGUF pair in the user's config file as a new table (comments survive)."""
    config_path = config_path or paths.config_file()
    _check_new_local_model(name, model_path, mmproj_path, protocol, load_registry(config_path))
    values: dict[str, str | int | float | bool | Path] = {
        "description": description,
        "model_path": model_path.resolve(),
        "mmproj_path": mmproj_path.resolve(),
        "protocol": protocol,
        "n_ctx": n_ctx,
    }
    if chat_format:
        values["chat_format"] = chat_format
    if chat_template is not None:
        if not chat_template.is_file():
            raise UsageError(f"--chat-template {chat_template}: no such file")
        values["chat_template"] = chat_template.resolve()
    doc = _read_document(config_path)
    _models_table(doc, config_path).append(_entry_key(name), _new_entry(values))
    _write_document(config_path, doc, backup=False)
    return config_path


def _check_new_local_model(name: str, model_path: Path, mmproj_path: Path, protocol: str, registry: Registry) -> None:
    """`thyme models add` refuses a taken name, an unknown protocol and files that are no GGUF."""
    if name in registry.models:
        where = "built in" if registry.models[name].source == "builtin" else f"in {registry.config_path}"
        raise UsageError(f"a model named {name!r} already exists ({where})", hint="choose another name")
    if protocol not in PROTOCOLS:
        raise UsageError(f"--protocol must be one of {', '.join(PROTOCOLS)}")
    for label, path in (("--model", model_path), ("--mmproj", mmproj_path)):
        if not path.is_file():
            raise UsageError(f"{label} {path}: no such file")
        with path.open("rb") as f:
            if f.read(4) != b"GGUF":
                raise UsageError(f"{label} {path}: not a GGUF file")


def remove_user_model(name: str, config_path: Path | None = None) -> Path:
    """Delete the [models.NAME] table (and its sub-tables) from the user's config file.

    Only the table's header and keys go; every other line stays as it was, and so do the comments
    between the table's last key and the next table (they introduce the next one). The result is parsed
    before it is written (atomically, with a .bak copy of the old file), so a file we cannot edit
    safely is left untouched and the user is told to edit it by hand.
    """
    import tomlkit
    from tomlkit.items import Table

    config_path = config_path or paths.config_file()
    before = _read_toml(config_path, "config file")
    models_before = before.get("models", {})
    if not isinstance(models_before, dict) or name not in models_before:
        raise ConfigError(f"{config_path} has no [models.{name}] entry")
    doc = _read_document(config_path)
    models = doc.get("models")
    entry = models.get(name) if isinstance(models, Table) else None
    if not isinstance(models, Table) or not isinstance(entry, Table):  # inline or dotted: not a table of its own
        raise _cannot_remove(name, config_path)
    _keep_trailing_comments(doc, entry)
    del models[name]
    new_text = tomlkit.dumps(doc)
    after = _parsed_or_none(new_text)
    safe = (
        after is not None
        and after.get("models", {}) == {k: v for k, v in models_before.items() if k != name}
        and {k: v for k, v in after.items() if k != "models"} == {k: v for k, v in before.items() if k != "models"}
    )
    if not safe:
        raise _cannot_remove(name, config_path)
    return _write_text(config_path, new_text, backup=True)


# --- editing the user's config file (tomlkit: comments, order and formatting survive) -------------


def _read_document(config_path: Path) -> TOMLDocument:
    """The user's config file as a tomlkit document (an empty one when there is no file yet)."""
    import tomlkit

    if not config_path.exists():
        return tomlkit.document()
    _read_toml(config_path, "config file")  # a broken file is reported as load_registry reports it
    return tomlkit.parse(config_path.read_text(encoding="utf-8"))


def _models_table(doc: TOMLDocument, config_path: Path) -> Table:
    """The document's [models] table, created (as a header-less super-table) when missing."""
    import tomlkit
    from tomlkit.items import Table

    models = doc.get("models")
    if models is None:
        models = tomlkit.table(is_super_table=True)
        doc.append("models", models)
    if not isinstance(models, Table):
        raise ConfigError(f"config file {config_path}: [models] must be a table")
    return models


def _entry_key(name: str) -> Key:
    """NAME as a quoted key, so the header reads [models."NAME"] whatever characters it has."""
    from tomlkit.items import KeyType, SingleKey

    return SingleKey(name, KeyType.Basic)


def _toml_item(value: str | int | float | bool | Path) -> Item:
    import tomlkit

    return tomlkit.item(str(value) if isinstance(value, Path) else value)


def _new_entry(values: dict[str, str | int | float | bool | Path]) -> Table:
    """A [models.NAME] table of VALUES (tomlkit sets it off from what comes before with a blank line)."""
    import tomlkit

    table = tomlkit.table()
    for key, value in values.items():
        table.append(key, _toml_item(value))
    return table


def _keep_trailing_comments(doc: TOMLDocument, entry: Table) -> None:
    """Comments and blank lines at the end of ENTRY introduce what follows it: move them in front of
    the next table's header (or to the end of the file) so that deleting ENTRY keeps them."""
    from tomlkit.items import Comment, Table, Whitespace

    last = entry
    while last.value.body and isinstance(last.value.body[-1][1], Table):
        last = last.value.body[-1][1]
    body = last.value.body
    tail = len(body)
    while tail > 0 and body[tail - 1][0] is None and isinstance(body[tail - 1][1], Comment | Whitespace):
        tail -= 1
    trailing = [item for _, item in body[tail:]]
    if not trailing:
        return
    following = _table_after(doc, entry)
    if following is not None:
        following.trivia.indent = "".join(item.as_string() for item in trailing) + following.trivia.indent
    else:
        for item in trailing:
            doc.body.append((None, item))


def _table_after(doc: TOMLDocument, entry: Table) -> Table | None:
    """The first table with a header of its own that the file has after ENTRY and its sub-tables."""
    from tomlkit.items import AoT, Table

    order: list[tuple[Table, int]] = []  # every table in file order, with the number of its sub-tables

    def walk(container: Container) -> None:
        for _, item in container.body:
            for table in item.body if isinstance(item, AoT) else [item] if isinstance(item, Table) else []:
                at = len(order)
                order.append((table, 0))
                walk(table.value)
                order[at] = (table, len(order) - at - 1)

    walk(doc)
    at = next(i for i, (table, _) in enumerate(order) if table is entry)
    return next((t for t, _ in order[at + 1 + order[at][1] :] if not t.is_super_table()), None)


def _parsed_or_none(text: str) -> dict[str, Any] | None:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return None


def _cannot_remove(name: str, config_path: Path) -> ConfigError:
    return ConfigError(
        f"cannot remove [models.{name}] from {config_path} automatically",
        hint="edit the file by hand and delete that table",
    )


def _write_document(config_path: Path, doc: TOMLDocument, *, backup: bool) -> Path:
    import tomlkit

    return _write_text(config_path, tomlkit.dumps(doc), backup=backup)


def _write_text(config_path: Path, text: str, *, backup: bool) -> Path:
    """Write TEXT over the config file atomically; with BACKUP the old file is kept as .bak first."""
    config_path.parent.mkdir(parents=True, exist_ok=True)
    if backup:
        backup_path = config_path.with_name(config_path.name + ".bak")
        backup_path.write_text(config_path.read_text(encoding="utf-8"), encoding="utf-8")
    tmp = config_path.with_name(config_path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(config_path)
    return config_path
