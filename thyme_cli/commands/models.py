"""`thyme models ...`: list, inspect, download, register and remove models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from thyme_cli.console import handle_errors, out_console
from thyme_cli.registry import ModelSpec, add_local_model, load_registry

app = typer.Typer(help="List, download, inspect, register and remove models.", no_args_is_help=True)


def _row_source(spec: ModelSpec) -> str:
    if spec.is_local:
        return "local files"
    return f"{spec.repo}" + (f"@{spec.revision}" if spec.revision else "")


@app.command("list")
@handle_errors
def list_models(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Show every known model, whether it is installed, and its size."""
    registry = load_registry()
    rows: list[dict[str, Any]] = []
    for spec in registry.models.values():
        rows.append(
            {
                "name": spec.name,
                "default": spec.name == registry.default_model,
                "protocol": spec.protocol,
                "source": _row_source(spec),
                "size_gb": spec.size_gb,
                "description": spec.description,
            }
        )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table(title="thyme models", title_justify="left")
    for col in ("name", "protocol", "size", "source", "description"):
        table.add_column(col)
    for row in rows:
        size = f"~{row['size_gb']:.1f} GB" if row["size_gb"] else "?"
        name = row["name"] + (" (default)" if row["default"] else "")
        table.add_row(name, row["protocol"], size, row["source"], row["description"])
    out_console().print(table)


@app.command("add")
@handle_errors
def add(
    name: str = typer.Argument(..., help="Name to register the model under."),
    model: Path = typer.Option(..., "--model", help="The language model GGUF file."),
    mmproj: Path = typer.Option(..., "--mmproj", help="The vision projector (mmproj) GGUF file."),
    protocol: str = typer.Option("generic", "--protocol", help="Prompt protocol: 'thyme' or 'generic'."),
    n_ctx: int = typer.Option(8192, "--ctx", help="Default context size in tokens."),
    description: str = typer.Option("local GGUF pair", "--description", help="One line shown by `models list`."),
) -> None:
    """Register a local GGUF model + mmproj pair in your config file."""
    where = add_local_model(
        name, model, mmproj, protocol=protocol, n_ctx=n_ctx, description=description
    )
    typer.echo(f"registered {name} in {where}")
