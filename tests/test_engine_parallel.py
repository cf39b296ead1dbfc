"""Several sequences of one context decoded together give what each gives decoded alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.batch_support import kill_9_then_resume
from tests.conftest import RunThyme, add_model
from thyme_cli.devtools.tiny_gguf import TinyPair
from thyme_cli.engine.llama.engine import EngineOptions, LlamaEngine
from thyme_cli.engine.llama.native import Native
from thyme_cli.engine.llama.parallel import ParallelDecoder
from thyme_cli.engine.llama.sampling import AtsSamplers
from thyme_cli.engine.settings import SamplingOptions
from thyme_cli.errors import EngineError, UsageError

PROMPT = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nTell me a story.<|im_end|>\n"
STEPS = 24


def _chains(native: Native, seeds: list[int], temperature: float) -> list[Any]:
    return [AtsSamplers(SamplingOptions(temperature=temperature, seed=s), native.n_vocab) for s in seeds]


def _together(native: Native, seeds: list[int], temperature: float) -> list[list[int]]:
    prompt = native.tokenize(PROMPT)
    native.clear()
    native.decode_tokens(prompt, 0)
    samplers = _chains(native, seeds, temperature)
    out: list[list[int]] = [[] for _ in seeds]
    with ParallelDecoder(native) as dec:
        for seq in range(1, len(seeds)):
            dec.fork(0, seq)
        dec.fork(0, 0)  # sequence 0 reads the prefix's logits the same way
        for step in range(STEPS):
            items = []
            for seq, s in enumerate(samplers):
                token = dec.sample(seq, s.prose)
                out[seq].append(token)
                items.append((seq, token, len(prompt) + step))
            dec.step(items)
    for s in samplers:
        s.close()
    return out


def _alone(native: Native, seed: int, temperature: float) -> list[int]:
    prompt = native.tokenize(PROMPT)
    native.clear()
    native.decode_tokens(prompt, 0)
    (s,) = _chains(native, [seed], temperature)
    out = []
    for step in range(STEPS):
        token = native.sample(s.prose)
        out.append(token)
        native.decode_one(token, len(prompt) + step)
    s.close()
    return out


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_four_sequences_decoded_together_match_each_decoded_alone(tiny_pair: TinyPair, temperature: float) -> None:
    seeds = [11, 12, 13, 14]
    with LlamaEngine.load(
        tiny_pair.model, tiny_pair.mmproj, options=EngineOptions(n_ctx=2048, n_seq=4, n_threads=2)
    ) as engine:
        together = _together(engine.native, seeds, temperature)
    with LlamaEngine.load(tiny_pair.model, tiny_pair.mmproj, options=EngineOptions(n_ctx=2048, n_threads=2)) as engine:
        alone = [_alone(engine.native, s, temperature) for s in seeds]
    assert together == alone
    if temperature > 0:
        assert len({tuple(t) for t in together}) > 1  # the seeds really drew different trajectories


def test_sequences_outside_the_context_are_refused(tiny_pair: TinyPair) -> None:
    with pytest.raises(UsageError, match="n_seq"):
        EngineOptions(n_seq=0)
    options = EngineOptions(n_ctx=1024, n_seq=2, n_threads=2)
    with (
        LlamaEngine.load(tiny_pair.model, tiny_pair.mmproj, options=options) as engine,
        ParallelDecoder(engine.native) as dec,
    ):
        with pytest.raises(EngineError, match="outside"):
            dec.fork(0, 2)
        with pytest.raises(EngineError, match="no logits"):
            dec.sample(1, None)


def test_batch_jobs_on_the_local_engine_gives_the_results_of_jobs_1(
    run_thyme: RunThyme, tiny_pair: TinyPair, tmp_path: Path, sandbox_backend: str
) -> None:
    import numpy as np
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (56 + 28 * i, 84, 3), dtype=np.uint8)).save(
            photos / f"p{i}.png"
        )
    add_model(run_thyme, tiny_pair)
    # thyme's CPU defaults: the language model's flash attention is off. With it on, llama.cpp's
    # CPU kernel rounds differently when other sequences' cells sit between a sequence's own (up to
    # ~1e-3 of a logit), and this random model's near-ties flip.
    common = ["-q", "what is it?", "-m", "tiny", "--max-tokens", "40", "--max-turns", "3", "--threads", "2"]
    runs: dict[int, dict[str, Any]] = {}
    for jobs in (1, 3):
        out = tmp_path / f"r{jobs}.jsonl"
        result = run_thyme("batch", str(photos), *common, "-o", str(out), "--jobs", str(jobs))
        assert result.returncode == 0, result.stderr
        runs[jobs] = {}
        for line in out.read_text().splitlines():
            record = json.loads(line)
            trace = json.loads((Path(record["run_dir"]) / "trace.json").read_text())
            runs[jobs][record["id"]] = (
                record["answer"],
                [t["text"] for t in trace["turns"]],
                record["counters"]["tokens_generated"],
            )
    assert len(runs[1]) == 4 and runs[3] == runs[1]
    assert sum(r[2] for r in runs[1].values()) > 20  # the model really wrote something


def test_local_jobs_kill_9_then_resume_gives_every_item_exactly_once(
    run_thyme: RunThyme, tiny_pair: TinyPair, tmp_path: Path, sandbox_backend: str
) -> None:
    from PIL import Image

    add_model(run_thyme, tiny_pair)
    root = tmp_path / "many"
    root.mkdir()
    for i in range(16):
        Image.new("RGB", (84, 56 + i)).save(root / f"img{i:02d}.png")
    out = tmp_path / "r.jsonl"
    args = [
        "batch",
        str(root),
        "-q",
        "q",
        "-m",
        "tiny",
        "--jobs",
        "3",
        "--max-tokens",
        "16",
        "--max-turns",
        "1",
        "--threads",
        "2",
        "-o",
        str(out),
    ]
    kills = kill_9_then_resume(
        args, out, kills=3, seed=7, max_pause_s=0.5, progress_timeout_s=120, finish_timeout_s=600, attempts=30
    )
    assert kills >= 2
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert sorted(ids) == sorted(str(p) for p in root.glob("*.png"))
    assert len(ids) == len(set(ids)) == 16
