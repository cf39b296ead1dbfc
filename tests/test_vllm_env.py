"""thyme serve and its managed vLLM environment: the parts that need no vLLM (the real server is
exercised by tests/test_remote_vllm.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import RunThyme
from thyme_cli.models.serve import vllm_env


def _fake_venv(root: Path, requirements: list[str] | None) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "python").write_text("")
    if requirements is not None:
        (root / vllm_env.MARKER).write_text(json.dumps({"requirements": requirements, "versions": {"vllm": "0.32.0"}}))
    return root


def test_the_environment_is_ready_only_when_its_marker_records_the_current_requirements(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("THYME_VLLM_TORCH", raising=False)
    monkeypatch.setenv("THYME_VLLM_VENV", str(tmp_path / "none"))
    assert vllm_env.find_vllm() is None
    half = _fake_venv(tmp_path / "half", None)  # an install that never finished
    monkeypatch.setenv("THYME_VLLM_VENV", str(half))
    assert vllm_env.find_vllm() is None
    ready = _fake_venv(tmp_path / "ready", vllm_env.requirements())
    monkeypatch.setenv("THYME_VLLM_VENV", str(ready))
    env = vllm_env.find_vllm()
    assert env is not None and env.python == ready / "bin" / "python" and env.versions == {"vllm": "0.32.0"}
    assert env.server_cmd("--port", "1")[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    monkeypatch.setenv("THYME_VLLM_TORCH", "torch==2.14.0")  # another torch asked for: not ready any more
    assert vllm_env.find_vllm() is None


def test_serve_flags_and_environment_carry_what_thyme_needs() -> None:
    args = vllm_env.serve_args(
        "ckpt", name="thyme", host="127.0.0.1", port=8001, max_model_len=32768, max_images=8, max_pixels=2408448
    )
    assert args[args.index("--limit-mm-per-prompt") + 1] == '{"image": 8}'
    assert args[args.index("--mm-processor-kwargs") + 1] == '{"max_pixels": 2408448}'
    assert args[args.index("--max-model-len") + 1] == "32768" and "--api-key" not in args
    env = vllm_env.cpu_env(2, "sk-secret")
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2" and env["VLLM_API_KEY"] == "sk-secret"


def test_serve_without_a_model_is_one_clear_line(run_thyme: RunThyme, tmp_path: Path) -> None:
    result = run_thyme("serve", env={"THYME_VLLM_VENV": str(tmp_path / "v")})
    assert result.returncode == 2 and "give the checkpoint to serve" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "v").exists()  # nothing installed for that
