"""`thyme models rm`: deletes only this model's files, asks first on a terminal, never touches user files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import RunThyme
from tests.hub_fixtures import (  # noqa: F401  (fixtures: hub, tiny_files)
    MMPROJ_FILE,
    MODEL_FILE,
    REPO,
    hub_entry,
    hub_fixture,
    repo_dir,
    run_in_pty,
    tiny_files_fixture,
    write_config,
)
from tests.hub_server import LocalHub
from thyme_cli.devtools.tiny_gguf import TinyPair

Q8_FILE = "tiny-Q8_0.gguf"


def _installed(run_thyme: RunThyme, name: str) -> bool:
    return run_thyme("models", "path", name).returncode == 0


def test_rm_without_a_terminal_needs_yes(hub: LocalHub, run_thyme: RunThyme) -> None:
    assert run_thyme("models", "pull", "tiny").returncode == 0
    result = run_thyme("models", "rm", "tiny")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: not deleting tiny without confirmation",
        "hint: pass --yes to confirm",
    ]
    assert _installed(run_thyme, "tiny")


def test_rm_yes_frees_the_blobs_and_leaves_no_trace(
    hub: LocalHub, tiny_files: dict[str, bytes], run_thyme: RunThyme
) -> None:
    assert run_thyme("models", "pull", "tiny").returncode == 0
    result = run_thyme("models", "rm", "tiny", "--yes")
    assert result.returncode == 0, result.stderr
    total = sum(len(d) for d in tiny_files.values())
    assert f"freed {total / 1000:.1f} KB" in result.stderr
    assert not repo_dir().exists()
    assert not _installed(run_thyme, "tiny")
    again = run_thyme("models", "rm", "tiny", "--yes")
    assert again.returncode == 0 and "not installed; nothing to remove" in again.stderr


def test_rm_keeps_files_other_models_and_other_tools_use(hub: LocalHub, run_thyme: RunThyme) -> None:
    hub.repos[REPO].files[Q8_FILE] = b"GGUF" + os.urandom(50_000)
    hub.repos[REPO].files["README.md"] = b"# tiny\n"
    write_config(hub_entry("tiny-q8", model=Q8_FILE))  # same repo, same mmproj
    assert run_thyme("models", "pull", "tiny").returncode == 0
    assert run_thyme("models", "pull", "tiny-q8").returncode == 0
    code = f"from huggingface_hub import hf_hub_download as d\nprint(d({REPO!r}, 'README.md'))"
    readme = Path(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    )
    blobs = repo_dir() / "blobs"
    sha = hub.repos[REPO].sha256

    result = run_thyme("models", "rm", "tiny", "--yes")
    assert result.returncode == 0, result.stderr
    assert f"kept {MMPROJ_FILE}: also used by tiny-q8" in result.stderr
    assert not (blobs / sha(MODEL_FILE)).exists()
    assert (blobs / sha(MMPROJ_FILE)).exists() and (blobs / sha(Q8_FILE)).exists()
    assert _installed(run_thyme, "tiny-q8") and not _installed(run_thyme, "tiny")

    assert run_thyme("models", "rm", "tiny-q8", "--yes").returncode == 0
    assert not (blobs / sha(MMPROJ_FILE)).exists() and not (blobs / sha(Q8_FILE)).exists()
    assert readme.read_bytes() == b"# tiny\n"  # another tool's file, untouched


@pytest.mark.parametrize(("answer", "removed"), [("n", False), ("y", True)])
def test_rm_asks_on_a_terminal(hub: LocalHub, run_thyme: RunThyme, answer: str, removed: bool) -> None:
    assert run_thyme("models", "pull", "tiny").returncode == 0
    code, output = run_in_pty(["models", "rm", "tiny"], answer)
    assert code == 0, output
    assert "Delete tiny (" in output and "[y/N]" in output
    assert _installed(run_thyme, "tiny") is not removed
    assert ("nothing removed" in output) is not removed


def test_rm_of_a_local_pair_removes_only_the_config_entry(tiny_pair: TinyPair, run_thyme: RunThyme) -> None:
    config = write_config('# my settings\n[defaults]\nmodel = "qwen2.5-vl-3b"\n')
    added = run_thyme("models", "add", "mine", "--model", str(tiny_pair.model), "--mmproj", str(tiny_pair.mmproj))
    assert added.returncode == 0, added.stderr
    write_config(hub_entry("other"))
    before = config.read_text()
    assert _installed(run_thyme, "mine")

    result = run_thyme("models", "rm", "mine", "--yes")
    assert result.returncode == 0, result.stderr
    assert "your files were not touched" in result.stderr
    assert tiny_pair.model.is_file() and tiny_pair.mmproj.is_file()
    after = config.read_text()
    assert '[models."mine"]' not in after and "mine" not in after
    assert "# my settings" in after and '[models."other"]' in after and 'model = "qwen2.5-vl-3b"' in after
    assert config.with_name("config.toml.bak").read_text() == before
    assert run_thyme("models", "info", "mine").returncode == 2


def test_pull_of_a_local_pair_whose_file_vanished_says_which(
    tmp_path: Path, tiny_pair: TinyPair, run_thyme: RunThyme
) -> None:
    model = tmp_path / "copy.gguf"
    model.write_bytes(tiny_pair.model.read_bytes())
    assert run_thyme("models", "add", "mine", "--model", str(model), "--mmproj", str(tiny_pair.mmproj)).returncode == 0
    model.unlink()
    result = run_thyme("models", "pull", "mine")
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: mine is a local model and its file is missing: {model}")
    listed = run_thyme("models", "list", "--json")
    assert '"state": "missing files"' in listed.stdout
