"""Shared fixtures: an isolated home for every test, tiny real GGUF models, and a CLI runner.

Every test gets its own THYME_HOME and HF_HOME so nothing touches the user's real config, runs or
Hugging Face cache. Tests that need the CLI exactly as a user meets it run it in a subprocess
(`run_thyme`), because huggingface_hub reads its HF_* variables at import time.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from thyme_cli.devtools.tiny_gguf import TinyPair, write_tiny_pair

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def shared_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One THYME_CACHE_DIR for the session: the CPU probe (engine/cpu_probe) runs once, not per test."""
    return tmp_path_factory.mktemp("thyme-cache")


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared_cache_dir: Path) -> Iterator[Path]:
    """A fresh THYME_HOME and HF_HOME per test; the Hub is never contacted unless a test says so."""
    home = tmp_path / "thyme-home"
    home.mkdir()
    monkeypatch.setenv("THYME_HOME", str(home))
    monkeypatch.setenv("THYME_CACHE_DIR", str(shared_cache_dir))
    monkeypatch.delenv("THYME_EXTRA_BUFTS", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("THYME_DEBUG", raising=False)
    # An unroutable endpoint: any accidental Hub request fails fast instead of reaching the internet.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    yield home


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory: pytest.TempPathFactory) -> TinyPair:
    """A real (random-weight) qwen2vl text model + qwen2.5vl_merger projector, built once per session."""
    return write_tiny_pair(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def sandbox_backend() -> str:
    """The sandbox backend `--sandbox auto` really uses here; end-to-end tests skip, saying why, without one."""
    from thyme_cli.sandbox.host.factory import probe_backends

    working = [p.name for p in probe_backends() if p.works]
    if not working:
        pytest.skip("no sandbox backend starts on this machine: " + "; ".join(p.detail for p in probe_backends()))
    return working[0]


RunThyme = Callable[..., subprocess.CompletedProcess[str]]


def add_model(run_thyme: RunThyme, pair: TinyPair, *options: str, name: str = "tiny") -> None:
    """Register a GGUF pair the way a user would (`thyme models add`), before the test uses it."""
    added = run_thyme("models", "add", name, "--model", str(pair.model), "--mmproj", str(pair.mmproj), *options)
    assert added.returncode == 0, added.stderr


@pytest.fixture
def run_thyme() -> RunThyme:
    """Run the real `thyme` CLI in a subprocess with the test's environment (plus overrides)."""

    def run(
        *args: str,
        env: dict[str, str] | None = None,
        input: str | bytes | None = None,
        timeout: float = 300,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
        full_env.pop("FORCE_COLOR", None)
        return subprocess.run(
            [sys.executable, "-m", "thyme_cli.cli", *args],
            env=full_env,
            input=input,
            capture_output=True,
            text=not isinstance(input, bytes),
            timeout=timeout,
            cwd=cwd,
        )

    return run
