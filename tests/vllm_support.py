"""A REAL vLLM (CPU build) on 127.0.0.1 for the remote-backend tests: environment, model, server.

- The environment is thyme's managed one (thyme_cli/models/serve/vllm_env.py), cached between runs at
  THYME_TEST_VLLM_VENV, else ~/.cache/thyme-test/vllm-venv; create it with
  ``THYME_VLLM_VENV=~/.cache/thyme-test/vllm-venv thyme serve --setup`` (.ci/run does). Without it
  the tests skip and say so.
- The model is a tiny random-weight Qwen2.5-VL in Hugging Face format with the REAL tokenizer
  (../shared/data/qwen2.5-vl/), built once per machine by thyme_cli/devtools/tiny_hf_qwen.py.
- Random weights never write code, so tests force it with vLLM's structured outputs (a regex in
  THYME_API_EXTRA_BODY): the server then samples exactly the text the regex allows.
- vLLM logs every request it receives (``--enable-log-requests``): the tests read the rendered
  prompt and the sampling parameters from the server's side.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.test_remote_support import ServerProcess
from thyme_cli.devtools import tiny_hf_qwen
from thyme_cli.models.convert import tiny as convert_tiny
from thyme_cli.models.serve import vllm_env

TOKENIZER_DIR = REPO_ROOT.parent / "shared" / "data" / "qwen2.5-vl"
START_TIMEOUT_S = 900.0  # vLLM compiles and profiles on start: ~60 s idle, several minutes on a busy 2-core box


def cached_vllm_venv() -> Path:
    value = os.environ.get("THYME_TEST_VLLM_VENV")
    return Path(value).expanduser() if value else Path.home() / ".cache" / "thyme-test" / "vllm-venv"


def find_test_vllm() -> vllm_env.VllmEnv:
    """The cached managed environment, or a skip that says how to create it."""
    venv = cached_vllm_venv()
    saved = os.environ.get("THYME_VLLM_VENV")
    os.environ["THYME_VLLM_VENV"] = str(venv)
    try:
        env = vllm_env.find_vllm()
    finally:
        if saved is None:
            os.environ.pop("THYME_VLLM_VENV", None)
        else:
            os.environ["THYME_VLLM_VENV"] = saved
    if env is None:
        pytest.skip(
            f"no vLLM environment at {venv}: create it with "
            f"`THYME_VLLM_VENV={venv} .venv/bin/thyme serve --setup` (CI does)"
        )
    return env


def tiny_hf_model(env: vllm_env.VllmEnv) -> Path:
    """The tiny real-vocab checkpoint, built once per machine (keyed by the builder's source)."""
    if not (TOKENIZER_DIR / "vocab.json").is_file():
        pytest.skip(f"the Qwen2.5-VL tokenizer files are not at {TOKENIZER_DIR} (shared/data/qwen2.5-vl)")
    builder = Path(tiny_hf_qwen.__file__)
    shared = Path(convert_tiny.__file__)  # the builder takes the model's shape and weights from it
    key = hashlib.sha256(builder.read_bytes() + shared.read_bytes()).hexdigest()[:12]
    out = Path.home() / ".cache" / "thyme-test" / f"tiny-hf-qwen-{key}"
    if not (out / tiny_hf_qwen.DONE).is_file():
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        subprocess.run(
            [str(env.python), "-I", str(builder), str(TOKENIZER_DIR), str(tmp)],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=600,
        )
        tmp.rename(out)
    return out


def regex_body(pattern: str) -> dict[str, str]:
    """THYME_API_EXTRA_BODY that makes vLLM sample only text matching PATTERN."""
    return {"THYME_API_EXTRA_BODY": json.dumps({"structured_outputs": {"regex": pattern}})}


def code_step_regex(code: str, think: str = "zoom") -> str:
    return re.escape(f"<think>{think}</think><code>\n```python\n{code}\n```\n</code>")


class VllmServer(ServerProcess):
    """``python -m vllm.entrypoints.openai.api_server`` for one checkpoint, on a fixed loopback port."""

    what = "vLLM"
    poll_s = 0.5
    stop_wait_s = 30.0
    kill_wait_s = 60.0  # the API server and the engine core

    def __init__(
        self, env: vllm_env.VllmEnv, model: Path, log: Path, *, api_key: str | None = None, name: str = "tiny"
    ) -> None:
        super().__init__(log, api_key)
        self.env, self.model, self.name = env, model, name

    def start(self, timeout: float = START_TIMEOUT_S) -> VllmServer:
        args = vllm_env.serve_args(
            str(self.model),
            name=self.name,
            host="127.0.0.1",
            port=self.port,
            max_model_len=8192,
            max_images=8,
            max_pixels=None,
        )
        cmd = self.env.server_cmd(
            *args, "--enable-log-requests", "--max-log-len", "100000", "--max-num-seqs", "8", "--dtype", "bfloat16"
        )
        self.launch(cmd, timeout, env={**vllm_env.cpu_env(1, self.api_key), "VLLM_LOGGING_LEVEL": "DEBUG"})
        return self

    def exit_detail(self) -> str:
        return f":\n{self.log_tail()}"

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def requests_with(self, marker: str) -> list[str]:
        """The logged requests whose prompt contains MARKER, in order: each is its DEBUG details line
        (rendered prompt and token ids) joined with its INFO line (the sampling parameters)."""
        found: dict[str, str] = {}
        for line in self.log_text().splitlines():
            m = _REQUEST_LINE.search(line)
            if m:
                rid = m.group(1) or m.group(2)
                found[rid] = found.get(rid, "") + line + "\n"
        return [text for text in found.values() if marker in text]


_REQUEST_LINE = re.compile(r"(?:Request (\S+) details:|Received request (\S+?):)")
