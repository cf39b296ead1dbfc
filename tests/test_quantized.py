"""Quantized models on this CPU: the child-process probe, the engine's choice of buffer types, a
real `thyme ask` on Q4_K_M / Q8_0 / Q4_0 tiny models, `thyme doctor`, and a native crash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import RunThyme, add_model
from thyme_cli.devtools.tiny_gguf import TinyPair, write_quantized_pair
from thyme_cli.engine.llama import cpu_probe
from thyme_cli.engine.llama.gguf_meta import read_gguf_keys

QUANTS = ("Q4_K_M", "Q8_0", "Q4_0")
# llama_ftype of each quantization (general.file_type in the GGUF).
FILE_TYPES = {"Q4_K_M": 15, "Q8_0": 7, "Q4_0": 2}


@pytest.fixture(scope="session")
def quant_pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TinyPair]:
    out = tmp_path_factory.mktemp("tiny-quant")
    return {q: write_quantized_pair(out, q, prefix=f"tiny-{q.lower()}") for q in QUANTS}


@pytest.fixture(scope="session")
def probe(tmp_path_factory: pytest.TempPathFactory) -> cpu_probe.ProbeResult:
    """This machine's real answer (a fresh probe in a child process)."""
    return cpu_probe.run_probe()


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "in.png"
    Image.new("RGB", (300, 200), "navy").save(path)
    return path


def test_the_probe_model_is_quantized_and_written_without_the_gguf_package(tmp_path: Path) -> None:
    model = cpu_probe.write_probe_model(tmp_path / "p.gguf")
    assert read_gguf_keys(model, ["general.architecture"]) == {"general.architecture": "llama"}
    assert 200_000 < model.stat().st_size < 2_000_000
    text = model.read_bytes()
    for name in (b"blk.0.attn_q.weight", b"blk.1.ffn_up.weight", b"output.weight"):
        assert name in text


def test_the_probe_gives_a_conclusive_answer_and_a_fix_that_works(probe: cpu_probe.ProbeResult) -> None:
    assert probe.source == "probe", probe.detail
    if probe.extra_bufts:
        assert probe.crashed is None
    else:  # a crash with extra buffer types: the same model must run without them
        assert probe.crashed and probe.crashed.startswith("SIG")
        assert probe.plain_ok is True, probe.detail
        assert isinstance(probe.repack_ok, bool)


def test_decide_caches_per_library_and_cpu_and_honours_the_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("THYME_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cpu_probe, "_memo", None)
    first = cpu_probe.decide()
    assert first.source == "probe"
    files = list((tmp_path / "cache").glob("cpu-probe-*.json"))
    assert [f.name for f in files] == [f"cpu-probe-{cpu_probe.cache_key()}.json"]
    monkeypatch.setattr(cpu_probe, "_memo", None)
    again = cpu_probe.decide()
    assert again.source == "cache" and again.extra_bufts == first.extra_bufts
    for value, expected in (("0", False), ("1", True), ("off", False)):
        monkeypatch.setenv("THYME_EXTRA_BUFTS", value)
        forced = cpu_probe.decide()
        assert forced.source == "env" and forced.extra_bufts is expected


@pytest.mark.parametrize("quant", QUANTS)
def test_ask_runs_a_quantized_model_through_the_real_cli(
    run_thyme: RunThyme,
    tmp_path: Path,
    image: Path,
    quant_pairs: dict[str, TinyPair],
    quant: str,
    sandbox_backend: str,
) -> None:
    pair = quant_pairs[quant]
    assert read_gguf_keys(pair.model, ["general.file_type"]) == {"general.file_type": FILE_TYPES[quant]}
    add_model(run_thyme, pair, name="tq")
    out = tmp_path / "run"
    result = run_thyme(
        "ask",
        str(image),
        "what colour is it?",
        "-m",
        "tq",
        "--max-tokens",
        "24",
        "--max-turns",
        "2",
        "--json",
        "--out",
        str(out),
    )
    assert result.returncode in (0, 3), result.stderr  # answered or not: random weights, no crash
    run = json.loads(result.stdout)
    assert run["model"] == "tq" and run["turns"] and run["counters"]["tokens_generated"] > 0
    assert (out / "trace.json").is_file()


def test_doctor_runs_the_quantized_probe_and_reports_it(run_thyme: RunThyme, probe: cpu_probe.ProbeResult) -> None:
    result = run_thyme("doctor", "--json")
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    check = checks["quantized models"]
    assert check["status"] == "ok", check
    if probe.extra_bufts:
        assert "runs with llama.cpp's extra buffer types" in check["detail"]
    else:
        assert f"dies with {probe.crashed}" in check["detail"] and "(fixed)" in check["detail"]
    forced = run_thyme("doctor", "--json", env={"THYME_EXTRA_BUFTS": "1"})
    forced_check = {c["name"]: c for c in json.loads(forced.stdout)["checks"]}["quantized models"]
    assert forced_check["status"] == ("ok" if probe.extra_bufts else "fail")


def test_a_native_crash_during_ask_is_one_line_and_leaves_no_run_directory(
    run_thyme: RunThyme,
    isolated_home: Path,
    image: Path,
    quant_pairs: dict[str, TinyPair],
    probe: cpu_probe.ProbeResult,
    sandbox_backend: str,
) -> None:
    if probe.extra_bufts:
        pytest.skip("llama.cpp's extra buffer types do not crash on this CPU, so no real native crash to provoke")
    pair = quant_pairs["Q4_K_M"]
    add_model(run_thyme, pair, name="tq")
    # Forcing the buffer types the probe saw crash gives a real native crash inside llama.cpp.
    result = run_thyme(
        "ask", str(image), "q", "-m", "tq", "--max-tokens", "16", "--json", env={"THYME_EXTRA_BUFTS": "1"}
    )
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and f"crashed inside native code ({probe.crashed})" in lines[0], result.stderr
    runs = isolated_home / "runs"
    assert not runs.exists() or list(runs.iterdir()) == []
    batch_in = isolated_home / "items.jsonl"
    batch_in.write_text(json.dumps({"id": "a", "image": str(image), "question": "q"}) + "\n")
    batch = run_thyme(
        "batch", str(batch_in), "-m", "tq", "-o", str(isolated_home / "out.jsonl"), env={"THYME_EXTRA_BUFTS": "1"}
    )
    assert batch.returncode == 1 and "crashed inside native code" in batch.stderr.splitlines()[-1], batch.stderr
    assert not (isolated_home / "out.runs").exists()


@pytest.mark.parametrize("quant", ["Q4_K_M", "Q4_0"])
def test_the_buffer_types_the_engine_picks_give_the_logits_of_plain_cpu(
    quant_pairs: dict[str, TinyPair], monkeypatch: pytest.MonkeyPatch, quant: str
) -> None:
    import numpy as np

    from thyme_cli.engine.llama.engine import EngineOptions, LlamaEngine

    def logits() -> tuple[str, np.ndarray]:
        engine = LlamaEngine.load(
            quant_pairs[quant].model, quant_pairs[quant].mmproj, options=EngineOptions(n_ctx=1024)
        )
        try:
            conv = engine.open()
            conv.feed_user("what is in the picture? " * 4)  # a batch: the matrix-matrix kernels
            return engine.native.buffer_types, conv.logits()
        finally:
            engine.close()

    picked, fast = logits()
    monkeypatch.setenv("THYME_EXTRA_BUFTS", "0")
    plain_name, plain = logits()
    assert plain_name == "plain CPU"
    assert np.abs(fast - plain).max() <= 0.02 * np.abs(plain).max(), picked
