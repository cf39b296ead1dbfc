"""`thyme doctor`: what works on this machine (filled in as components land)."""

from __future__ import annotations

import typer

from thyme_cli.console import handle_errors


@handle_errors
def doctor() -> None:
    """Check Python, llama.cpp, the sandbox, models and disk; hint at fixes."""
    typer.echo("doctor: not built yet")
