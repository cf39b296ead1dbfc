"""Every way a pull can fail gives one `error:` line, a `hint:` line and a non-zero exit: no traceback.

Plus the token rules (sent to the Hub, never to a CDN, never printed) and ensure_model's manners.
"""

from __future__ import annotations

import io
import socket
import subprocess
from collections.abc import Iterator

import pytest

from tests.conftest import RunThyme
from tests.hub_fixtures import (  # noqa: F401  (fixtures: hub, tiny_files)
    MMPROJ_FILE,
    MODEL_FILE,
    REPO,
    hub_entry,
    hub_fixture,
    repo_dir,
    tiny_files_fixture,
    write_config,
)
from tests.hub_server import LocalHub, Repo
from thyme_cli.errors import DownloadError
from thyme_cli.models.pull import ensure_model
from thyme_cli.models.registry import load_registry
from thyme_cli.models.store import installed_files

TOKEN = "hf_test_secret_token_123"


def _one_error(result: subprocess.CompletedProcess[str], code: int = 1) -> tuple[str, str]:
    """The `error:` and `hint:` lines of a failed run, after checking the exit code and no traceback."""
    assert result.returncode == code, result.stderr
    stderr = result.stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("error: ") and lines[1].startswith("hint: ")
    return lines[0], lines[1]


def test_unreachable_hub_fails_at_once_with_a_clear_line(run_thyme: RunThyme) -> None:
    write_config(hub_entry())  # HF_ENDPOINT is a closed port (conftest)
    error, hint = _one_error(run_thyme("models", "pull", "tiny", timeout=60))
    assert error == "error: cannot reach the Hugging Face Hub at http://127.0.0.1:9 (connection refused)"
    assert "HF_HUB_OFFLINE=1" in hint


@pytest.fixture
def silent_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A port that accepts connections (kernel backlog) but never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    yield endpoint
    sock.close()


def test_a_hub_that_does_not_answer_times_out_after_a_short_bounded_retry(
    silent_endpoint: str, run_thyme: RunThyme
) -> None:
    write_config(hub_entry())
    error, hint = _one_error(run_thyme("models", "pull", "tiny", env={"HF_HUB_ETAG_TIMEOUT": "1"}, timeout=60))
    assert error == f"error: the Hugging Face Hub at {silent_endpoint} did not answer in time"
    assert "HF_HUB_ETAG_TIMEOUT" in hint


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (hub_entry("bad-repo", repo="test-org/no-such-repo"), "error: repository test-org/no-such-repo not found"),
        (
            hub_entry("bad-file", model="no-such-file.gguf"),
            "error: file no-such-file.gguf not found in test-org/tiny-GGUF",
        ),
        (hub_entry("bad-rev", extra='revision = "v9"\n'), "error: revision 'v9' not found in test-org/tiny-GGUF"),
    ],
    ids=["repo", "file", "revision"],
)
def test_not_found_errors_name_what_is_missing(hub: LocalHub, run_thyme: RunThyme, entry: str, message: str) -> None:
    write_config(entry)
    name = entry.split('"')[1]
    error, hint = _one_error(run_thyme("models", "pull", name))
    assert error.startswith(message)
    assert "model entry" in hint
    assert not any(r.method == "GET" for r in hub.requests)


def test_not_enough_disk_is_refused_before_any_byte_is_downloaded(hub: LocalHub, run_thyme: RunThyme) -> None:
    hub.repos[REPO].advertised_size[MODEL_FILE] = 10**15  # the Hub says 1 PB: no disk here has that free
    error, hint = _one_error(run_thyme("models", "pull", "tiny"))
    assert error.startswith("error: not enough disk space for tiny: 1000.0 TB to download into ")
    assert "free" in error and "HF_HOME" in hint
    assert [r.method for r in hub.requests] == ["HEAD", "HEAD"]
    assert not (repo_dir() / "blobs").exists()


@pytest.fixture
def gated_hub(hub: LocalHub) -> LocalHub:
    hub.repos[REPO].gated_token = TOKEN
    return hub


