"""`thyme models ...`: list, inspect, download, convert, register and remove models.

Thin: flags -> thyme_cli.models (store, pull, convert, registry) -> output. Results go to stdout (tables,
JSON, paths), messages and progress to stderr. huggingface_hub is only imported by `pull` and
`convert` (inside models/pull.py / models/convert/), the converter never in this process.
"""

from __future__ import annotations

import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from thyme_cli.errors import ThymeError, UsageError
from thyme_cli.models.hub import cache as hub_cache
from thyme_cli.models.pull import pull
from thyme_cli.models.registry import add_local_model, load_registry
from thyme_cli.models.spec import ModelSpec
from thyme_cli.models.store import (
    ModelState,
    approx_size,
    converted_dir,
    model_state,
    preferred_default,
)
from thyme_cli.ui.console import confirm, handle_errors, human_size, info, out_console

if TYPE_CHECKING:
    from thyme_cli.models.manage import Removed

app = typer.Typer(help="List, download, convert, inspect, register and remove models.", no_args_is_help=True)

NAME_ARG = typer.Argument(..., help="Model name (see `thyme models list`), or a Hub reference hf.co/ORG/REPO[:QUANT].")


def _row_source(spec: ModelSpec) -> str:
    if spec.is_local:
        return "local files"
    if spec.source_dir is not None:
        return f"converted from {spec.source_dir}"
    return f"{spec.repo}" + (f"@{spec.revision}" if spec.revision else "")


def _size_text(spec: ModelSpec, state: ModelState) -> str:
    """On-disk size when installed, else the approximate download size."""
    if state.installed and state.size_on_disk is not None:
        return human_size(state.size_on_disk)
    return approx_size(spec) if spec.size_gb else "?"


