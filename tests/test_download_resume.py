"""Interrupted downloads resume with HTTP Range (within a call and across calls), and bad bytes never stay.

The local Hub cuts, drops, stalls or corrupts the body; the real CLI downloads; the server's request
log shows what Range each GET asked for.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import RunThyme
from tests.hub_fixtures import (  # noqa: F401  (fixtures: hub, tiny_files)
    MMPROJ_FILE,
    MODEL_FILE,
    REPO,
    hub_fixture,
    repo_dir,
    sha256_file,
    tiny_files_fixture,
)
from tests.hub_server import Faults, LocalHub

CUT = 100_000


def _partial(hub: LocalHub, filename: str) -> Path:
    return repo_dir() / "blobs" / f"{hub.repos[REPO].sha256(filename)}.incomplete"


def _release_and_settle(hub: LocalHub, filename: str) -> None:
    """Let the stalled handler finish and log its GET, so it does not land in the next test step's log."""
    hub.release_stall()
    deadline = time.monotonic() + 30
    while not hub.body_gets(filename):
        assert time.monotonic() < deadline, "the stalled GET never finished"
        time.sleep(0.02)


def _assert_installed_and_intact(hub: LocalHub, run_thyme: RunThyme) -> None:
    result = run_thyme("models", "path", "tiny")
    assert result.returncode == 0, result.stderr
    model, mmproj = (Path(p) for p in result.stdout.splitlines())
    assert sha256_file(model) == hub.repos[REPO].sha256(MODEL_FILE)
    assert sha256_file(mmproj) == hub.repos[REPO].sha256(MMPROJ_FILE)
    assert not list((repo_dir() / "blobs").glob("*.incomplete"))


def test_a_cut_connection_is_resumed_within_the_same_call(hub: LocalHub, run_thyme: RunThyme) -> None:
    hub.faults = Faults(filename=MODEL_FILE, cut_after=CUT, cut_count=1)
    result = run_thyme("models", "pull", "tiny")
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stderr
    gets = hub.body_gets(MODEL_FILE)
    assert [(g.range, g.status, g.body_bytes) for g in gets] == [
        (None, 200, CUT),
        (f"bytes={CUT}-", 206, len(hub.repos[REPO].files[MODEL_FILE]) - CUT),
    ]
    _assert_installed_and_intact(hub, run_thyme)


def test_a_failed_pull_keeps_its_partial_file_and_the_next_pull_resumes_it(hub: LocalHub, run_thyme: RunThyme) -> None:
    # The link dies after CUT bytes and then gives nothing: the first pull gives up with a clear line.
    hub.faults = Faults(filename=MODEL_FILE, cut_after=CUT, cut_count=1, drop_count=100)
    first = run_thyme("models", "pull", "tiny")
    assert first.returncode == 1
    error, hint = first.stderr.strip().splitlines()[-2:]
    assert error.startswith(f"error: download of {MODEL_FILE} interrupted") and "partial file is kept" in error
    assert hint == "hint: run `thyme models pull tiny` again to resume"
    assert _partial(hub, MODEL_FILE).stat().st_size == CUT
    assert run_thyme("models", "path", "tiny").returncode == 1

    hub.faults = Faults()
    hub.clear_log()
    second = run_thyme("models", "pull", "tiny")
    assert second.returncode == 0, second.stderr
    gets = hub.body_gets(MODEL_FILE)
    assert [g.range for g in gets] == [f"bytes={CUT}-"]
    assert gets[0].body_bytes == len(hub.repos[REPO].files[MODEL_FILE]) - CUT
    _assert_installed_and_intact(hub, run_thyme)


def test_a_killed_pull_is_resumed_from_the_bytes_on_disk(hub: LocalHub, run_thyme: RunThyme) -> None:
    hub.faults = Faults(filename=MODEL_FILE, stall_after=CUT)
    proc = subprocess.Popen(
        [sys.executable, "-m", "thyme_cli.cli", "models", "pull", "tiny"],
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    part = _partial(hub, MODEL_FILE)
    try:
        deadline = time.monotonic() + 60
        while not (part.exists() and part.stat().st_size == CUT):
            assert proc.poll() is None, "the pull ended before it was killed"
            assert time.monotonic() < deadline, "the partial file never reached the stall point"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        _release_and_settle(hub, MODEL_FILE)
    assert part.stat().st_size == CUT

    hub.clear_log()
    result = run_thyme("models", "pull", "tiny")
    assert result.returncode == 0, result.stderr
    assert f"resuming at {CUT / 1000:.1f} KB" in result.stderr
    assert [g.range for g in hub.body_gets(MODEL_FILE)] == [f"bytes={CUT}-"]
    _assert_installed_and_intact(hub, run_thyme)


def test_ctrl_c_keeps_the_partial_file_and_says_how_to_resume(hub: LocalHub, run_thyme: RunThyme) -> None:
    hub.faults = Faults(filename=MODEL_FILE, stall_after=CUT)
    proc = subprocess.Popen(
        [sys.executable, "-m", "thyme_cli.cli", "models", "pull", "tiny"],
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    part = _partial(hub, MODEL_FILE)
    try:
        deadline = time.monotonic() + 60
        while not (part.exists() and part.stat().st_size == CUT):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        _release_and_settle(hub, MODEL_FILE)
    assert proc.returncode == 130
    assert "error: download of tiny interrupted; the partial file is kept" in stderr
    assert "hint: run `thyme models pull tiny` again to resume" in stderr
    assert part.stat().st_size == CUT


def test_a_server_that_ignores_range_restarts_the_file_cleanly(hub: LocalHub, run_thyme: RunThyme) -> None:
    hub.faults = Faults(filename=MODEL_FILE, cut_after=CUT, cut_count=1, drop_count=100)
    assert run_thyme("models", "pull", "tiny").returncode == 1
    hub.faults = Faults(filename=MODEL_FILE, ignore_range_count=1)
    hub.clear_log()
    result = run_thyme("models", "pull", "tiny")
    assert result.returncode == 0, result.stderr
    assert "cannot resume" in result.stderr
    gets = hub.body_gets(MODEL_FILE)
    assert [(g.range, g.status) for g in gets] == [(f"bytes={CUT}-", 200)]
    _assert_installed_and_intact(hub, run_thyme)


def test_a_corrupt_download_is_deleted_and_reported(hub: LocalHub, run_thyme: RunThyme) -> None:
    hub.repos[REPO].corrupt.add(MMPROJ_FILE)
    result = run_thyme("models", "pull", "tiny")
    assert result.returncode == 1
    error, hint = result.stderr.strip().splitlines()[-2:]
    assert error.startswith(f"error: downloaded {MMPROJ_FILE} is corrupt (sha256 ")
    assert "the bad file was deleted" in error and hint.startswith("hint: run the pull again")
    blobs = repo_dir() / "blobs"
    assert not (blobs / hub.repos[REPO].sha256(MMPROJ_FILE)).exists()
    assert not _partial(hub, MMPROJ_FILE).exists()
    assert (blobs / hub.repos[REPO].sha256(MODEL_FILE)).exists()  # the good file stays
    assert run_thyme("models", "path", "tiny").returncode == 1

    hub.repos[REPO].corrupt.clear()
    hub.clear_log()
    assert run_thyme("models", "pull", "tiny").returncode == 0
    assert hub.body_gets(MODEL_FILE) == []  # verified blobs are never fetched twice
    _assert_installed_and_intact(hub, run_thyme)
