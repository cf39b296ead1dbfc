"""A thumbnail of each new image in any terminal with colour: kitty, iTerm2, sixel, or half-blocks.

kitty and iTerm2 (and WezTerm) draw real pixels with their own protocols (`inline_image_sequence`);
sixel terminals (foot, mlterm, Konsole, Windows Terminal, xterm -ti vt340, ...) and every other
colour terminal are served by textual-image: sixel where the terminal has it (named by the
environment, or found by textual-image asking the terminal), else coloured half-block cells
(two pixels per character cell), which any terminal with colour shows.

Previews are off with --no-previews, THYME_NO_PREVIEW=1 or THYME_PREVIEWS=off, when the stream
is not a terminal, and for NO_COLOR / TERM=dumb. THYME_PREVIEWS=kitty|iterm|sixel|halfblock forces
one protocol.
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from rich.console import Console

PROTOCOLS = ("kitty", "iterm", "sixel", "halfblock")
THUMBNAIL_CELLS = 32  # width of a thumbnail in character cells (at most half the terminal)
# Terminals known to draw sixels, by what they put in the environment.
_SIXEL_TERMS = ("foot", "mlterm", "yaft", "contour", "xterm-sixel")


def choose(stream: TextIO) -> str | None:
    """The preview protocol for STREAM, or None when no preview should be drawn."""
    env = os.environ
    forced = env.get("THYME_PREVIEWS", "").strip().lower()
    if forced == "off" or env.get("THYME_NO_PREVIEW") or env.get("NO_COLOR") is not None:
        return None
    try:
        if not stream.isatty():
            return None
    except (AttributeError, ValueError):
        return None
    term = env.get("TERM", "")
    if term == "dumb":
        return None
    if forced in PROTOCOLS:
        return forced
    if term == "xterm-kitty" or env.get("KITTY_WINDOW_ID"):
        return "kitty"
    if env.get("TERM_PROGRAM") in ("iTerm.app", "WezTerm"):
        return "iterm"
    if any(term.startswith(t) for t in _SIXEL_TERMS) or env.get("KONSOLE_VERSION") or env.get("WT_SESSION"):
        return "sixel"
    return "sixel" if _terminal_says_sixel() else "halfblock"


def _terminal_says_sixel() -> bool:
    """textual-image asks the terminal (device attributes) when stdout is one; tmux and screen answer
    for themselves, so the question is only asked outside them."""
    if os.environ.get("TMUX") or os.environ.get("STY"):
        return False
    try:
        import textual_image.renderable as ti

        return ti.Image is ti.SixelImage
    except Exception:  # a terminal that answers strangely must not break a run
        return False


def show(console: Console, path: Path, protocol: str, max_cells: int = THUMBNAIL_CELLS) -> bool:
    """Draw a thumbnail of PATH on CONSOLE with PROTOCOL; False when the image cannot be read."""
    if protocol in ("kitty", "iterm"):
        sequence = inline_image_sequence(path, protocol)
        if sequence is None:
            return False
        console.file.write(sequence + "\n")
        console.file.flush()
        return True
    from PIL import Image

    try:
        with Image.open(path) as src:
            src.draft("RGB", (max_cells * 16, max_cells * 16))
            img = src.convert("RGB")
            img.thumbnail((max_cells * 16, max_cells * 16))
    except OSError:
        return False
    cells = max(4, min(max_cells, console.width // 2))
    try:
        if protocol == "sixel":
            from textual_image.renderable.sixel import Image as SixelImage

            console.print(SixelImage(img, width=cells, height="auto"))
        else:
            from textual_image.renderable.halfcell import Image as HalfcellImage

            console.print(HalfcellImage(img, width=cells, height="auto"))
    except Exception:  # a preview is a nicety: a terminal that cannot take it must not end the run
        return False
    return True


def inline_image_sequence(path: Path, protocol: str, max_side: int = 256) -> str | None:
    """The escape sequence that draws a small thumbnail of path in kitty or iTerm2."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.thumbnail((max_side, max_side))
            buf = io.BytesIO()
            img.save(buf, "PNG")
    except OSError:
        return None
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    if protocol == "iterm":
        return f"\x1b]1337;File=inline=1;size={len(buf.getvalue())};preserveAspectRatio=1:{data}\x07"
    chunks = [data[i : i + 4096] for i in range(0, len(data), 4096)]
    parts = []
    for i, chunk in enumerate(chunks):
        more = 1 if i < len(chunks) - 1 else 0
        head = f"a=T,f=100,m={more}" if i == 0 else f"m={more}"
        parts.append(f"\x1b_G{head};{chunk}\x1b\\")
    return "".join(parts)
