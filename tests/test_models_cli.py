"""`thyme models list|pull|path|info` end to end: the real CLI, the real Hub client, a real local Hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import RunThyme
from tests.hub_fixtures import (  # noqa: F401  (fixtures: hub, tiny_files)
    MMPROJ_FILE,
    MODEL_FILE,
    REPO,
    hub_fixture,
    repo_dir,
    run_in_pty,
    sha256_file,
    tiny_files_fixture,
)
from tests.hub_server import LocalHub


def _row(run_thyme: RunThyme, name: str) -> dict[str, object]:
    result = run_thyme("models", "list", "--json")
    assert result.returncode == 0, result.stderr
    return next(r for r in json.loads(result.stdout) if r["name"] == name)


def _hf_python(code: str, **env: str) -> str:
    """Run plain huggingface_hub in a fresh interpreter (it reads HF_* at import) and return stdout."""
    out = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_pull_lands_in_the_hf_cache_and_list_shows_it(
    hub: LocalHub, tiny_files: dict[str, bytes], run_thyme: RunThyme
) -> None:
    before = _row(run_thyme, "tiny")
    assert before["installed"] is False and before["state"] == "not installed"
    assert before["size"] == "~0.0 GB"

    result = run_thyme("models", "pull", "tiny")
    assert result.returncode == 0, result.stderr
    assert "installed tiny" in result.stderr
    assert result.stdout == ""  # messages on stderr, stdout stays for results

    blobs = repo_dir() / "blobs"
    for name, data in tiny_files.items():
        link = repo_dir() / "snapshots" / hub.repos[REPO].commit / name
        assert link.is_symlink()
        assert link.resolve() == blobs / hub.repos[REPO].sha256(name)
        assert link.read_bytes() == data
    assert (repo_dir() / "refs" / "main").read_text() == hub.repos[REPO].commit
    assert not list(blobs.glob("*.incomplete"))

    after = _row(run_thyme, "tiny")
    total = sum(len(d) for d in tiny_files.values())
    assert after["installed"] is True and after["state"] == "installed"
    assert after["size_bytes"] == total
    table = run_thyme("models", "list")
    line = next(ln for ln in table.stdout.splitlines() if ln.startswith("│ tiny "))
    assert "installed" in line and "not installed" not in line
    assert f"{total / 1000:.1f} KB" in line


def test_path_prints_files_that_huggingface_hub_agrees_with(hub: LocalHub, run_thyme: RunThyme) -> None:
    assert run_thyme("models", "pull", "tiny").returncode == 0
    result = run_thyme("models", "path", "tiny")
    assert result.returncode == 0, result.stderr
    model, mmproj = (Path(p) for p in result.stdout.splitlines())
    assert model.is_file() and mmproj.is_file()
    code = (
        "from huggingface_hub import hf_hub_download as d\n"
        f"print(d({REPO!r}, {MODEL_FILE!r}, local_files_only=True))\n"
        f"print(d({REPO!r}, {MMPROJ_FILE!r}, local_files_only=True))\n"
    )
    assert _hf_python(code).splitlines() == [str(model), str(mmproj)]


def test_plain_hf_download_reuses_our_blobs_and_we_see_its_files(hub: LocalHub, run_thyme: RunThyme) -> None:
    # huggingface_hub first: thyme must see a model another tool downloaded.
    code = (
        f"from huggingface_hub import hf_hub_download as d\nd({REPO!r}, {MODEL_FILE!r}); d({REPO!r}, {MMPROJ_FILE!r})"
    )
    _hf_python(code)
    assert _row(run_thyme, "tiny")["installed"] is True
    hub.clear_log()
    result = run_thyme("models", "pull", "tiny")
    assert result.returncode == 0 and "already installed" in result.stderr
    assert hub.requests == []


def test_hf_online_download_after_our_pull_sends_no_get(hub: LocalHub, run_thyme: RunThyme) -> None:
    assert run_thyme("models", "pull", "tiny").returncode == 0
    hub.clear_log()
    _hf_python(f"from huggingface_hub import hf_hub_download as d\nprint(d({REPO!r}, {MODEL_FILE!r}))")
    assert [r.method for r in hub.requests] == ["HEAD"]  # it checked the commit, then used our blob


def test_offline_mode_uses_the_cache_without_a_single_request(hub: LocalHub, run_thyme: RunThyme) -> None:
    assert run_thyme("models", "pull", "tiny").returncode == 0
    paths = run_thyme("models", "path", "tiny").stdout
    hub.clear_log()
    offline = {"HF_HUB_OFFLINE": "1"}
    again = run_thyme("models", "pull", "tiny", env=offline)
    assert again.returncode == 0 and "already installed" in again.stderr
    assert run_thyme("models", "path", "tiny", env=offline).stdout == paths
    code = f"from huggingface_hub import hf_hub_download as d\nprint(d({REPO!r}, {MODEL_FILE!r}))"
    assert _hf_python(code, **offline) == paths.splitlines()[0]
    assert hub.requests == []


def test_offline_mode_without_the_files_says_how_to_go_online(hub: LocalHub, run_thyme: RunThyme) -> None:
    result = run_thyme("models", "pull", "tiny", env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: offline mode (HF_HUB_OFFLINE=1)")
    assert "unset HF_HUB_OFFLINE" in lines[1]
    assert "Traceback" not in result.stderr
    assert hub.requests == []


def test_path_of_a_model_not_installed_exits_1(run_thyme: RunThyme) -> None:
    result = run_thyme("models", "path", "qwen2.5-vl-3b")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "error: qwen2.5-vl-3b is not installed" in result.stderr
    assert "thyme models pull qwen2.5-vl-3b" in result.stderr


def test_info_shows_every_registry_field_paths_and_state(hub: LocalHub, run_thyme: RunThyme) -> None:
    assert run_thyme("models", "pull", "tiny").returncode == 0
    result = run_thyme("models", "info", "tiny", "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    for field in (
        "name",
        "description",
        "repo",
        "model_file",
        "mmproj_file",
        "revision",
        "size_gb",
        "license",
        "protocol",
        "n_ctx",
        "image_min_tokens",
        "image_max_tokens",
        "needs_conversion",
    ):
        assert field in record
    assert record["repo"] == REPO and record["state"] == "installed"
    paths = run_thyme("models", "path", "tiny").stdout.splitlines()
    assert [record["model_local_path"], record["mmproj_local_path"]] == paths
    text = run_thyme("models", "info", "thyme-7b").stdout
    assert "needs_conversion   True" in text and "not installed" in text


def test_unknown_model_suggests_the_closest_name(run_thyme: RunThyme) -> None:
    for command in ("pull", "path", "info", "rm"):
        result = run_thyme("models", command, "qwen2.5-vl-7")
        assert result.returncode == 2, command
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 2 and lines[0].startswith("error: unknown model 'qwen2.5-vl-7'")
        assert "did you mean 'qwen2.5-vl-7b'" in lines[1]


def test_corrupt_config_names_the_file_and_line(run_thyme: RunThyme) -> None:
    config = Path(os.environ["THYME_HOME"]) / "config.toml"
    config.write_text('[models.mine]\nrepo = "a/b"\nmodel_file = = "x"\n')
    result = run_thyme("models", "list")
    assert result.returncode == 2
    first = result.stderr.strip().splitlines()[0]
    assert str(config) in first and "line 3" in first
    assert "Traceback" not in result.stderr
    debug = run_thyme("models", "list", env={"THYME_DEBUG": "1"})
    assert "Traceback" in debug.stderr


def test_models_list_and_path_do_not_import_huggingface_hub(hub: LocalHub, run_thyme: RunThyme) -> None:
    assert run_thyme("models", "pull", "tiny").returncode == 0
    for args in (["models", "list"], ["models", "path", "tiny"], ["models", "info", "tiny"]):
        code = (
            "import sys\n"
            f"sys.argv = ['thyme', *{args!r}]\n"
            "from thyme_cli.cli import main\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "print('HF=' + str('huggingface_hub' in sys.modules))\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().splitlines()[-1] == "HF=False", args


def test_pull_on_a_terminal_draws_a_progress_bar(hub: LocalHub, run_thyme: RunThyme) -> None:
    code, output = run_in_pty(["models", "pull", "tiny"])
    assert code == 0, output
    assert MODEL_FILE in output and MMPROJ_FILE in output
    assert "━" in output  # rich's bar, drawn because stderr is a terminal
    assert "downloading " not in output  # the plain-lines fallback is for logs only
    assert run_thyme("models", "path", "tiny").returncode == 0
