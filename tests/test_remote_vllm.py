"""--backend openai against a REAL vLLM (CPU build) on 127.0.0.1 serving a tiny real-vocab Qwen2.5-VL.

vLLM continues a final assistant message (``continue_final_message``) and takes images inside
it, so this is the path Thyme was trained on: code steps, their crops and the forced answer
opening all stay inside the assistant turn. Everything is checked from the server's side: its
request log has the rendered prompt and the sampling parameters of every request.

One server (with an API key) serves the whole module; the last test kills it mid-batch.
Select these tests with ``-m remote_real``; see tests/vllm_support.py for the environment.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import RunThyme
from tests.test_remote_support import CROP_CODE, clear_outside_keys, photos
from tests.test_remote_support import photo as photo  # a fixture
from tests.vllm_support import VllmServer, code_step_regex, find_test_vllm, regex_body, tiny_hf_model
from thyme_cli.engine.remote.engine import RemoteEngine
from thyme_cli.models.loading import ModelSettings, load_remote
from thyme_cli.models.registry import load_registry

pytestmark = [pytest.mark.slow, pytest.mark.remote_real]
KEY = "sk-thyme-vllm-test-7c1d"
N_ITEMS = 6
IMAGE_IN_ASSISTANT = "</code><sandbox_output><|vision_start|><|image_pad|><|vision_end|></sandbox_output>"


@pytest.fixture(autouse=True)
def no_outside_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_outside_keys(monkeypatch)


@pytest.fixture(scope="module")
def vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    env = find_test_vllm()
    model = tiny_hf_model(env)
    server = VllmServer(env, model, tmp_path_factory.mktemp("vllm") / "vllm.log", api_key=KEY).start()
    yield server
    server.stop()


def _env(server: VllmServer, pattern: str | None = None, **extra: str) -> dict[str, str]:
    body = regex_body(pattern) if pattern else {}
    return {"THYME_BACKEND": "openai", "THYME_BASE_URL": server.url, "THYME_API_KEY": KEY, **body, **extra}


def _ask(
    run_thyme: RunThyme,
    server: VllmServer,
    photo: Path,
    question: str,
    out: Path,
    sandbox: str,
    *extra: str,
    pattern: str | None = None,
    exit_codes: tuple[int, ...] = (0,),
) -> dict:
    result = run_thyme(
        "ask",
        str(photo),
        question,
        "--max-turns",
        "1",
        "--max-tokens",
        "300",
        "--sandbox",
        sandbox,
        "--json",
        "--out",
        str(out),
        *extra,
        env=_env(server, pattern),
    )
    assert result.returncode in exit_codes, result.stderr
    return dict(json.loads(result.stdout))


def test_capabilities_measured_against_vllm(vllm: VllmServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THYME_API_KEY", KEY)
    loaded = load_remote(load_registry(), ModelSettings(backend="openai", base_url=vllm.url))  # type: ignore[call-arg]
    assert isinstance(loaded.engine, RemoteEngine)
    caps = loaded.engine.caps
    loaded.engine.close()
    assert caps.continues and caps.assistant_images, caps.detail
    assert loaded.notes == []  # nothing to warn about: Thyme's own format works as trained


def test_ask_thyme_protocol_crop_goes_back_inside_the_assistant_turn(
    run_thyme: RunThyme, vllm: VllmServer, photo: Path, tmp_path: Path, sandbox_backend: str
) -> None:
    run = _ask(
        run_thyme,
        vllm,
        photo,
        "which green? q-vllm-thyme",
        tmp_path / "run",
        sandbox_backend,
        pattern=code_step_regex(CROP_CODE),
    )
    assert run["stop_reason"] == "answered" and run["turns"][0]["stop_reason"] == "code"
    assert len(run["steps"]) == 1 and run["steps"][0]["error"] is None
    crop = tmp_path / "run" / run["steps"][0]["images"][0]
    with Image.open(crop) as img:
        assert img.size[0] == img.size[1]  # the sandbox really cropped the 160x120 photo (a square)
    requests = vllm.requests_with("q-vllm-thyme")
    assert len(requests) == 2, requests  # the code step, then the final answer
    final = requests[-1]
    # The crop went back INSIDE the assistant turn (no end of turn before it), then the answer opening.
    tail = final[final.rindex("<|im_start|>assistant\\n") :]
    assert IMAGE_IN_ASSISTANT + "\\n</think>\\n<answer>" in tail, tail[:600]
    assert "<|im_end|>" not in tail
    # The server counted the crop: the final prompt has the question's image and the crop's tokens.
    assert run["counters"]["tokens_evaluated"] > 0
    n_pads = [len(re.findall(r"\b151655\b", r)) for r in requests]
    assert n_pads[1] > n_pads[0] > 0, n_pads


def test_ask_generic_protocol_sends_results_as_user_turns(
    run_thyme: RunThyme, vllm: VllmServer, photo: Path, tmp_path: Path, sandbox_backend: str
) -> None:
    run = _ask(
        run_thyme,
        vllm,
        photo,
        "which green? q-vllm-generic",
        tmp_path / "run",
        sandbox_backend,
        "--protocol",
        "generic",
        pattern=code_step_regex(CROP_CODE),
    )
    assert run["turns"][0]["stop_reason"] == "code" and len(run["steps"]) == 1
    final = vllm.requests_with("q-vllm-generic")[-1]
    assert "<|im_start|>user\\n<sandbox_output><|vision_start|><|image_pad|><|vision_end|></sandbox_output>" in final


def test_adaptive_temperature_is_two_requests_and_the_code_one_is_greedy(
    run_thyme: RunThyme, vllm: VllmServer, photo: Path, tmp_path: Path, sandbox_backend: str
) -> None:
    # Request 1 (prose, temperature 1.5) stops at <code>; request 2 continues it at temperature 0.
    # The regex allows only code (a block, not an inline <code>x</code> mention), so the final turn is
    # code too: whether its prose counts as an answer (0) or not (3) is not what this test is about.
    run = _ask(
        run_thyme,
        vllm,
        photo,
        "q-vllm-ats",
        tmp_path / "run",
        sandbox_backend,
        "--temperature",
        "1.5",
        pattern=r"[a-z]{2,6}<code>\n[a-z]{2,6}\n</code>",
        exit_codes=(0, 3),
    )
    assert run["turns"][0]["stop_reason"] == "code"
    requests = vllm.requests_with("q-vllm-ats")
    assert len(requests) >= 2
    first, second = requests[0], requests[1]
    assert "temperature=1.5" in first and "temperature=0.0" in second, (first[-400:], second[-400:])
    prefix = run["turns"][0]["text"].split("<code>")[0]
    assert re.search(re.escape(f"<|im_start|>assistant\\n{prefix}<code>") + r"'", second), second[-600:]


def test_batch_with_both_protocols(run_thyme: RunThyme, vllm: VllmServer, tmp_path: Path, sandbox_backend: str) -> None:
    src = photos(tmp_path / "in", 4)
    for protocol in ("thyme", "generic"):
        out = tmp_path / f"{protocol}.jsonl"
        result = run_thyme(
            "batch",
            str(src),
            "-q",
            f"q-vllm-batch-{protocol}",
            "-o",
            str(out),
            "--jobs",
            "3",
            "--max-turns",
            "1",
            "--max-tokens",
            "300",
            "--sandbox",
            sandbox_backend,
            "--protocol",
            protocol,
            env=_env(vllm, code_step_regex(CROP_CODE)),
        )
        assert result.returncode == 0, result.stderr
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(records) == 4 and all(r["error"] is None and len(r["steps"]) == 1 for r in records), records


def test_a_wrong_api_key_is_one_clear_line(run_thyme: RunThyme, vllm: VllmServer, photo: Path) -> None:
    result = run_thyme("ask", str(photo), "q", env={**_env(vllm), "THYME_API_KEY": "sk-wrong"})
    assert result.returncode == 2, result.stderr
    assert f"the server at {vllm.url} refused the API key (HTTP 401)" in result.stderr
    assert "sk-wrong" not in result.stderr and KEY not in result.stderr and "Traceback" not in result.stderr


def _lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_zz_server_killed_mid_batch_then_resume_finishes_exactly_once(
    run_thyme: RunThyme, vllm: VllmServer, tmp_path: Path, sandbox_backend: str
) -> None:
    src, out, log = photos(tmp_path / "in", N_ITEMS), tmp_path / "r.jsonl", tmp_path / "batch.err"
    args = [
        "batch",
        str(src),
        "-q",
        "q-vllm-kill",
        "-o",
        str(out),
        "--jobs",
        "2",
        "--max-turns",
        "1",
        "--max-tokens",
        "300",
        "--sandbox",
        sandbox_backend,
    ]
    env = _env(vllm, code_step_regex(CROP_CODE), THYME_API_RETRIES="40", THYME_API_RETRY_BUDGET="600")
    with log.open("wb") as err:
        batch = subprocess.Popen(
            [sys.executable, "-m", "thyme_cli.cli", *args],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        _wait(lambda: _lines(out) >= 1, 300, "a finished item")
        vllm.kill()
        _wait(lambda: "retrying" in log.read_text(), 120, "a retry while the server is down")
    finally:
        os.killpg(batch.pid, signal.SIGKILL)
        batch.wait(timeout=30)
    before = out.read_bytes()
    assert 1 <= _lines(out) < N_ITEMS
    vllm.start()
    result = run_thyme(*args, "--resume", env=env, timeout=900)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes().startswith(before[: before.rfind(b"\n") + 1])  # earlier lines kept as they were
    records = [json.loads(line) for line in out.read_text().splitlines()]
    ids = [r["id"] for r in records]
    assert len(ids) == N_ITEMS and len(set(ids)) == N_ITEMS, ids
    assert all(r["error"] is None and len(r["steps"]) == 1 for r in records), records
