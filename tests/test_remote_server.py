"""--backend openai against a REAL llama_cpp.server on 127.0.0.1: the CLI, the sandbox, the server.

What this server can do (llama-cpp-python 0.3.36) decides what is tested here, see docs/remote.md:
images in user messages as data URIs, yes; continuing a final assistant message, only with a
chat template that leaves it open (the ``mtmd`` handler); images inside an assistant message, no
(its request schema wants a string there). So Thyme's in-turn TEXT observations and the two-request
adaptive temperature sampling are checked for real, and image observations go as user turns.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import RunThyme
from tests.test_remote_support import (
    CROP_CODE,
    LlamaServer,
    clear_outside_keys,
    code_grammar,
    extra_body_env,
    free_port,
    start_server,
)
from tests.test_remote_support import photo as photo  # a fixture
from tests.test_remote_support import prefill_pair as prefill_pair  # a fixture
from thyme_cli.devtools.tiny_gguf import TinyPair
from thyme_cli.engine.remote.engine import RemoteEngine
from thyme_cli.engine.remote.images import image_data_uri
from thyme_cli.models.loading import ModelSettings, load_remote
from thyme_cli.models.registry import load_registry

pytestmark = pytest.mark.slow
SECRET = "sk-thyme-test-S3CRET-9f8e7d"


@pytest.fixture(autouse=True)
def no_outside_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_outside_keys(monkeypatch)


@pytest.fixture(scope="module")
def qwen_server(tiny_pair: TinyPair, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    server = start_server(tiny_pair, "qwen2.5-vl", tmp_path_factory.mktemp("qwen-server"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def prefill_server(prefill_pair: TinyPair, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    server = start_server(prefill_pair, "mtmd", tmp_path_factory.mktemp("prefill-server"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def key_server(tiny_pair: TinyPair, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    server = start_server(tiny_pair, "qwen2.5-vl", tmp_path_factory.mktemp("key-server"), api_key=SECRET)
    yield server
    server.stop()


def _load(server: LlamaServer, **kw: object) -> RemoteEngine:
    settings: dict[str, object] = {"backend": "openai", "base_url": server.url, **kw}
    loaded = load_remote(load_registry(), ModelSettings(**settings))  # type: ignore[arg-type]
    assert isinstance(loaded.engine, RemoteEngine)
    return loaded.engine


def _prompt_with(server: LlamaServer, marker: str) -> str:
    """The last prompt the server rendered (it logs each one) that contains ``marker``."""
    prompts = [
        re.split(r"(?m)^(?:add_text|mtmd_|encoding|INFO)", p)[0]
        for p in re.split(r"(?m)^<\|im_start\|>system\n", server.log_text())
    ]
    found = [p for p in prompts if marker in p]
    assert found, f"no prompt with {marker!r} in the server log"
    return found[-1]


def test_ask_runs_a_code_step_through_the_real_server_and_sandbox(
    run_thyme: RunThyme, qwen_server: LlamaServer, photo: Path, tmp_path: Path, sandbox_backend: str
) -> None:
    env = {"THYME_BACKEND": "openai", "THYME_BASE_URL": qwen_server.url, **extra_body_env(code_grammar(CROP_CODE))}
    result = run_thyme(
        "ask",
        str(photo),
        "which green? q-ask-1",
        "--max-turns",
        "1",
        "--max-tokens",
        "400",
        "--sandbox",
        sandbox_backend,
        "--json",
        "--out",
        str(tmp_path / "run"),
        env=env,
    )
    assert result.returncode == 0, result.stderr
    run = json.loads(result.stdout)
    assert run["model"] == "tiny" and run["stop_reason"] == "answered"
    assert run["turns"][0]["stop_reason"] == "code"
    assert len(run["steps"]) == 1 and run["steps"][0]["error"] is None
    assert (tmp_path / "run" / run["steps"][0]["images"][0]).is_file()
    assert "does not continue an assistant message" in result.stderr  # this handler cannot; said once
    prompt = _prompt_with(qwen_server, "q-ask-1")
    # The crop went back to the server as an image in a user turn (the handler's only place for one),
    # followed by the forced answer opening, which this server cannot put in the assistant turn either.
    assert "<|im_start|>user\n<sandbox_output><__media__></sandbox_output>\n</think>\n<answer><|im_end|>" in prompt
    assert prompt.count("<__media__>") == 2 and "data:image" not in prompt


def test_the_server_decodes_our_data_uris(qwen_server: LlamaServer, tmp_path: Path) -> None:
    engine = _load(qwen_server)
    tokens = {}
    for name, size in (("small.png", (56, 56)), ("large.png", (448, 448)), ("large.webp", (448, 448))):
        Image.new("RGB", size, (200, 30, 30)).save(tmp_path / name)
        content = [
            {"type": "image_url", "image_url": {"url": image_data_uri(tmp_path / name)}},
            {"type": "text", "text": "colour?"},
        ]
        reply = engine.client.post_json(
            "chat/completions", {"model": "tiny", "max_tokens": 1, "messages": [{"role": "user", "content": content}]}
        )
        tokens[name] = reply["usage"]["prompt_tokens"]
    engine.close()
    assert tokens["large.png"] > tokens["small.png"] + 8  # the image was decoded and encoded, by size
    assert tokens["large.webp"] == tokens["large.png"]  # WebP (unreadable by llama.cpp) went as PNG


def test_capabilities_are_measured_not_guessed(qwen_server: LlamaServer, prefill_server: LlamaServer) -> None:
    closed = _load(qwen_server)
    open_ = _load(prefill_server, base_url=prefill_server.url.removesuffix("/v1"))  # the /v1 is found
    assert open_.client.base_url == prefill_server.url
    assert (closed.caps.continues, closed.caps.assistant_images) == (False, False)
    assert (open_.caps.continues, open_.caps.assistant_images) == (True, False)
    assert "refused an image" in open_.caps.detail
    closed.close()
    open_.close()


def test_text_observations_stay_inside_the_assistant_turn(
    run_thyme: RunThyme, prefill_server: LlamaServer, photo: Path, sandbox_backend: str
) -> None:
    env = extra_body_env(code_grammar("print(6 * 7)", think="multiply"))
    result = run_thyme(
        "ask",
        str(photo),
        "q-in-turn-2",
        "--backend",
        "openai",
        "--base-url",
        prefill_server.url,
        "--max-turns",
        "1",
        "--max-tokens",
        "200",
        "--sandbox",
        sandbox_backend,
        "--json",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    run = json.loads(result.stdout)
    assert run["steps"][0]["stdout"].strip() == "42"
    prompt = _prompt_with(prefill_server, "q-in-turn-2")
    # One assistant turn holds the code, its output and the forced answer opening: no turn break.
    tail = prompt[prompt.rindex("<|im_start|>assistant\n") :]
    assert re.search(r"</code><sandbox_output>42\s*</sandbox_output>\n</think>\n<answer>\n", tail), tail[:400]
    assert "<|im_end|>" not in tail.split("<answer>")[0]


def test_adaptive_temperature_is_two_requests_and_code_is_greedy(
    prefill_server: LlamaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def texts(grammar: str) -> list[str]:
        out = []
        monkeypatch.setenv("THYME_API_EXTRA_BODY", json.dumps({"grammar": grammar}))
        for seed in (1, 2, 3):
            engine = _load(prefill_server, temperature=1.5, seed=seed)
            conv = engine.open()
            conv.feed_system("s")
            conv.feed_user("q-ats")
            gen = conv.generate(max_tokens=120)
            assert gen.stop_reason == "code" and gen.text.endswith("</code>")
            out.append(gen.text)
            engine.close()
        return out

    # The grammar forces "ab<code>", then lets the model pick 1-20 letters. At temperature 1.5 the
    # seeds would give different letters, but after <code> the second request is greedy: same text.
    forced = texts('root ::= "ab<code>" [a-z]{1,20} "</code>"')
    assert len(set(forced)) == 1, forced
    assert "<|im_start|>assistant\nab<code>\n" in prefill_server.log_text()  # request 2 continued request 1
    # Control: the same freedom BEFORE <code> (request 1, at temperature 1.5) does depend on the seed.
    free = texts('root ::= [a-z]{3,12} "<code>" [a-z]{1,20} "</code>"')
    assert len({t.split("<code>")[0] for t in free}) > 1, free


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ["--base-url", "http://127.0.0.1:{closed}/v1"],
            1,
            "cannot reach the server at http://127.0.0.1:{closed}/v1: connection refused",
        ),
        (["--base-url", "{qwen}", "--api-model", "nope"], 2, "does not serve model 'nope' (it serves: tiny)"),
        (["--base-url", "{plain}"], 2, "does not look like an OpenAI-compatible server"),
        ([], 2, "--backend openai needs the server's URL"),
        (["--base-url", "gpu-box:8000"], 2, "--base-url must be an http(s) URL"),
        (["--base-url", "{qwen}", "--protocol", "chatty"], 2, "--protocol must be one of thyme, generic"),
    ],
)
def test_bad_servers_and_settings_are_one_clear_line(
    run_thyme: RunThyme,
    qwen_server: LlamaServer,
    photo: Path,
    tmp_path: Path,
    args: list[str],
    code: int,
    message: str,
) -> None:
    plain_port = free_port()
    plain = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(plain_port), "--bind", "127.0.0.1", "--directory", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        fill = {"closed": str(free_port()), "qwen": qwen_server.url, "plain": f"http://127.0.0.1:{plain_port}"}
        _wait_for_port(plain_port)
        result = run_thyme("ask", str(photo), "q", "--backend", "openai", *[a.format(**fill) for a in args])
    finally:
        plain.terminate()
        plain.wait(timeout=10)
    assert result.returncode == code, result.stderr
    assert message.format(**fill) in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def _wait_for_port(port: int) -> None:
    import socket
    import time

    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)


def test_api_key_is_sent_and_never_shown(
    run_thyme: RunThyme, key_server: LlamaServer, photo: Path, tmp_path: Path, sandbox_backend: str
) -> None:
    base = ["ask", str(photo), "q", "--backend", "openai", "--base-url", key_server.url, "--sandbox", sandbox_backend]
    missing = run_thyme(*base)
    assert missing.returncode == 2 and "refused the API key (HTTP 401)" in missing.stderr
    assert "THYME_API_KEY" in missing.stderr and "Traceback" not in missing.stderr

    wrong = run_thyme(*base, env={"THYME_API_KEY": "sk-wrong-WR0NG", "THYME_DEBUG": "1"})
    assert wrong.returncode == 2 and "refused the API key" in wrong.stderr
    assert "WR0NG" not in wrong.stdout + wrong.stderr

    good_env = {"OPENAI_API_KEY": SECRET, "THYME_DEBUG": "1", **extra_body_env(code_grammar(CROP_CODE))}
    good = run_thyme(
        *base, "--max-turns", "1", "--max-tokens", "400", "--verbose", "--out", str(tmp_path / "ok"), env=good_env
    )
    assert good.returncode == 0, good.stderr
    assert "tokens evaluated" in good.stderr  # --verbose printed its counters

    # A failure mid-run (the server answers 500 to a field it cannot validate), with tracebacks on.
    broken = run_thyme(
        *base,
        "--out",
        str(tmp_path / "bad"),
        env={
            "THYME_API_KEY": SECRET,
            "THYME_DEBUG": "1",
            "THYME_API_RETRIES": "2",
            "THYME_API_EXTRA_BODY": '{"top_p": "high"}',
        },
    )
    assert broken.returncode == 1 and "kept failing: HTTP 500 from chat/completions" in broken.stderr
    assert "Traceback" in broken.stderr  # THYME_DEBUG=1 shows it; the key is still not in it

    for result in (good, broken):
        assert SECRET not in result.stdout + result.stderr
    for path in [*(tmp_path / "ok").rglob("*"), *(tmp_path / "bad").rglob("*")]:
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
