"""Memory estimate and refusal before loading, CPU thread defaults, and what `thyme doctor` says about them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import RunThyme, add_model
from thyme_cli.devtools.tiny_gguf import TinyPair
from thyme_cli.engine.llama.cpu import cpu_defaults, physical_cores
from thyme_cli.engine.llama.memory import COMPUTE_ALLOWANCE, MEMORY_ENV, check_fits, estimate
from thyme_cli.engine.settings import EngineOptions
from thyme_cli.errors import EngineError


def test_estimate_is_files_plus_kv_cache_plus_buffers(tiny_pair: TinyPair) -> None:
    need = estimate(tiny_pair.model, tiny_pair.mmproj, EngineOptions(n_ctx=8192))
    # the tiny model: 2 layers, 2 KV heads of 16 dims (64 wide, 4 heads); K and V in f16
    assert need.kv_cache == 8192 * 2 * 2 * (16 + 16) * 2
    assert need.weights == tiny_pair.model.stat().st_size and need.projector == tiny_pair.mmproj.stat().st_size
    # flash attention off (the CPU default): one 512-token batch's scores at 8192 positions, 4 heads, f32
    assert need.attention == 512 * 8192 * 4 * 4
    assert need.total == need.weights + need.projector + need.kv_cache + COMPUTE_ALLOWANCE + need.attention
    assert estimate(tiny_pair.model, tiny_pair.mmproj, EngineOptions(n_ctx=8192, flash_attn=True)).attention == 0
    q8 = estimate(tiny_pair.model, tiny_pair.mmproj, EngineOptions(n_ctx=8192, kv_cache_type="q8_0"))
    assert q8.kv_cache < need.kv_cache / 1.8


def test_check_fits_refuses_in_one_line_and_skips_gpu_offload(
    tiny_pair: TinyPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MEMORY_ENV, str(10**9))
    with pytest.raises(EngineError) as err:
        check_fits(tiny_pair.model, tiny_pair.mmproj, EngineOptions(), on_gpu=False)
    assert "needs about 1.6 GB of memory" in err.value.message and "this machine has 1.0 GB" in err.value.message
    assert "\n" not in err.value.message
    assert check_fits(tiny_pair.model, tiny_pair.mmproj, EngineOptions(), on_gpu=True) is None
    monkeypatch.setenv(MEMORY_ENV, str(2 * 10**9))
    assert check_fits(tiny_pair.model, tiny_pair.mmproj, EngineOptions(), on_gpu=False) is not None


@pytest.mark.slow
def test_ask_refuses_before_loading_when_the_model_cannot_fit(
    run_thyme: RunThyme, tmp_path: Path, tiny_pair: TinyPair
) -> None:
    add_model(run_thyme, tiny_pair, "--protocol", "thyme")
    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 64), "white").save(photo)
    result = run_thyme("ask", str(photo), "what is it?", "-m", "tiny", env={MEMORY_ENV: "500000000"})
    assert result.returncode == 1, result.stderr
    assert "needs about" in result.stderr and "this machine has 500 MB" not in result.stderr
    assert "this machine has 0.5 GB" in result.stderr
    assert "Traceback" not in result.stderr
    assert photo.is_file()


def _fake_topology(root: Path, cores: dict[int, tuple[int, int]]) -> Path:
    for cpu, (package, core) in cores.items():
        topo = root / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "physical_package_id").write_text(f"{package}\n")
        (topo / "core_id").write_text(f"{core}\n")
    return root


def test_physical_cores_counts_distinct_cores_not_hardware_threads(tmp_path: Path) -> None:
    smt = _fake_topology(tmp_path / "smt", {0: (0, 0), 1: (0, 1), 2: (0, 0), 3: (0, 1)})
    assert physical_cores([0, 1, 2, 3], smt) == 2
    assert physical_cores([0, 2], smt) == 1  # affinity limited to one core's two threads
    two_sockets = _fake_topology(tmp_path / "numa", {0: (0, 0), 1: (1, 0)})
    assert physical_cores([0, 1], two_sockets) == 2
    assert physical_cores([0, 1], tmp_path / "missing") == 2  # unknown topology: the CPU count


def test_defaults_decode_on_physical_cores_and_batch_on_every_cpu() -> None:
    import os

    d = cpu_defaults()
    assert d.batch_threads == len(os.sched_getaffinity(0))
    assert d.decode_threads == d.physical == physical_cores(sorted(os.sched_getaffinity(0)))
    assert str(d.decode_threads) in d.why


def test_doctor_shows_the_defaults_it_would_use(run_thyme: RunThyme) -> None:
    result = run_thyme("doctor", "--json")
    rows = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    d = cpu_defaults()
    assert rows["threads"]["detail"].startswith(f"{d.decode_threads} for decoding")
    assert "f16" in rows["KV cache"]["detail"] and "mmap" in rows["model loading"]["detail"]
    assert rows["flash attention"]["detail"].startswith("off for the language model on a CPU")
    assert "per image" in rows["image tokens"]["detail"]
    assert rows["memory"]["detail"].endswith("on this machine")
