"""Checkpoint and rollback of a live conversation (what `--on-error retry` relies on)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from thyme_cli.devtools.tiny_gguf import TinyPair
from thyme_cli.engine.base import IMAGE_MARKER
from thyme_cli.engine.llama.engine import EngineOptions, LlamaEngine, SamplingOptions

EXACT = EngineOptions(n_ctx=4096, flash_attn=False, kv_cache_type="f32", reserve_tokens=0, n_threads=2)


@pytest.fixture(scope="module")
def engine(tiny_pair: TinyPair) -> Iterator[LlamaEngine]:
    with LlamaEngine.load(tiny_pair.model, tiny_pair.mmproj, options=EXACT) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (112, 140, 3), dtype=np.uint8)).save(path)
    return path


def _no_eog(engine: LlamaEngine) -> SamplingOptions:
    eog = [t for t in range(engine.native.n_vocab) if engine.native.is_eog(t)]
    return SamplingOptions(logit_bias=dict.fromkeys(eog, -1000.0))


def test_rollback_restores_context_logits_and_greedy_replay(engine: LlamaEngine, photo: Path) -> None:
    conv = engine.open(_no_eog(engine))
    conv.feed_system("sys")
    conv.feed_user(f"{IMAGE_MARKER}\nlook", [photo])
    conv.generate(max_tokens=6)
    conv.feed_assistant(f"<sandbox_output>{IMAGE_MARKER}</sandbox_output>", [photo])
    text_before, tokens_before, logits_before = conv.text, conv.n_tokens, conv.logits().copy()
    encoded_before = conv.counters.images_encoded

    mark = conv.checkpoint()
    first = conv.generate(max_tokens=10)
    conv.feed_assistant(f"<sandbox_output>{IMAGE_MARKER}</sandbox_output>", [photo])
    assert conv.text != text_before

    conv.rollback(mark)
    assert conv.text == text_before and conv.n_tokens == tokens_before
    assert float(np.abs(conv.logits() - logits_before).max()) < 1e-4
    assert conv.counters.images_encoded == encoded_before + 1  # only the dropped image was encoded
    # A retried turn is sampled warm (temperature 1), so it can differ from the failed greedy one;
    # its code would still be greedy. Here we only check it is a real continuation of the context.
    retried = conv.generate(max_tokens=10)
    assert retried.n_tokens == 10 and conv.text == text_before + retried.text
    assert first.n_tokens == 10
    conv.close()


def test_after_rollback_greedy_decoding_matches_a_fresh_run(engine: LlamaEngine, photo: Path) -> None:
    def run(with_detour: bool) -> str:
        conv = engine.open(_no_eog(engine))
        conv.feed_system("sys")
        conv.feed_user(f"{IMAGE_MARKER}\nread it", [photo])
        if with_detour:
            mark = conv.checkpoint()
            conv.generate(max_tokens=5)
            conv.rollback(mark, resample_warm=False)  # greedy vs greedy: the rolled-back state must be exact
        out = conv.generate(max_tokens=12).text
        conv.close()
        return out

    assert run(with_detour=True) == run(with_detour=False)
