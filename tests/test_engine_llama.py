"""The llama.cpp engine on a real (tiny, random-weight) Qwen2.5-VL-shaped GGUF pair.

No mocks: every test loads the real model through llama-cpp-python and runs libmtmd. Where a
random model has to hit a stop condition, a logit bias or a fed prefix makes it (said per test).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import llama_cpp.mtmd_cpp as mtmd
import numpy as np
import pytest
from PIL import Image

from thyme_cli.devtools.tiny_gguf import TinyPair, write_qwen25vl_projector, write_text_model
from thyme_cli.engine.base import IMAGE_MARKER
from thyme_cli.engine.llama.engine import EngineOptions, LlamaConversation, LlamaEngine, SamplingOptions
from thyme_cli.errors import EngineError

# Exact arithmetic settings: no flash attention and an f32 KV cache, so incremental and
# from-scratch evaluation can only differ by float rounding of different batch shapes.
EXACT = EngineOptions(n_ctx=4096, flash_attn=False, kv_cache_type="f32", reserve_tokens=0, n_threads=2)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    sizes = {"photo": (300, 200), "crop": (100, 150), "small": (56, 84), "huge": (560, 560), "wide": (4000, 3000)}
    paths = {}
    for name, (w, h) in sizes.items():
        paths[name] = out / f"{name}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[name])
    return paths


@pytest.fixture(scope="module")
def exact(tiny_pair: TinyPair) -> Iterator[LlamaEngine]:
    engine = LlamaEngine.load(tiny_pair.model, tiny_pair.mmproj, options=EXACT)
    yield engine
    engine.close()


def eog_ids(engine: LlamaEngine) -> list[int]:
    return [t for t in range(engine.native.n_vocab) if engine.native.is_eog(t)]


def no_eog(engine: LlamaEngine, **sampling: Any) -> SamplingOptions:
    """Sampling that never ends the turn, so a random model produces exactly max_tokens."""
    return SamplingOptions(logit_bias=dict.fromkeys(eog_ids(engine), -1000.0), **sampling)


def force(engine: LlamaEngine, text: str) -> SamplingOptions:
    """Sampling that always picks the single token of ``text``."""
    (token,) = engine.token_ids(text)
    return SamplingOptions(logit_bias={token: 1000.0})


def thyme_conversation(conv: LlamaConversation, images: dict[str, Path]) -> None:
    """Three model turns, three images: a Thyme question, a sandbox crop inside the assistant
    turn, then a follow-up user turn with another image."""
    conv.feed_system("You are Thyme. Think with images.")
    conv.feed_user(f"{IMAGE_MARKER}\nWhat does the sign say?", [images["photo"]])
    conv.generate(max_tokens=12)
    conv.feed_assistant(f"<sandbox_output>{IMAGE_MARKER}</sandbox_output>", [images["crop"]])
    conv.generate(max_tokens=12)
    conv.feed_user(f"Also look at {IMAGE_MARKER} please.", [images["small"]])
    conv.generate(max_tokens=8)


# --- the live context ----------------------------------------------------------------------------


def test_incremental_conversation_equals_evaluating_its_stream_from_scratch(
    exact: LlamaEngine, images: dict[str, Path]
) -> None:
    conv = exact.open(no_eog(exact))
    thyme_conversation(conv, images)
    c = conv.counters
    # Every cell in the KV cache was computed once, except the few generated tokens evaluated
    # again when an observation joined them into other tokens (whole-conversation tokenization).
    assert c.tokens_evaluated + c.tokens_generated == conv.n_tokens + c.retokenized
    assert c.retokenized <= 16
    assert c.tokens_generated == 32
    assert c.images_encoded == 3
    incremental, stream = conv.logits(), conv.token_stream()
    assert sum(isinstance(item, int) for item in stream) + 3 < conv.n_tokens  # images hold many cells

    scratch = exact.open()
    scratch.evaluate_stream(stream)
    assert scratch.n_tokens == conv.n_tokens
    diff = float(np.abs(scratch.logits() - incremental).max())
    assert diff < 1e-4, diff  # seen: ~3e-6 (batch-shape rounding)

    # The comparison can fail: the same stream without its last image gives other logits.
    wrong = exact.open()
    last_image = max(i for i, item in enumerate(stream) if not isinstance(item, int))
    wrong.evaluate_stream(stream[:last_image] + stream[last_image + 1 :])
    assert float(np.abs(wrong.logits() - incremental).max()) > 1e-2


def test_default_settings_stay_close_to_from_scratch(tiny_pair: TinyPair, images: dict[str, Path]) -> None:
    """The defaults (an f16 KV cache; on a CPU, flash attention in the image encoder only) add
    rounding, not a different context."""
    engine = LlamaEngine.load(tiny_pair.model, tiny_pair.mmproj, options=EngineOptions(n_ctx=4096, reserve_tokens=0))
    try:
        # the language model's flash attention: off when it runs on the CPU, llama.cpp's choice on a GPU
        assert engine.native.flash_attn is (False if engine.native.n_gpu_layers == 0 else None)
        conv = engine.open(no_eog(engine))
        thyme_conversation(conv, images)
        incremental, stream = conv.logits(), conv.token_stream()
        scratch = engine.open()
        scratch.evaluate_stream(stream)
        assert float(np.abs(scratch.logits() - incremental).max()) < 0.05  # seen: ~1e-3
        assert int(np.argmax(scratch.logits())) == int(np.argmax(incremental))
    finally:
        engine.close()


def _count_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    calls: list[int] = []
    original: Callable[..., Any] = getattr(mtmd, name)

    def spy(*args: Any) -> Any:
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(mtmd, name, spy)
    return calls


def test_each_image_is_encoded_exactly_once(
    exact: LlamaEngine, images: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    encodes = _count_calls(monkeypatch, "mtmd_encode_chunk")
    whole_evals = _count_calls(monkeypatch, "mtmd_helper_eval_chunk_single")
    conv = exact.open(no_eog(exact))
    thyme_conversation(conv, images)
    conv.feed_user("And finally?")  # more turns add no encodes
    conv.generate(max_tokens=4)
    assert len(encodes) == 3 == conv.counters.images_encoded
    assert whole_evals == []
    assert conv.counters.image_encode_s > 0 and conv.counters.prefill_s > 0 and conv.counters.decode_s > 0
    assert conv.counters.decode_tokens_per_s > 0
    assert 0 < conv.counters.native_s <= conv.counters.image_encode_s + conv.counters.prefill_s + conv.counters.decode_s


def test_open_starts_a_clean_deterministic_question(exact: LlamaEngine, images: dict[str, Path]) -> None:
    warm = no_eog(exact, temperature=0.8, seed=42)
    runs = []
    for _ in range(2):
        conv = exact.open(warm)
        conv.feed_user(f"{IMAGE_MARKER} describe", [images["photo"]])
        runs.append((conv.generate(max_tokens=20).text, conv.n_tokens, conv.logits()))
    assert runs[0][0] == runs[1][0] and runs[0][1] == runs[1][1]
    assert np.array_equal(runs[0][2], runs[1][2])
    other = exact.open(no_eog(exact, temperature=0.8, seed=43))
    other.feed_user(f"{IMAGE_MARKER} describe", [images["photo"]])
    assert other.generate(max_tokens=20).text != runs[0][0]


# --- adaptive temperature sampling ---------------------------------------------------------------


def _masked_argmax(logits: np.ndarray, masked: list[int]) -> int:
    logits = logits.copy()
    logits[masked] = -np.inf
    return int(np.argmax(logits))


def test_tokens_inside_code_are_the_argmax_even_at_high_temperature(exact: LlamaEngine) -> None:
    hot = no_eog(exact, temperature=1.5, top_k=0, top_p=1.0, seed=3)
    eog = eog_ids(exact)
    conv = exact.open(hot)
    conv.feed_user("Crop the sign.")
    conv.feed_assistant("I will zoom in.\n<code>")  # teacher-forced: the model is now inside code
    assert conv.in_code
    stepped = []
    for _ in range(40):
        if not conv.in_code:
            break
        expected = _masked_argmax(conv.logits(), eog)
        conv.generate(max_tokens=1)
        assert conv.last_tokens == [expected]
        stepped.extend(conv.last_tokens)
    assert len(stepped) >= 10

    # One call of many tokens decodes the same way (the in-code state is kept token by token).
    again = exact.open(hot)
    again.feed_user("Crop the sign.")
    again.feed_assistant("I will zoom in.\n<code>")
    again.generate(max_tokens=len(stepped))
    assert again.last_tokens == stepped

    # Control: outside code the same settings really sample (so the check above can fail).
    prose = exact.open(hot)
    prose.feed_user("Crop the sign.")
    prose.feed_assistant("I will zoom in.\n")
    differ = 0
    for _ in range(20):
        expected = _masked_argmax(prose.logits(), eog)
        prose.generate(max_tokens=1)
        differ += prose.last_tokens != [expected]
    assert differ >= 5


def test_a_code_tag_printed_by_a_code_step_does_not_make_decoding_greedy(exact: LlamaEngine) -> None:
    conv = exact.open(no_eog(exact, temperature=1.5, seed=3))
    conv.feed_user("Crop the sign.")
    conv.feed_assistant("<code>\nprint('<code>')\n</code>")
    assert not conv.in_code
    conv.feed_assistant("<sandbox_output><code></sandbox_output>")  # the step's output, not the model's tag
    assert not conv.in_code
    conv.feed_assistant("\nagain <code>")  # the model's own tag still counts
    assert conv.in_code


# --- stop conditions ---------------------------------------------------------------------------------


def test_stops_at_code_end_completed_by_the_model(exact: LlamaEngine) -> None:
    conv = exact.open(force(exact, ">"))
    conv.feed_user("Crop it.")
    conv.feed_assistant("<code>\nprint(1)\n</code")  # the model writes the final '>'
    streamed: list[str] = []
    gen = conv.generate(max_tokens=10, on_text=streamed.append)
    assert (gen.stop_reason, gen.text, gen.n_tokens) == ("code", ">", 1)
    assert streamed == [">"]
    assert conv.text.endswith("<|im_start|>assistant\n<code>\nprint(1)\n</code>")
    assert not conv.in_code


def test_stops_at_answer_end(exact: LlamaEngine) -> None:
    conv = exact.open(force(exact, ">"))
    conv.feed_user("Which option?")
    conv.feed_assistant("<answer>B</answer")
    gen = conv.generate(max_tokens=10)
    assert (gen.stop_reason, gen.text) == ("answer", ">")


def test_end_of_turn_is_not_evaluated_and_the_next_feed_closes_the_turn(exact: LlamaEngine) -> None:
    im_end = exact.token_ids("<|im_end|>")[0]
    conv = exact.open(force(exact, "<|im_end|>"))
    conv.feed_user("Hi")
    conv.feed_assistant("Hello")
    before = conv.token_stream()
    gen = conv.generate(max_tokens=10)
    assert (gen.stop_reason, gen.text, gen.n_tokens) == ("end_of_turn", "", 0)
    assert conv.token_stream() == before  # the sampled <|im_end|> did not go into the context
    conv.feed_user("Bye")
    after = conv.token_stream()
    assert after[len(before)] == im_end  # the feed closed the turn itself
    assert conv.text.endswith("Hello<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n")


def test_stops_at_the_token_budget_and_streams_everything(exact: LlamaEngine) -> None:
    conv = exact.open(no_eog(exact))
    conv.feed_user("Talk.")
    streamed: list[str] = []
    gen = conv.generate(max_tokens=7, on_text=streamed.append)
    assert (gen.stop_reason, gen.n_tokens) == ("max_tokens", 7)
    assert "".join(streamed) == gen.text
    assert conv.text.endswith(gen.text)  # Generation.text is exactly what the context gained


def test_multibyte_characters_split_across_tokens(exact: LlamaEngine) -> None:
    # Only the two bytes of "é" (0xC3 0xA9) may be sampled, in whatever order the model likes.
    ids = {b: next(t for t in range(256) if exact.native.piece(t) == bytes([b])) for b in (0xC3, 0xA9)}
    conv = exact.open(SamplingOptions(logit_bias={ids[0xC3]: 1000.0, ids[0xA9]: 1000.0}))
    conv.feed_user("Write é.")
    streamed: list[str] = []
    gen = conv.generate(max_tokens=30, on_text=streamed.append)
    raw = b"".join(exact.native.piece(t) for t in conv.last_tokens)
    complete = raw[:-1] if raw.endswith(b"\xc3") else raw  # a trailing lead byte waits for the next token
    assert gen.text == complete.decode("utf-8", "replace")
    assert "".join(streamed) == gen.text
    assert conv.text.endswith(gen.text)


def test_thyme_observation_continues_the_same_assistant_turn(exact: LlamaEngine, images: dict[str, Path]) -> None:
    conv = exact.open(force(exact, ">"))
    conv.feed_user("Look closer.")
    conv.feed_assistant("<code>crop()</code")
    assert conv.generate(max_tokens=3).stop_reason == "code"
    evaluated = conv.counters.tokens_evaluated
    conv.feed_assistant(f"<sandbox_output>{IMAGE_MARKER}</sandbox_output>", [images["crop"]])
    assert conv.text.endswith(f"<code>crop()</code><sandbox_output>{IMAGE_MARKER}</sandbox_output>")
    assert conv.text.count("<|im_start|>assistant") == 1
    # Only the observation was evaluated: its text tokens, the image's 20 tokens, 2 delimiters.
    assert 20 < conv.counters.tokens_evaluated - evaluated < 60


# --- context limits ---------------------------------------------------------------------------------


@pytest.fixture
def small_ctx(tiny_pair: TinyPair) -> Iterator[LlamaEngine]:
    engine = LlamaEngine.load(
        tiny_pair.model, tiny_pair.mmproj, options=EngineOptions(n_ctx=256, reserve_tokens=0, n_threads=2)
    )
    yield engine
    engine.close()


def test_context_overflow_is_an_error_before_anything_is_evaluated(
    small_ctx: LlamaEngine, images: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    encodes = _count_calls(monkeypatch, "mtmd_encode_chunk")
    conv = small_ctx.open()
    with pytest.raises(EngineError) as info:
        conv.feed_user(f"{IMAGE_MARKER} what?", [images["huge"]])  # 560x560 = 400 image tokens
    err = info.value
    assert f"but the context holds {small_ctx.n_ctx}" in err.message
    needed = int(err.message.split("needs ")[1].split(" ")[0])
    assert needed > 400 > small_ctx.n_ctx
    assert err.hint is not None and "--ctx" in err.hint and "--max-image-tokens" in err.hint
    assert encodes == [] and conv.counters.tokens_evaluated == 0 and conv.n_tokens == 0
    conv.feed_user("A short question instead.")  # nothing was half-done: the conversation goes on
    assert conv.text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nA short")
    assert conv.counters.tokens_evaluated == conv.n_tokens > 0


def test_room_is_reserved_for_the_reply(tiny_pair: TinyPair) -> None:
    engine = LlamaEngine.load(
        tiny_pair.model, tiny_pair.mmproj, options=EngineOptions(n_ctx=256, reserve_tokens=200, n_threads=2)
    )
    try:
        conv = engine.open()
        with pytest.raises(EngineError, match="200 kept for the reply"):
            conv.feed_user("x" * 80)
    finally:
        engine.close()


def test_generation_budget_is_clamped_to_the_room_left(small_ctx: LlamaEngine) -> None:
    conv = small_ctx.open(no_eog(small_ctx))
    conv.feed_user("y" * 200)
    room = small_ctx.n_ctx - conv.n_tokens
    gen = conv.generate(max_tokens=500)
    assert (gen.stop_reason, gen.n_tokens) == ("max_tokens", room)
    with pytest.raises(EngineError, match="context is full"):
        conv.generate(max_tokens=1)


# --- image sizing -------------------------------------------------------------------------------------


def test_mtmd_keeps_the_smart_resize_grid(tiny_pair: TinyPair, images: dict[str, Path]) -> None:
    options = EngineOptions(n_ctx=2048, image_max_tokens=64, reserve_tokens=0, n_threads=2)
    engine = LlamaEngine.load(tiny_pair.model, tiny_pair.mmproj, options=options)
    try:
        assert engine.image_sizing.max_pixels == 64 * 28 * 28
        plain = engine.open()
        plain.feed_user("AB")
        base = plain.n_tokens
        conv = engine.open()
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # a grid mismatch would warn
            conv.feed_user(f"A{IMAGE_MARKER}B", [images["wide"]])
        # 4000x3000 with a 64-token budget: smart_resize gives 252x168 px = 9x6 = 54 tokens,
        # plus <|vision_start|> and <|vision_end|>.
        (image,) = [item for item in conv.token_stream() if not isinstance(item, int)]
        assert (image.width, image.height) == (252, 168)
        assert conv.n_tokens == base + 2 + 54
    finally:
        engine.close()


# --- chat templates -------------------------------------------------------------------------------------

NOT_CHATML = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "### {{ 'model' if message['role'] == 'assistant' else message['role'] }}:\n"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for p in message['content'] %}{% if p['type'] == 'text' %}{{ p['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}<|endoftext|>\n{% endfor %}{% if add_generation_prompt %}### model:\n{% endif %}"
)


@pytest.fixture(scope="module")
def templated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaEngine]:
    """A tiny model whose GGUF template is NOT ChatML: no system role, trims content,
    ends turns with <|endoftext|> (Gemma-like)."""
    out = tmp_path_factory.mktemp("templated")
    model = write_text_model(out / "model.gguf", chat_template=NOT_CHATML)
    mmproj = write_qwen25vl_projector(out / "mmproj.gguf")
    engine = LlamaEngine.load(model, mmproj, options=EXACT)
    yield engine
    engine.close()


def test_a_non_chatml_model_uses_its_own_template(templated: LlamaEngine, images: dict[str, Path]) -> None:
    assert templated.chat_format == "template"
    conv = templated.open(no_eog(templated))
    conv.feed_system("Be brief.")
    conv.feed_user(f"{IMAGE_MARKER} what?", [images["photo"]])
    assert conv.text == f"<|endoftext|>### user:\nBe brief.\n\n{IMAGE_MARKER} what?<|endoftext|>\n### model:\n"
    gen = conv.generate(max_tokens=6)
    conv.feed_user("More?")
    assert conv.text.endswith("<|endoftext|>\n### user:\nMore?<|endoftext|>\n### model:\n")
    assert gen.text.strip() in conv.text


def test_a_template_that_rewrites_history_rolls_the_context_back_correctly(
    templated: LlamaEngine, images: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    encodes = _count_calls(monkeypatch, "mtmd_encode_chunk")
    conv = templated.open(no_eog(templated))
    conv.feed_user(f"{IMAGE_MARKER} what?", [images["photo"]])
    # (a system prompt kept from the previous question on this engine is cut back here: not ours)
    before = conv.counters.rollbacks
    # The template trims assistant content, so these spaces vanish once the turn is closed:
    # the re-rendered text diverges inside the context, image included.
    conv.feed_assistant(f"  see {IMAGE_MARKER}  ", [images["crop"]])
    conv.generate(max_tokens=4)
    assert conv.counters.rollbacks == before
    conv.feed_user("and now?")
    assert conv.counters.rollbacks == before + 1
    assert "### model:\nsee " in conv.text and "\n  see" not in conv.text
    assert len(encodes) == 2 == conv.counters.images_encoded  # the cut image was not encoded again
    incremental, stream = conv.logits(), conv.token_stream()
    scratch = templated.open()
    scratch.evaluate_stream(stream)
    assert float(np.abs(scratch.logits() - incremental).max()) < 1e-4


def test_the_templates_end_of_turn_token_stops_generation(templated: LlamaEngine) -> None:
    conv = templated.open(force(templated, "<|endoftext|>"))
    conv.feed_user("Hi")
    assert conv.generate(max_tokens=5).stop_reason == "end_of_turn"


def test_chatml_and_the_ggufs_chatml_template_give_the_same_tokens(
    tiny_pair: TinyPair, images: dict[str, Path]
) -> None:
    streams = []
    for fmt in ("chatml", "template"):
        engine = LlamaEngine.load(
            tiny_pair.model, tiny_pair.mmproj, options=EngineOptions(n_ctx=2048, reserve_tokens=0, chat_format=fmt)
        )
        try:
            assert engine.chat_format == fmt
            conv = engine.open(force(engine, "a"))
            conv.feed_system("sys")
            conv.feed_user(f"{IMAGE_MARKER} q", [images["small"]])
            conv.generate(max_tokens=3)
            conv.feed_user("again")
            streams.append(
                [item if isinstance(item, int) else (item.width, item.height) for item in conv.token_stream()]
            )
            assert conv.counters.rollbacks == 0
        finally:
            engine.close()
    assert streams[0] == streams[1]


# --- loading and API errors -----------------------------------------------------------------------------


def test_loading_errors_are_one_line_engine_errors(
    tiny_pair: TinyPair, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    text_file = tmp_path / "notes.gguf"
    text_file.write_text("not a model")
    bad_proj = write_qwen25vl_projector(tmp_path / "mmproj-32.gguf", proj_dim=32)
    cases = [
        (tmp_path / "missing.gguf", tiny_pair.mmproj, "model file not found"),
        (text_file, tiny_pair.mmproj, "not a GGUF file"),
        (tiny_pair.mmproj, tiny_pair.model, "is a vision projector, not a language model"),
        (tiny_pair.model, tiny_pair.model, "not a vision projector"),
        (tiny_pair.model, bad_proj, "does not match"),
    ]
    for model, mmproj, message in cases:
        with pytest.raises(EngineError, match=message) as info:
            LlamaEngine.load(model, mmproj)
        assert "\n" not in info.value.message
        assert info.value.hint
    engine = LlamaEngine.load(tiny_pair.model, tiny_pair.mmproj, options=EngineOptions(n_ctx=512))
    engine.close()
    engine.close()  # twice is fine
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # llama.cpp's logs stay quiet unless verbose
    with pytest.raises(EngineError, match="closed"):
        engine.open()


def test_misuse_of_the_conversation_api_is_reported(exact: LlamaEngine, images: dict[str, Path]) -> None:
    conv = exact.open()
    with pytest.raises(EngineError, match="needs an open assistant turn"):
        conv.generate(max_tokens=3)
    with pytest.raises(EngineError, match="needs an open assistant turn"):
        conv.feed_assistant("hi")
    with pytest.raises(EngineError, match="1 image marker"):
        conv.feed_user(f"{IMAGE_MARKER}", [])
    conv.feed_user("hi")
    with pytest.raises(EngineError, match="first feed"):
        conv.feed_system("late")
    with pytest.raises(EngineError, match="max_tokens"):
        conv.generate(max_tokens=0)
    exact.open()
    with pytest.raises(EngineError, match="closed"):
        conv.feed_user("old conversation")
