"""Questions in a row on one engine reuse the shared system prompt left in the KV cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from thyme_cli.devtools.tiny_gguf import TinyPair
from thyme_cli.engine.base import IMAGE_MARKER
from thyme_cli.engine.llama.engine import EngineOptions, LlamaEngine

EXACT = EngineOptions(n_ctx=4096, flash_attn=False, kv_cache_type="f32", reserve_tokens=0, n_threads=2)
SYSTEM = "You are a helpful assistant. " * 20


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (84, 112, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def engine(tiny_pair: TinyPair) -> Iterator[LlamaEngine]:
    with LlamaEngine.load(tiny_pair.model, tiny_pair.mmproj, options=EXACT) as loaded:
        yield loaded


def _question(engine: LlamaEngine, photo: Path, system: str, question: str) -> tuple[int, np.ndarray, str]:
    conv = engine.open()
    conv.feed_system(system)
    conv.feed_user(f"{IMAGE_MARKER}\n{question}", [photo])
    evaluated, logits = conv.counters.tokens_evaluated, conv.logits().copy()
    text = conv.generate(max_tokens=8).text
    conv.close()
    return evaluated, logits, text


def test_the_second_question_skips_the_system_prompt_and_gets_the_same_logits(
    engine: LlamaEngine, tiny_pair: TinyPair, photo: Path
) -> None:
    first, _, _ = _question(engine, photo, SYSTEM, "what is this?")
    second, logits, text = _question(engine, photo, SYSTEM, "and the colour?")
    system_tokens = len(engine.token_ids(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"))
    assert second <= first - system_tokens + 8  # only the new user turn was evaluated
    with LlamaEngine.load(tiny_pair.model, tiny_pair.mmproj, options=EXACT) as fresh:
        _, fresh_logits, fresh_text = _question(fresh, photo, SYSTEM, "and the colour?")
    assert float(np.abs(logits - fresh_logits).max()) < 1e-4
    assert text == fresh_text


def test_a_different_system_prompt_is_evaluated_from_scratch(
    engine: LlamaEngine, tiny_pair: TinyPair, photo: Path
) -> None:
    first, _, _ = _question(engine, photo, SYSTEM, "q")
    other, logits, _ = _question(engine, photo, "Answer briefly.", "q")
    with LlamaEngine.load(tiny_pair.model, tiny_pair.mmproj, options=EXACT) as fresh:
        alone, fresh_logits, _ = _question(fresh, photo, "Answer briefly.", "q")
    assert other == alone < first
    assert float(np.abs(logits - fresh_logits).max()) < 1e-4
