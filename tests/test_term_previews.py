"""Image previews in any terminal, checked by driving the real CLI in tmux and reading its screen.

tmux has no sixel or kitty graphics, so it gets the colour half-block fallback (what any colour
terminal gets); the sixel path is checked on a pseudo-terminal by reading the bytes the CLI writes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import RunThyme
from tests.hub_fixtures import run_in_pty

ORANGE = (250, 120, 0)
HALF_BLOCK = "▀"
CROP = (
    "<code>\n```python\nimg = Image.open(image_path)\nc = img.crop((0, 0, 200, 150))\n"
    "c.save('/mnt/data/temp_processed_images/c.png')\nprint(c.size)\n```\n</code>"
)


@pytest.fixture
def scripted(tmp_path: Path) -> tuple[Path, Path]:
    image = tmp_path / "img.png"
    Image.new("RGB", (400, 300), ORANGE).save(image)
    script = tmp_path / "s.json"
    script.write_text(json.dumps([CROP, "<answer>orange</answer>"]))
    return image, script


class Tmux:
    """A private tmux server (its own socket) running one command in a 160x60 window."""

    def __init__(self) -> None:
        self.socket = f"thyme-test-{uuid.uuid4().hex[:8]}"

    def tmux(self, *args: str, env: dict[str, str] | None = None) -> str:
        return subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=30, env=env, check=True
        ).stdout

    def run(self, command: list[str], extra_env: dict[str, str], until: str, timeout: float = 90) -> str:
        """Start COMMAND in a fresh window, wait until UNTIL shows on screen, return the screen with colours."""
        env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
        env.update({"COLORTERM": "truecolor", **extra_env})
        shell = " ".join(_quote(c) for c in command) + "; sleep 600"
        self.tmux("new-session", "-d", "-x", "160", "-y", "60", shell, env=env)
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.tmux("capture-pane", "-p", "-e", "-S", "-200", "-t", "0")
            if until in screen:
                return screen
            time.sleep(0.3)
        raise AssertionError(f"{until!r} never showed on the tmux screen:\n{screen}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=30)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (apt-get install tmux; CI installs it)")
    session = Tmux()
    try:
        yield session
    finally:
        session.close()


def _thyme(*args: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "thyme_cli.cli", *args]


def _orange_cells(screen: str) -> int:
    """Half-block cells drawn in the image's colour: follow the SGR colour state across the screen
    (tmux repeats a colour only where it changes) and count the cells drawn while it is orange."""
    count, fg = 0, None
    for i, part in enumerate(re.split(r"\x1b\[([0-9;]*)m", screen)):
        if i % 2 == 0:
            if fg == ORANGE:
                count += part.count(HALF_BLOCK)
            continue
        params = part.split(";") if part else ["0"]
        j = 0
        while j < len(params):
            if params[j] in ("38", "48") and j + 1 < len(params) and params[j + 1] in ("2", "5"):
                if params[j] == "38" and params[j + 1] == "2" and j + 4 < len(params):
                    fg = tuple(int(v) for v in params[j + 2 : j + 5])
                j += 5 if params[j + 1] == "2" else 3  # skip the whole colour, whose numbers are no codes
                continue
            if params[j] in ("0", "39"):
                fg = None
            j += 1
    return count


def test_half_blocks_in_tmux_and_none_when_asked(tmux: Tmux, scripted: tuple[Path, Path], sandbox_backend: str) -> None:
    image, script = scripted
    screen = tmux.run(_thyme("ask", str(image), "what colour", "--script", str(script)), {}, until="run id")
    assert "step 1: ok" in screen and "images/step1-c.png" in screen
    assert _orange_cells(screen) >= 8 * 10  # a thumbnail, many cells wide and tall, in the image's colour
    run_id = screen.split("run id ")[1].split()[0]
    tmux.close()

    tmux.socket += "b"
    shown = tmux.run(_thyme("runs", "show", run_id), {}, until="answer")
    assert _orange_cells(shown) >= 2 * 8 * 10  # input and step image, both previewed
    tmux.close()

    for extra_args, env in (((), {"NO_COLOR": "1"}), (("--no-previews",), {})):
        tmux.socket += "c"
        plain = tmux.run(_thyme("ask", str(image), "q", "--script", str(script), *extra_args), env, until="run id")
        assert "images/step1-c.png" in plain and HALF_BLOCK not in plain
        tmux.close()


def test_no_previews_when_stderr_is_not_a_terminal(
    run_thyme: RunThyme, scripted: tuple[Path, Path], sandbox_backend: str
) -> None:
    image, script = scripted
    result = run_thyme("ask", str(image), "q", "--script", str(script), env={"THYME_PREVIEWS": "halfblock"})
    assert result.returncode == 0, result.stderr
    assert HALF_BLOCK not in result.stderr and "\x1b" not in result.stderr


def test_sixel_terminals_get_sixels(scripted: tuple[Path, Path], sandbox_backend: str) -> None:
    image, script = scripted
    # A 60x200 window of 10x20-pixel cells, as a real terminal reports it (sixels are sized in pixels).
    code, output = run_in_pty(
        ["ask", str(image), "q", "--script", str(script)], env={"THYME_PREVIEWS": "sixel"}, window=(60, 200, 2000, 1200)
    )
    assert code == 0, output
    found = re.search(r"\x1bP[0-9;]*q(.*?)\x1b\\", output, re.DOTALL)  # DCS ... q <sixel data> ST
    assert found is not None, output[-2000:]
    sixel = found.group(1)
    registers = {tuple(int(v) for v in m) for m in re.findall(r"#\d+;2;(\d+);(\d+);(\d+)", sixel)}
    assert (98, 47, 0) in registers, sixel[:300]  # the image's orange (250, 120, 0) in sixel percentages
    assert sixel.count("-") >= 10  # many sixel rows: a real thumbnail, not a dot
    assert HALF_BLOCK not in output
