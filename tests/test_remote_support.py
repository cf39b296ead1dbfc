"""Shared by the remote-backend tests: a REAL llama_cpp.server on 127.0.0.1 serving the tiny model.

No test lives here. ``LlamaServer`` runs ``python -m llama_cpp.server`` (the ``server`` extra) in
its own process group, so a test can SIGKILL it mid-batch and start it again on the same port.
Two chat handlers are used:

- ``qwen2.5-vl``: llama-cpp-python's Qwen2.5-VL handler. Its template closes every message and
  always opens a new assistant turn, so it cannot continue an assistant message.
- ``mtmd`` with a tiny model whose chat template leaves a final assistant message open, which is
  what llama-server does by default and vLLM/SGLang do with ``continue_final_message``.

Random weights write noise, so tests that need a code step pass a GBNF grammar through
THYME_API_EXTRA_BODY: the real server then samples exactly the text the grammar allows.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from thyme_cli.devtools.tiny_gguf import TinyPair, write_tiny_pair

# The tiny model's ChatML, except that a final assistant message stays open (a prefill).
PREFILL_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{% if not (loop.last and message['role'] == 'assistant') %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}<|im_start|>assistant\n{% endif %}"
)
CROP_CODE = (
    "img = Image.open(image_path)\n"
    "img.crop((0, 0, 40, 40)).save('/mnt/data/temp_processed_images/c.png')\n"
    "print('/mnt/data/temp_processed_images/c.png')"
)


OUTSIDE_KEYS = (
    "THYME_API_KEY",
    "OPENAI_API_KEY",
    "THYME_BASE_URL",
    "THYME_BACKEND",
    "THYME_API_MODEL",
    "THYME_API_EXTRA_BODY",
)


def clear_outside_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """A remote test sees only the server it starts: the caller's own API settings are unset."""
    for var in OUTSIDE_KEYS:
        monkeypatch.delenv(var, raising=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """An OpenAI-compatible server in its own process group on a loopback port: started, waited for
    (GET /models), stopped, or SIGKILLed as a crash would. Subclasses say how to launch it."""

    what = "the server"  # in the messages when it exits or does not answer
    poll_s = 0.1
    stop_wait_s = 10.0
    kill_wait_s = 30.0
    give_up = "stop"  # what a start that timed out does to the process: "stop" or "kill"

    def __init__(self, log: Path, api_key: str | None) -> None:
        self.log = log
        self.api_key = api_key
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def launch(self, cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> None:
        """Start ``cmd`` (its output to the log) and return once it answers; raise if it exits or times out."""
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
            )
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.what} exited ({self.proc.returncode}); see {self.log}{self.exit_detail()}")
            try:
                if httpx.get(f"{self.url}/models", headers=headers, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(self.poll_s)
        if self.give_up == "stop":
            self.stop()
        else:
            self.kill()
        raise RuntimeError(f"{self.what} did not answer within {timeout} s; see {self.log}")

    def exit_detail(self) -> str:
        """What to add to the message when the server exited on start."""
        return ""

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crash would: no goodbye to the clients."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=self.kill_wait_s)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=self.stop_wait_s)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def gbnf_literal(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def code_grammar(code: str, think: str = "zoom") -> str:
    """A grammar whose only sentence is one Thyme code step."""
    return "root ::= " + gbnf_literal(f"<think>{think}</think><code>\n```python\n{code}\n```\n</code>")


def extra_body_env(grammar: str) -> dict[str, str]:
    return {"THYME_API_EXTRA_BODY": json.dumps({"grammar": grammar})}


class LlamaServer(ServerProcess):
    """``python -m llama_cpp.server`` for one GGUF pair, on a fixed loopback port."""

    what = "llama_cpp.server"

    def __init__(self, pair: TinyPair, chat_format: str, log: Path, *, api_key: str | None = None) -> None:
        super().__init__(log, api_key)
        self.pair = pair
        self.chat_format = chat_format

    def start(self, timeout: float = 60.0) -> LlamaServer:
        args = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(self.pair.model),
            "--clip_model_path",
            str(self.pair.mmproj),
            "--chat_format",
            self.chat_format,
            "--model_alias",
            "tiny",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_ctx",
            "8192",
            "--n_threads",
            "1",
            "--n_threads_batch",
            "1",
            "--interrupt_requests",
            "False",
        ]
        if self.api_key:
            args += ["--api_key", self.api_key]
        self.launch(args, timeout)
        return self


@pytest.fixture(scope="module")
def prefill_pair(tmp_path_factory: pytest.TempPathFactory) -> TinyPair:
    return write_tiny_pair(tmp_path_factory.mktemp("prefill-model"), prefix="prefill", chat_template=PREFILL_TEMPLATE)


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    """A small green PNG to ask about."""
    path = tmp_path / "photo.png"
    Image.new("RGB", (160, 120), (20, 140, 60)).save(path)
    return path


def start_server(pair: TinyPair, chat_format: str, where: Path, api_key: str | None = None) -> LlamaServer:
    pytest.importorskip("uvicorn", reason="the llama-cpp-python[server] extra is not installed")
    return LlamaServer(pair, chat_format, where / f"server-{chat_format}.log", api_key=api_key).start()


def photos(root: Path, n: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (96 + 8 * i, 80), (i * 30 % 256, 120, 200)).save(root / f"p{i}.png")
    return root