def test_gated_repo_without_a_token_says_to_set_hf_token_and_accept_the_licence(
    gated_hub: LocalHub, run_thyme: RunThyme
) -> None:
    error, hint = _one_error(run_thyme("models", "pull", "tiny"))
    assert error == f"error: {REPO} is a gated model: you must accept its licence and authenticate to download it"
    assert (
        hint == f"hint: accept the licence on {gated_hub.endpoint}/{REPO}, "
        "then set HF_TOKEN to an access token of that account"
    )


def test_a_wrong_token_is_never_printed(gated_hub: LocalHub, run_thyme: RunThyme) -> None:
    wrong = "hf_wrong_token_456"
    result = run_thyme("models", "pull", "tiny", env={"HF_TOKEN": wrong, "THYME_DEBUG": "1"})
    assert result.returncode == 1
    assert wrong not in result.stdout + result.stderr
    assert gated_hub.requests[0].authorization == f"Bearer {wrong}"


def test_hf_token_is_sent_as_auth_and_opens_a_gated_repo(gated_hub: LocalHub, run_thyme: RunThyme) -> None:
    result = run_thyme("models", "pull", "tiny", env={"HF_TOKEN": TOKEN})
    assert result.returncode == 0, result.stderr
    assert TOKEN not in result.stdout + result.stderr
    assert gated_hub.requests and all(r.authorization == f"Bearer {TOKEN}" for r in gated_hub.requests)


def test_the_token_never_goes_to_a_cdn_on_another_host(tiny_files: dict[str, bytes], run_thyme: RunThyme) -> None:
    with LocalHub({REPO: Repo(files=dict(tiny_files))}, cdn=True) as cdn_hub:
        write_config(hub_entry())
        result = run_thyme("models", "pull", "tiny", env={"HF_ENDPOINT": cdn_hub.endpoint, "HF_TOKEN": TOKEN})
        assert result.returncode == 0, result.stderr
        heads = [r for r in cdn_hub.requests if r.method == "HEAD"]
        gets = [r for r in cdn_hub.requests if r.method == "GET"]
    assert len(heads) == 2 and all(r.authorization == f"Bearer {TOKEN}" for r in heads)
    assert len(gets) == 2 and all(r.path.startswith("/cdn/") and r.authorization is None for r in gets)


# -- ensure_model: what `thyme ask` calls before loading a model (in-process: env is read at call time)


def test_ensure_model_in_a_script_refuses_to_download_and_says_how(hub: LocalHub) -> None:
    spec = load_registry().get("tiny")
    with pytest.raises(DownloadError) as caught:
        ensure_model(spec, assume_yes=False, interactive=False)
    assert caught.value.message == "model tiny is not downloaded yet (~0.0 GB)"
    assert caught.value.hint == "run `thyme models pull tiny` first, or pass --yes to download it now"
    assert hub.requests == []


def test_ensure_model_asks_on_a_terminal_and_no_means_no(
    hub: LocalHub, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    with pytest.raises(DownloadError):
        ensure_model(load_registry().get("tiny"), assume_yes=False, interactive=True)
    assert "Download tiny (~0.0 GB)? [y/N]" in capsys.readouterr().err
    assert hub.requests == []


def test_ensure_model_downloads_after_yes(hub: LocalHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    spec = load_registry().get("tiny")
    files = ensure_model(spec, assume_yes=False, interactive=True)
    assert files == installed_files(spec)
    assert files.model.read_bytes() == hub.repos[REPO].files[MODEL_FILE]


def test_ensure_model_with_assume_yes_downloads_without_asking(hub: LocalHub) -> None:
    spec = load_registry().get("tiny")
    files = ensure_model(spec, assume_yes=True, interactive=False)
    assert files.mmproj.read_bytes() == hub.repos[REPO].files[MMPROJ_FILE]
    hub.clear_log()
    assert ensure_model(spec, assume_yes=False, interactive=False) == files  # installed: no question, no request
    assert hub.requests == []


def test_ensure_model_offline_says_offline(hub: LocalHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError) as caught:
        ensure_model(load_registry().get("tiny"), assume_yes=True, interactive=False)
    assert "offline mode" in caught.value.message
    assert hub.requests == []
