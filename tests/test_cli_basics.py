"""The root CLI as a user meets it: version, help on every command, fast and light help."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from thyme_cli import __version__
from thyme_cli.cli import app

COMMANDS = [[], ["ask"], ["batch"], ["doctor"], ["models"], ["models", "list"], ["models", "add"]]


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"thyme {__version__}"


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "root")
def test_help_on_every_command(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_help_does_not_import_heavy_modules() -> None:
    code = (
        "import sys\n"
        "sys.argv = ['thyme', '--help']\n"
        "from thyme_cli.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('llama_cpp', 'cv2', 'numpy', 'huggingface_hub', 'PIL') if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "HEAVY="


def test_shell_completion_is_offered() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert "--install-completion" in result.output
