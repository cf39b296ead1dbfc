"""Printing for people: one stderr console for messages, errors and progress.

Messages go to stderr so that stdout carries only results (an answer, JSON, JSONL) and pipelines
stay clean. rich honours NO_COLOR and drops styling when the stream is not a terminal.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from thyme_cli.errors import EXIT_RUNTIME, ThymeError

if TYPE_CHECKING:
    from rich.console import Console

P = ParamSpec("P")
R = TypeVar("R")


@functools.cache
def err_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


@functools.cache
def out_console() -> Console:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def debug_enabled() -> bool:
    return os.environ.get("THYME_DEBUG", "") not in ("", "0", "false", "no")


def print_error(message: str, hint: str | None = None) -> None:
    """One clear line (plus an optional hint line) on stderr, without rich markup surprises."""
    from rich.text import Text

    console = err_console()
    console.print(Text.assemble(("error: ", "bold red"), message))
    if hint:
        console.print(Text.assemble(("hint: ", "yellow"), hint))


def warn(message: str) -> None:
    from rich.text import Text

    err_console().print(Text.assemble(("warning: ", "yellow"), message))


def info(message: str) -> None:
    from rich.text import Text

    err_console().print(Text(message))


def handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn ThymeError (and anything unexpected) into one line and an exit code, not a traceback."""
    import typer

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except ThymeError as e:
            if debug_enabled():
                traceback.print_exc(file=sys.stderr)
            print_error(e.message, e.hint)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            if debug_enabled():
                traceback.print_exc(file=sys.stderr)
            print_error("interrupted")
            raise typer.Exit(130) from None
        except Exception as e:
            if debug_enabled():
                traceback.print_exc(file=sys.stderr)
            print_error(
                f"unexpected {type(e).__name__}: {e}",
                hint="this is a bug in thyme; run again with THYME_DEBUG=1 for the traceback and report it",
            )
            raise typer.Exit(EXIT_RUNTIME) from None

    return wrapper


def human_size(n: float | None) -> str:
    """Bytes as a short human string (1.2 GB)."""
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def confirm(question: str) -> bool:
    """Ask QUESTION on stderr, read y/N from stdin; anything but yes (or end of input) means no."""
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline()
    if not answer.endswith("\n"):
        sys.stderr.write("\n")
    return answer.strip().lower() in ("y", "yes")
