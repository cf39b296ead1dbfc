"""Progress during the long silent parts of a question: image encoding and prefill (real llama.cpp)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console

from tests.conftest import RunThyme, add_model
from thyme_cli.devtools.tiny_gguf import TinyPair
from thyme_cli.engine.base import IMAGE_MARKER
from thyme_cli.ui.progress_line import MIN_PREFILL_TOKENS, ProgressLine

pytestmark = pytest.mark.slow


def _photo(tmp_path: Path, size: tuple[int, int] = (336, 252)) -> Path:
    path = tmp_path / "photo.png"
    Image.new("RGB", size, (120, 160, 200)).save(path)
    return path


def test_the_engine_reports_encoding_then_prefill_batches_up_to_the_total(tiny_pair: TinyPair, tmp_path: Path) -> None:
    from thyme_cli.engine.llama.engine import EngineOptions, LlamaEngine

    options = EngineOptions(n_ctx=4096, n_batch=64, reserve_tokens=0)
    with LlamaEngine.load(tiny_pair.model, tiny_pair.mmproj, options=options) as engine:
        conv = engine.open()
        events: list[tuple[str, int, int]] = []
        conv.on_progress = lambda stage, done, total: events.append((stage, done, total))
        conv.feed_user(f"{'describe this picture ' * 10}{IMAGE_MARKER}\nwhat is it?", [_photo(tmp_path)])
        encodes = [e for e in events if e[0] == "encode"]
        prefill = [e for e in events if e[0] == "prefill"]
        # 336x252 px is 12x9 vision tokens of 28 px.
        assert encodes == [("encode", 0, 108)]
        totals = {t for _, _, t in prefill}
        assert len(totals) == 1
        total = totals.pop()
        done = [d for _, d, _ in prefill]
        assert done == sorted(done) and done[-1] == total == conv.counters.tokens_evaluated
        # the text before the image (~200 byte-level tokens) went in 64-token batches: several reports
        assert len(done) >= 4
        # the encode is announced after the text before the image, before the image's tokens count as done
        i_encode = events.index(encodes[0])
        before = [d for stage, d, _ in events[:i_encode] if stage == "prefill"]
        assert before and before[-1] <= total - 108
        conv.on_progress = None
        events.clear()
        conv.feed_assistant("more text")
        assert events == []
        conv.close()


def test_progress_line_on_a_log_writes_one_line_per_image_and_per_long_prefill() -> None:
    buf = io.StringIO()
    line = ProgressLine(Console(file=buf, force_terminal=False, width=200))
    line.update("encode", 0, 2451)
    for done in range(512, 2600, 512):
        line.update("prefill", done, 2600)
    line.update("prefill", 2600, 2600)
    line.update("prefill", 10, MIN_PREFILL_TOKENS - 1)  # short feeds stay quiet
    out = buf.getvalue().splitlines()
    assert out[0] == "encoding image (2451 tokens)"
    assert len(out) == 2 and out[1].startswith("prefill: 2600 tokens in ")


def test_progress_line_on_a_terminal_shows_a_transient_status() -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120)
    line = ProgressLine(console)
    line.update("encode", 0, 300)
    line.stop()
    assert "encoding image (300 tokens)" in buf.getvalue()
    line.update("prefill", 512, 1024)
    line.update("prefill", 768, 1024)
    assert line._status is not None
    line.update("prefill", 1024, 1024)  # done: the status goes away by itself
    assert line._status is None
    shown = buf.getvalue()
    assert "prefill 768/1024 tokens (75%)" in shown and "prefill: 1024 tokens" not in shown


def test_thyme_ask_on_the_real_engine_says_it_is_encoding_and_prefilling(
    run_thyme: RunThyme, tmp_path: Path, tiny_pair: TinyPair, sandbox_backend: str
) -> None:
    add_model(run_thyme, tiny_pair, "--protocol", "thyme", "--ctx", "8192")
    result = run_thyme(
        "ask", str(_photo(tmp_path)), "what colour is it?", "-m", "tiny", "--max-tokens", "16", "--max-turns", "1"
    )
    assert result.returncode in (0, 3), result.stderr
    lines = result.stderr.splitlines()
    assert "encoding image (108 tokens)" in lines
    # the first feed (Thyme's system prompt, the image and the question in a byte-level vocabulary)
    # is well over the threshold, so its prefill is reported when it ends
    assert any(ln.startswith("prefill: ") and ln.endswith(" s") for ln in lines), result.stderr
