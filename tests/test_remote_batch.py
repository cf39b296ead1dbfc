"""`thyme batch --jobs N --backend openai` against a REAL llama_cpp.server that is killed mid-run.

Every item runs a real code step in the real sandbox (a grammar makes the random-weight model
write it). The server is SIGKILLed while items are in flight; what must hold is that no item is
lost or written twice, whether the retries ride over the restart or the batch itself is killed
and resumed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RunThyme
from tests.test_remote_support import (
    CROP_CODE,
    LlamaServer,
    clear_outside_keys,
    code_grammar,
    extra_body_env,
    photos,
    start_server,
)
from thyme_cli.devtools.tiny_gguf import TinyPair

pytestmark = pytest.mark.slow
N_ITEMS = 8


@pytest.fixture
def server(tiny_pair: TinyPair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LlamaServer]:
    clear_outside_keys(monkeypatch)
    srv = start_server(tiny_pair, "qwen2.5-vl", tmp_path)
    yield srv
    srv.stop()


def _env(server: LlamaServer, **extra: str) -> dict[str, str]:
    return {"THYME_BACKEND": "openai", "THYME_BASE_URL": server.url, **extra_body_env(code_grammar(CROP_CODE)), **extra}


def _args(src: Path, out: Path, backend: str, jobs: int = 3) -> list[str]:
    return [
        "batch",
        str(src),
        "-q",
        "what is here?",
        "-o",
        str(out),
        "--jobs",
        str(jobs),
        "--max-turns",
        "1",
        "--max-tokens",
        "400",
        "--sandbox",
        backend,
    ]


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.read_text().splitlines()]


def _assert_all_answered_once(out: Path) -> None:
    records = _records(out)
    ids = [r["id"] for r in records]
    assert len(ids) == N_ITEMS and len(set(ids)) == N_ITEMS, ids
    for r in records:
        assert r["error"] is None and r["answer"] is not None, r
        assert len(r["steps"]) == 1 and r["steps"][0]["images"] == ["images/step1-c.png"]


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "thyme_cli.cli", *args],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def test_jobs_run_items_concurrently_on_the_server(
    run_thyme: RunThyme, server: LlamaServer, tmp_path: Path, sandbox_backend: str
) -> None:
    out = tmp_path / "r.jsonl"
    started = time.perf_counter()
    result = run_thyme(*_args(photos(tmp_path / "in", N_ITEMS), out, sandbox_backend, jobs=4), env=_env(server))
    wall = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    _assert_all_answered_once(out)
    busy = sum(r["timings"]["item_s"] for r in _records(out))
    assert busy > 1.3 * (wall - 2.0), (busy, wall)  # items overlapped (start-up excluded from the wall)


def test_retries_ride_over_a_server_restart(server: LlamaServer, tmp_path: Path, sandbox_backend: str) -> None:
    out, log = tmp_path / "r.jsonl", tmp_path / "batch.err"
    env = _env(server, THYME_API_RETRIES="40", THYME_API_RETRY_BUDGET="90")
    batch = _spawn(_args(photos(tmp_path / "in", N_ITEMS), out, sandbox_backend), env, log)
    try:
        _wait(lambda: _lines(out) >= 2, 120, "two finished items")
        server.kill()
        _wait(lambda: "retrying" in log.read_text(), 60, "a retry while the server is down")
        time.sleep(1.0)
        server.start()
        assert batch.wait(timeout=180) == 0, log.read_text()
    finally:
        if batch.poll() is None:
            os.killpg(batch.pid, signal.SIGKILL)
    _assert_all_answered_once(out)
    assert "connection" in log.read_text()


def test_a_batch_killed_while_the_server_is_down_resumes_exactly_once(
    run_thyme: RunThyme, server: LlamaServer, tmp_path: Path, sandbox_backend: str
) -> None:
    src, out, log = photos(tmp_path / "in", N_ITEMS), tmp_path / "r.jsonl", tmp_path / "batch.err"
    env = _env(server, THYME_API_RETRIES="40", THYME_API_RETRY_BUDGET="90")
    batch = _spawn(_args(src, out, sandbox_backend), env, log)
    try:
        _wait(lambda: _lines(out) >= 2, 120, "two finished items")
        server.kill()
        _wait(lambda: "retrying" in log.read_text(), 60, "a retry while the server is down")
    finally:
        os.killpg(batch.pid, signal.SIGKILL)
        batch.wait(timeout=30)
    before = out.read_bytes()
    done_before = _lines(out)
    assert 2 <= done_before < N_ITEMS
    server.start()
    result = run_thyme(*_args(src, out, sandbox_backend), "--resume", env=env)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes().startswith(before[: before.rfind(b"\n") + 1])  # earlier lines kept as they were
    _assert_all_answered_once(out)


def test_a_server_that_stays_down_stops_the_batch_and_resume_finishes_it(
    run_thyme: RunThyme, server: LlamaServer, tmp_path: Path, sandbox_backend: str
) -> None:
    src, out, log = photos(tmp_path / "in", N_ITEMS), tmp_path / "r.jsonl", tmp_path / "batch.err"
    env = _env(server, THYME_API_RETRIES="4", THYME_API_RETRY_BUDGET="3")
    batch = _spawn(_args(src, out, sandbox_backend, jobs=2), env, log)
    try:
        _wait(lambda: _lines(out) >= 1, 120, "a finished item")
        server.kill()
        killed = time.perf_counter()
        assert batch.wait(timeout=120) == 1, log.read_text()
    finally:
        if batch.poll() is None:
            os.killpg(batch.pid, signal.SIGKILL)
    assert time.perf_counter() - killed < 45  # in-flight items give up within their retry budget
    err = log.read_text()
    assert f"cannot reach the server at {server.url}" in err and "--resume" in err and "Traceback" not in err
    records = _records(out)
    # Nothing is recorded as failed because the server was down: those items are simply not done yet.
    assert 1 <= len(records) < N_ITEMS and not any(r["error"] for r in records)
    server.start()
    result = run_thyme(*_args(src, out, sandbox_backend), "--resume", env=env)
    assert result.returncode == 0, result.stderr
    _assert_all_answered_once(out)


def test_a_server_that_is_down_at_start_fails_at_once(
    run_thyme: RunThyme, server: LlamaServer, tmp_path: Path, sandbox_backend: str
) -> None:
    url = server.url
    server.kill()
    started = time.perf_counter()
    result = run_thyme(*_args(photos(tmp_path / "in", 2), tmp_path / "r.jsonl", sandbox_backend), env=_env(server))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"cannot reach the server at {url}: connection refused" in result.stderr
    out = tmp_path / "r.jsonl"
    assert time.perf_counter() - started < 20 and (not out.exists() or not out.read_text())
