"""`thyme batch` (placeholder until the batch issue lands)."""

from __future__ import annotations

import typer

from thyme_cli.console import handle_errors
from thyme_cli.errors import ThymeError


@handle_errors
def batch(
    inputs: str = typer.Argument(..., help="A directory, glob, manifest (.jsonl/.csv) or '-' for paths on stdin."),
    question: str = typer.Option(None, "--question", "-q", help="The question to ask of every image."),
) -> None:
    """Ask questions about many images, resumably, with JSONL output."""
    raise ThymeError("`thyme batch` is not built yet")