@app.command("list")
@handle_errors
def list_models(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Show every known model, whether it is installed, and its size."""
    registry = load_registry()
    default = preferred_default(registry)
    rows: list[dict[str, Any]] = []
    for spec in registry.models.values():
        state = model_state(spec)
        rows.append(
            {
                "name": spec.name,
                "default": spec.name == default,
                "installed": state.installed,
                "state": state.label,
                "size_bytes": state.size_on_disk if state.installed else None,
                "size_gb": spec.size_gb,
                "size": _size_text(spec, state),
                "protocol": spec.protocol,
                "source": _row_source(spec),
                "description": spec.description,
            }
        )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    console = out_console()
    wide = console.width >= 140  # the repo column only when there is room; `info` always shows it
    table = Table(title="thyme models", title_justify="left", caption="* default model", caption_justify="left")
    for col in ("name", "state", "size", "protocol"):
        table.add_column(col, no_wrap=True)
    if wide:
        table.add_column("source", no_wrap=True)
    table.add_column("description", ratio=1)
    for row in rows:
        cells = [row["name"] + (" *" if row["default"] else ""), row["state"], row["size"], row["protocol"]]
        table.add_row(*cells, *([row["source"]] if wide else []), row["description"])
    console.print(table)


def _info_record(spec: ModelSpec, config_path: Path) -> dict[str, Any]:
    """Every registry field, then where the files are and in what state."""
    record: dict[str, Any] = {}
    for f in fields(ModelSpec):
        if f.name == "extra":
            continue
        value = getattr(spec, f.name)
        record[f.name] = str(value) if isinstance(value, Path) else value
    record.update(spec.extra)
    state = model_state(spec)
    if not spec.is_local and not spec.needs_conversion and spec.repo:
        from thyme_cli.models.pull_records import read_pulls

        pulled = read_pulls().get(spec.name)
        local_commit = hub_cache.resolve_commit(spec.repo, spec.revision or "main") if state.installed else None
        record["commit"] = (pulled or {}).get("commit") or local_commit
        record["pulled_at"] = (pulled or {}).get("pulled_at")
    record["state"] = state.label
    record["installed"] = state.installed
    record["size_on_disk"] = state.size_on_disk
    record["model_local_path"] = str(state.files.model) if state.files else None
    record["mmproj_local_path"] = str(state.files.mmproj) if state.files else None
    if spec.is_local:
        record["config_file"] = str(config_path)
    elif spec.needs_conversion:
        record["converted_dir"] = str(converted_dir(spec))
    else:
        record["hub_cache_dir"] = str(hub_cache.repo_dir(spec.repo or ""))
        record["hub_url"] = f"{hub_cache.hub_endpoint()}/{spec.repo}"
    return record


@app.command("info")
@handle_errors
def info_cmd(
    name: str = NAME_ARG,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of aligned lines."),
) -> None:
    """Show every field of a model's entry, its local paths and whether it is installed."""
    registry = load_registry()
    record = _info_record(registry.get(name), registry.config_path)
    if as_json:
        typer.echo(json.dumps(record, indent=2))
        return
    width = max(len(k) for k in record)
    for key, value in record.items():
        if key == "size_on_disk" and value is not None:
            value = f"{human_size(value)} ({value} bytes)"
        typer.echo(f"{key:<{width}}  {'-' if value is None else value}")


@app.command("path")
@handle_errors
def path_cmd(name: str = NAME_ARG) -> None:
    """Print the model file and the mmproj file paths, one per line (for scripts)."""
    spec = load_registry().get(name)
    state = model_state(spec)
    if state.files is None:
        hint = (
            f"fix the paths in the config file, or `thyme models rm {name}`"
            if spec.is_local
            else f"download it with `thyme models pull {name}`"
        )
        detail = "" if state.label == "not installed" else f" ({state.label})"
        raise ThymeError(f"{name} is not installed{detail}", hint=hint)
    typer.echo(str(state.files.model))
    typer.echo(str(state.files.mmproj))


QuantOpt = typer.Option(
    None,
    "--quant",
    help="Quantization of a converted model's language model "
    "(Q4_K_M default; Q4_K_S, Q5_K_M, Q5_K_S, Q6_K, Q8_0, Q3_K_M, Q4_0, F16, BF16, F32).",
)
KeepDownloadOpt = typer.Option(
    False,
    "--keep-download",
    help="Keep the downloaded safetensors in the Hugging Face cache after a conversion (they are deleted by default).",
)


@app.command("pull")
@handle_errors
def pull_cmd(
    name: str = NAME_ARG,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
    quant: str | None = QuantOpt,
    keep_download: bool = KeepDownloadOpt,
    model_file: str | None = typer.Option(
        None,
        "--model-file",
        help="Hub reference: the model GGUF to use (a path inside the repo) instead of the one the quant tag picks.",
    ),
    mmproj_file: str | None = typer.Option(
        None,
        "--mmproj-file",
        help="Hub reference: the projector GGUF to use instead of the one picked next to the model.",
    ),
    protocol: str | None = typer.Option(
        None,
        "--protocol",
        help="Hub reference: prompt protocol, 'generic' (default) or 'thyme' (for Thyme fine-tunes).",
    ),
    revision: str | None = typer.Option(
        None,
        "--revision",
        help="Hub reference: branch, tag or commit (default main; the commit pulled is recorded either way).",
    ),
) -> None:
    """Download a model's two GGUF files into the Hugging Face cache (resumes interrupted downloads).

    NAME may be any GGUF vision repository on the Hub: hf.co/ORG/REPO[:QUANT] (or ORG/REPO:QUANT);
    the files are picked with llama.cpp's rule and the model is registered under hf.co/ORG/REPO:QUANT.
    Models published as safetensors (thyme-7b) are downloaded and converted to GGUF here, once;
    an interrupted pull resumes after the last finished phase.
    """
    from thyme_cli.models.manage import pull_target

    spec, resolved = pull_target(
        load_registry(), name, model_file=model_file, mmproj_file=mmproj_file, protocol=protocol, revision=revision
    )
    if resolved and not quiet:
        info(f"{name} -> {spec.name}: {spec.model_file} + {spec.mmproj_file} (protocol {spec.protocol})")
    name = spec.name
    state = model_state(spec)
    if state.files is not None and quant is None:
        pull(spec, progress=False)  # registers a Hub reference found in the cache; downloads nothing
        if not quiet:
            info(f"{name} is already installed ({human_size(state.size_on_disk)})")
        return
    files = pull(spec, progress=not quiet, quant=quant, keep_download=keep_download)
    if not quiet:
        size = files.model.stat().st_size + files.mmproj.stat().st_size
        info(f"installed {name} ({human_size(size)}): {files.model.parent}")


@app.command("convert")
@handle_errors
def convert_cmd(
    source: str | None = typer.Argument(
        None,
        help="A Hub repo id (org/name) or a local folder with config.json and safetensors of a Qwen2.5-VL checkpoint.",
    ),
    name: str | None = typer.Option(None, "--name", help="Name to register it under (default: from SOURCE)."),
    quant: str = typer.Option("Q4_K_M", "--quant", help="Language model quantization (see `models pull --help`)."),
    mmproj_type: str = typer.Option("f16", "--mmproj-type", help="Vision projector type: f16, q8_0 or f32."),
    protocol: str = typer.Option(
        "generic",
        "--protocol",
        help="Prompt protocol: 'thyme' for checkpoints trained "
        "on Thyme's format (Thyme-RL/SFT fine-tunes), else 'generic'.",
    ),
    n_ctx: int = typer.Option(16384, "--ctx", help="Default context size in tokens."),
    revision: str = typer.Option("main", "--revision", help="Hub branch, tag or commit to convert."),
    keep_download: bool = KeepDownloadOpt,
    pre_tokenizer: str | None = typer.Option(
        None,
        "--pre-tokenizer",
        help="Force llama.cpp's BPE pre-tokenizer name when the converter does not recognise the tokenizer.",
    ),
    setup: bool = typer.Option(False, "--setup", help="Only create (or check) the converter environment."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Convert a Qwen2.5-VL checkpoint (Thyme-RL or any fine-tune) to GGUF and register it.

    Runs llama.cpp's converter in a separate environment (torch + transformers, created on first
    use), quantizes with llama.cpp, checks that the pair loads, and installs it under the data dir.
    """
    from thyme_cli.models.convert.pipeline import NewModel, convert_new

    if setup:
        from thyme_cli.models.convert.env import check_converter, describe

        env, versions = check_converter(lambda m: None if quiet else info(m))
        typer.echo(describe(env, versions))
        return
    if source is None:
        raise UsageError(
            "give a Hub repo id or a checkpoint folder to convert", hint="see `thyme models convert --help`"
        )
    spec, files = convert_new(
        source,
        name=name,
        revision=revision,
        quant=quant,
        mmproj_type=mmproj_type,
        keep_download=keep_download,
        pre_tokenizer=pre_tokenizer,
        new=NewModel(protocol=protocol, n_ctx=n_ctx),
        progress=not quiet,
    )
    size = files.model.stat().st_size + files.mmproj.stat().st_size
    if not quiet:
        info(f"installed {spec.name} ({human_size(size)}, protocol {spec.protocol}): {files.model.parent}")
        info(
            f"registered {spec.name} in {load_registry().config_path}; "
            f"try `thyme ask IMAGE QUESTION --model {spec.name}`"
        )


@app.command("rm")
@handle_errors
def rm_cmd(
    name: str = NAME_ARG,
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete a model's downloaded files (a local pair: only its config entry, never your files)."""
    from thyme_cli.models.manage import plan_removal, remove_model

    registry = load_registry()
    plan = plan_removal(registry, name)
    if plan.question is None:
        info(f"{name} is not installed; nothing to remove")
        return
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"not deleting {name} without confirmation", hint="pass --yes to confirm")
        if not confirm(plan.question):
            info("nothing removed")
            return
    _show_removed(plan.spec, remove_model(registry, plan.spec), registry.config_path)


def _show_removed(spec: ModelSpec, removed: Removed, config_path: Path) -> None:
    if removed.states:
        info(f"removed {removed.states} saved prompt state(s) of deleted models ({human_size(removed.states_bytes)})")
    entry_removed = f"removed the entry {spec.name} from {config_path} (a .bak copy of the old file is next to it)"
    if spec.is_local:
        info(entry_removed)
        info(f"your files were not touched: {spec.model_path}, {spec.mmproj_path}")
        return
    for filename, users in removed.shared.items():
        info(f"kept {filename}: also used by {', '.join(users)}")
    info(f"removed {spec.name}; freed {human_size(removed.freed)}")
    if removed.entry_removed:
        info(entry_removed)


@app.command("add")
@handle_errors
def add(
    name: str = typer.Argument(..., help="Name to register the model under."),
    model: Path = typer.Option(..., "--model", help="The language model GGUF file."),
    mmproj: Path = typer.Option(..., "--mmproj", help="The vision projector (mmproj) GGUF file."),
    protocol: str = typer.Option("generic", "--protocol", help="Prompt protocol: 'thyme' or 'generic'."),
    n_ctx: int = typer.Option(8192, "--ctx", help="Default context size in tokens."),
    description: str = typer.Option("local GGUF pair", "--description", help="One line shown by `models list`."),
    chat_format: str | None = typer.Option(
        None, "--chat-format", metavar="NAME", help="llama.cpp built-in prompt format for a GGUF without a template."
    ),
    chat_template: Path | None = typer.Option(
        None, "--chat-template", metavar="FILE", help="A Jinja chat template file to use instead of the GGUF's."
    ),
) -> None:
    """Register a local GGUF model + mmproj pair in your config file."""
    where = add_local_model(
        name,
        model,
        mmproj,
        protocol=protocol,
        n_ctx=n_ctx,
        description=description,
        chat_format=chat_format,
        chat_template=chat_template,
    )
    typer.echo(f"registered {name} in {where}")
