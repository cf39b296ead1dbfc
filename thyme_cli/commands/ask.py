"""`thyme ask IMAGE QUESTION` (placeholder until the agent loop lands)."""

from __future__ import annotations

from pathlib import Path

import typer

from thyme_cli.console import handle_errors
from thyme_cli.errors import ThymeError


@handle_errors
def ask(
    image: Path = typer.Argument(..., help="The image to ask about ('-' reads it from stdin)."),
    question: str = typer.Argument(..., help="What you want to know."),
) -> None:
    """Ask one question about one image."""
    raise ThymeError("`thyme ask` is not built yet")
