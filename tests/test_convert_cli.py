"""`thyme models pull thyme-7b` and `thyme models convert`, end to end, through the real CLI.

The tiny Qwen2.5-VL checkpoint is served by a local Hub as Kwai-Keye/Thyme-RL, so `pull thyme-7b`
runs exactly the code a user's pull runs: snapshot download, the real converter in its own
environment, llama.cpp's quantizer, the load check, install. Tests marked with the `converter`
fixture skip (saying how to set it up) where the converter environment is absent; the checks of
bad input run everywhere.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import RunThyme
from tests.hub_fixtures import (  # noqa: F401  (fixtures)
    THYME_RL,
    converter_fixture,
    converter_python_fixture,
    repo_dir,
    thyme_rl_hub_fixture,
    tiny_checkpoint_fixture,
)
from tests.hub_server import LocalHub, Repo
from thyme_cli.models.registry import load_registry
from thyme_cli.models.store import default_model_note, preferred_default

PHASES = (
    "[1/6] download Kwai-Keye/Thyme-RL@main",
    "[2/6] convert the language model to GGUF",
    "[3/6] convert the vision projector to GGUF (f16)",
    "[4/6] quantize the language model to Q4_K_M",
    "[5/6] check that the pair loads in llama.cpp",
    "[6/6] install into ",
)


def _models_dir() -> Path:
    return Path(os.environ["THYME_HOME"]) / "models"


def _state(name: str) -> dict[str, object]:
    try:
        return json.loads((_models_dir() / name / ".convert" / "state.json").read_text())
    except (OSError, ValueError):
        return {}


def _row(run_thyme: RunThyme, name: str) -> dict[str, object]:
    rows = json.loads(run_thyme("models", "list", "--json").stdout)
    return next(r for r in rows if r["name"] == name)


def _fake_checkpoint(folder: Path, **config_changes: object) -> Path:
    """Files shaped like a Qwen2.5-VL checkpoint (enough for the checks before conversion)."""
    folder.mkdir(parents=True, exist_ok=True)
    config: dict[str, object] = {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "torch_dtype": "bfloat16",
        "vision_config": {"depth": 32, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31]},
    }
    config.update(config_changes)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"\0" * 4096)
    (folder / "tokenizer.json").write_text("{}")
    (folder / "preprocessor_config.json").write_text("{}")
    return folder


# ---------------------------------------------------------------- the real pipeline (needs the converter)


@pytest.mark.slow
def test_pull_thyme_7b_downloads_converts_checks_installs_and_becomes_the_default(
    thyme_rl_hub: LocalHub, converter: Path, run_thyme: RunThyme
) -> None:
    registry = load_registry()
    assert preferred_default(registry) == "qwen2.5-vl-7b"
    note = default_model_note(registry)
    assert note is not None and "`thyme models pull thyme-7b`" in note and "qwen2.5-vl-7b" in note

    result = run_thyme("models", "pull", "thyme-7b")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    positions = [result.stderr.find(p) for p in PHASES]
    assert -1 not in positions and positions == sorted(positions), result.stderr
    assert "installed thyme-7b" in result.stderr

    model, mmproj = (Path(p) for p in run_thyme("models", "path", "thyme-7b").stdout.splitlines())
    assert model == _models_dir() / "thyme-7b" / "thyme-7b-Q4_K_M.gguf"
    assert mmproj == _models_dir() / "thyme-7b" / "mmproj-thyme-7b-f16.gguf"
    assert model.read_bytes()[:4] == mmproj.read_bytes()[:4] == b"GGUF"
    assert not (_models_dir() / "thyme-7b" / ".convert").exists()  # intermediates, logs and state are gone
    assert not repo_dir(THYME_RL).exists()  # the safetensors download was deleted from the HF cache
    weights = [r for r in thyme_rl_hub.requests if r.method == "GET" and r.path.endswith("/model.safetensors")]
    assert len(weights) == 1

    registry = load_registry()
    assert preferred_default(registry) == "thyme-7b" and default_model_note(registry) is None
    row = _row(run_thyme, "thyme-7b")
    assert row["installed"] is True and row["default"] is True and row["protocol"] == "thyme"

    # Another quantization: the registry follows it, the old file goes, the download is kept on request.
    again = run_thyme("models", "pull", "thyme-7b", "--quant", "q8_0", "--keep-download")
    assert again.returncode == 0, again.stderr
    assert "[4/6] quantize the language model to Q8_0" in again.stderr
    info = json.loads(run_thyme("models", "info", "thyme-7b", "--json").stdout)
    assert info["model_file"] == "thyme-7b-Q8_0.gguf" and info["state"] == "installed"
    assert sorted(p.name for p in (_models_dir() / "thyme-7b").iterdir()) == [
        "mmproj-thyme-7b-f16.gguf",
        "thyme-7b-Q8_0.gguf",
    ]
    commit = thyme_rl_hub.repos[THYME_RL].commit
    assert (repo_dir(THYME_RL) / "snapshots" / commit / "model.safetensors").is_file()

    removed = run_thyme("models", "rm", "thyme-7b", "--yes")
    assert removed.returncode == 0, removed.stderr
    assert _row(run_thyme, "thyme-7b")["state"] == "not installed"
    assert "thyme-7b" in load_registry().models  # a built-in entry stays


@pytest.mark.slow
def test_an_interrupted_pull_resumes_after_the_last_finished_phase(
    thyme_rl_hub: LocalHub, converter: Path, run_thyme: RunThyme
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "thyme_cli.cli", "models", "pull", "thyme-7b"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    deadline = time.monotonic() + 120
    while "text" not in _state("thyme-7b").get("done", {}) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C on a terminal sends: the whole process group
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "error: conversion of thyme-7b interrupted; finished phases are kept" in stderr
    assert "hint: run `thyme models pull thyme-7b` to resume" in stderr
    assert "Traceback" not in stderr
    assert list(_state("thyme-7b")["done"]) == ["fetching", "download", "text"]  # type: ignore[call-overload]
    assert _row(run_thyme, "thyme-7b")["state"] == "conversion unfinished"
    intermediate = next((_models_dir() / "thyme-7b" / ".convert").glob("text-*.gguf"))
    written = intermediate.stat().st_mtime_ns

    thyme_rl_hub.clear_log()
    result = run_thyme("models", "pull", "thyme-7b")
    assert result.returncode == 0, result.stderr
    assert "resuming the conversion of thyme-7b (finished: download, text)" in result.stderr
    assert "[1/6] download Kwai-Keye/Thyme-RL@main: done earlier" in result.stderr
    assert "[2/6] convert the language model to GGUF: done earlier" in result.stderr
    assert "[3/6] convert the vision projector to GGUF (f16)\n" in result.stderr  # this one runs
    assert thyme_rl_hub.requests == []  # nothing downloaded again, not even a HEAD
    assert _row(run_thyme, "thyme-7b")["installed"] is True
    assert not intermediate.exists() and written  # used, then removed after quantizing


@pytest.mark.slow
def test_an_unknown_pre_tokenizer_is_refused_unless_named(
    converter: Path, tiny_checkpoint: Path, run_thyme: RunThyme, tmp_path: Path
) -> None:
    ckpt = tmp_path / "odd-tokenizer"
    shutil.copytree(tiny_checkpoint, ckpt)
    tokenizer = json.loads((ckpt / "tokenizer.json").read_text())
    tokenizer["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\s+|\S+"  # not Qwen2's split
    (ckpt / "tokenizer.json").write_text(json.dumps(tokenizer))

    refused = run_thyme("models", "convert", str(ckpt), "--name", "odd")
    assert refused.returncode == 1
    error = next(ln for ln in refused.stderr.splitlines() if ln.startswith("error:"))
    assert error == (
        "error: converting the language model failed: the tokenizer's BPE pre-tokenizer is not one the "
        "converter knows, and it is not Qwen2's; if you know which llama.cpp pre-tokenizer it uses, "
        "pass --pre-tokenizer NAME"
    )
    assert "the full log is in " in refused.stderr and "Traceback" not in refused.stderr
    assert "odd" not in load_registry().models

    forced = run_thyme("models", "convert", str(ckpt), "--name", "odd", "--pre-tokenizer", "qwen2", "--quant", "F16")
    assert forced.returncode == 0, forced.stderr
    spec = load_registry().get("odd")
    assert spec.needs_conversion and spec.source_dir == ckpt and spec.protocol == "generic"
    assert spec.model_file == "odd-F16.gguf"
    removed = run_thyme("models", "rm", "odd", "--yes")
    assert removed.returncode == 0 and "removed the entry odd" in removed.stderr
    assert "odd" not in load_registry().models and not (_models_dir() / "odd").exists()


# ---------------------------------------------------------------- bad input: one line, no converter needed


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda d: d.mkdir(), "is not a Hugging Face checkpoint: no config.json"),
        (
            lambda d: _fake_checkpoint(d, model_type="qwen2", architectures=["Qwen2ForCausalLM"]),
            "is not a Qwen2.5-VL checkpoint (model type 'qwen2')",
        ),
        (lambda d: (_fake_checkpoint(d) / "preprocessor_config.json").unlink(), "has no preprocessor_config.json"),
        (lambda d: (_fake_checkpoint(d) / "model.safetensors").unlink(), "has no .safetensors weights"),
        (
            lambda d: (_fake_checkpoint(d) / "model.safetensors.index.json").write_text(
                json.dumps(
                    {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
                )
            ),
            "is incomplete: 2 of 2 weight shards missing",
        ),
        (
            lambda d: _fake_checkpoint(d, vision_config={"depth": 32, "window_size": 56, "fullatt_block_indexes": [7]}),
            "vision window_size 56 is not 112",
        ),
    ],
    ids=["no-config", "not-qwen25vl", "no-preprocessor", "no-weights", "missing-shards", "window-size"],
)
def test_bad_checkpoints_are_refused_in_one_line(
    build: object, expected: str, run_thyme: RunThyme, tmp_path: Path
) -> None:
    folder = tmp_path / "ckpt"
    build(folder)  # type: ignore[operator]
    result = run_thyme("models", "convert", str(folder), "--name", "bad")
    assert result.returncode == 2, result.stderr
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert "bad" not in load_registry().models


def test_bad_arguments_are_refused_in_one_line(run_thyme: RunThyme, tmp_path: Path) -> None:
    ckpt = _fake_checkpoint(tmp_path / "ckpt")
    cases = [
        (["models", "convert", "no/such/thing/here"], "no such folder, and not a Hub repo id"),
        (["models", "convert", str(ckpt / "config.json")], "is a file; give the checkpoint's folder"),
        (["models", "convert", str(ckpt), "--quant", "Q9_Z"], "unknown quantization 'Q9_Z'"),
        (["models", "convert", str(ckpt), "--mmproj-type", "q4"], "unknown projector type 'q4'"),
        (["models", "convert", str(ckpt), "--name", "has space"], "invalid model name 'has space'"),
        (["models", "convert", str(ckpt), "--name", "qwen2.5-vl-3b"], "a model named 'qwen2.5-vl-3b' already exists"),
        (["models", "convert", str(ckpt), "--protocol", "chatty"], "--protocol must be one of thyme, generic"),
        (["models", "convert"], "give a Hub repo id or a checkpoint folder"),
        (["models", "pull", "qwen2.5-vl-3b", "--quant", "Q8_0"], "--quant applies to models thyme converts"),
    ]
    for args, expected in cases:
        result = run_thyme(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.startswith("error: ") and expected in result.stderr.splitlines()[0], (args, result.stderr)


def test_not_enough_disk_is_refused_before_the_weights_download(
    run_thyme: RunThyme, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _fake_checkpoint(tmp_path / "ckpt")
    repo = Repo(files={p.name: p.read_bytes() for p in folder.iterdir()})
    repo.advertised_size["model.safetensors"] = 10**15  # the Hub says 1 PB
    with LocalHub({THYME_RL: repo}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        result = run_thyme("models", "pull", "thyme-7b")
    assert result.returncode == 1, result.stderr
    error, hint = [ln for ln in result.stderr.splitlines() if ln.startswith(("error:", "hint:"))]
    assert error.startswith("error: not enough disk space to convert thyme-7b: 1000.0 TB to download in ")
    assert "of GGUF files in " in error and " free" in error
    assert "HF_HOME" in hint and "THYME_HOME" in hint
    assert not [r for r in hub.requests if r.method == "GET" and r.path.endswith("model.safetensors")]


def test_a_converter_environment_that_cannot_be_created_is_one_line(
    run_thyme: RunThyme, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("THYME_CONVERT_VENV", str(blocker / "venv"))
    monkeypatch.delenv("THYME_CONVERT_PYTHON", raising=False)
    result = run_thyme("models", "convert", str(_fake_checkpoint(tmp_path / "ckpt")), "--name", "x")
    assert result.returncode == 1, result.stderr
    error, hint = [ln for ln in result.stderr.splitlines() if ln.startswith(("error:", "hint:"))]
    assert error.startswith(f"error: cannot create the converter environment in {blocker / 'venv'}: ")
    assert hint == "hint: set THYME_CONVERT_VENV to a writable folder"

    monkeypatch.setenv("THYME_CONVERT_PYTHON", str(tmp_path / "no-python"))
    result = run_thyme("models", "convert", "--setup")
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: THYME_CONVERT_PYTHON={tmp_path / 'no-python'}: no such file")


def test_failed_quantization_and_an_unloadable_pair_are_clear_errors(tiny_pair: object, tmp_path: Path) -> None:
    """The real llama.cpp quantizer and loader, in their child process, on files they must refuse."""
    from thyme_cli.models.convert.steps import ConversionError, run_step

    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"GGUF" + b"\xff" * 64)
    native = [sys.executable, "-m", "thyme_cli.models.convert.quantize"]
    with pytest.raises(ConversionError) as quant:
        run_step(
            [*native, "quantize", str(garbage), str(tmp_path / "out.gguf"), "Q4_K_M"],
            tmp_path / "q.log",
            what="quantizing to Q4_K_M",
        )
    assert quant.value.message.startswith("quantizing to Q4_K_M failed: ")
    assert quant.value.hint == f"the full log is in {tmp_path / 'q.log'}"
    assert "llama_model_quantize" in (tmp_path / "q.log").read_text()

    model = tiny_pair.model  # type: ignore[attr-defined]
    with pytest.raises(ConversionError) as load:
        run_step([*native, "verify", str(model), str(model)], tmp_path / "v.log", what="the load check")
    assert load.value.message.startswith("the load check failed: the projector does not load with this model")
    with pytest.raises(ConversionError) as bad_model:
        run_step([*native, "verify", str(garbage), str(model)], tmp_path / "v2.log", what="the load check")
    assert bad_model.value.message.startswith("the load check failed: the language model does not load")


def test_the_users_default_wins_over_thyme_7b(run_thyme: RunThyme) -> None:
    config = Path(os.environ["THYME_HOME"]) / "config.toml"
    config.write_text('[defaults]\nmodel = "qwen2.5-vl-3b"\n')
    registry = load_registry()
    assert preferred_default(registry) == "qwen2.5-vl-3b" and default_model_note(registry) is None
    rows = json.loads(run_thyme("models", "list", "--json").stdout)
    assert [r["name"] for r in rows if r["default"]] == ["qwen2.5-vl-3b"]
