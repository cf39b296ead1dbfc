"""The engine's pure-Python parts: stop/code scanning, UTF-8 pieces, GGUF headers, chat renderers."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from thyme_cli.devtools.tiny_gguf import CHATML_TEMPLATE, TinyPair
from thyme_cli.engine.base import IMAGE_MARKER
from thyme_cli.engine.llama.chat import ChatMLRenderer, Message, TemplateRenderer
from thyme_cli.engine.llama.gguf_meta import read_gguf_keys
from thyme_cli.engine.textstream import TurnScanner, Utf8Pieces, without_observations
from thyme_cli.errors import EngineError

# --- TurnScanner -------------------------------------------------------------------------------


def _scan(pieces: list[str]) -> list[tuple[str | None, bool]]:
    scanner = TurnScanner()
    return [(scanner.feed(p), scanner.in_code) for p in pieces]


def test_code_state_follows_tags_split_across_pieces() -> None:
    got = _scan(["I will crop. <co", "de>```py", "thon\nx=1\n```</c", "ode>", " after"])
    assert [in_code for _, in_code in got] == [False, True, True, False, False]
    assert [stop for stop, _ in got] == [None, None, None, "code", None]


def test_a_stop_string_is_reported_once_at_the_piece_that_completes_it() -> None:
    assert [s for s, _ in _scan(["<answer>B</ans", "wer>", "\n", "x"])] == [None, "answer", None, None]
    # Characters after the stop string in the same piece do not hide it.
    assert _scan(["<answer>B</answer>\nmore"])[0][0] == "answer"


def test_opening_and_closing_in_one_piece() -> None:
    scanner = TurnScanner()
    assert scanner.feed("<code>x</code><code>y") == "code"
    assert scanner.in_code  # the later <code> reopens the block
    scanner.reset()
    assert not scanner.in_code


def test_sandbox_outputs_are_not_the_models_text() -> None:
    text = "<code>x</code><sandbox_output>printed <code> and <answer></sandbox_output>\nthen"
    assert without_observations(text) == "<code>x</code>\nthen"
    assert without_observations("<SANDBOX_OUTPUT>a</sandbox_output>b") == "b"
    assert without_observations("<sandbox_output>unclosed <code>") == "<sandbox_output>unclosed <code>"


@given(text=st.text(alphabet="<>/codeanswrx ", max_size=80), cuts=st.lists(st.integers(0, 80), max_size=8))
def test_scanning_is_independent_of_how_text_is_split(text: str, cuts: list[int]) -> None:
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
    whole, split = TurnScanner(), TurnScanner()
    first_whole = whole.feed(text)
    stops = [s for s in (split.feed(p) for p in pieces) if s is not None]
    assert whole.in_code == split.in_code
    assert (stops[0] if stops else None) == first_whole


# --- UTF-8 pieces -------------------------------------------------------------------------------


def test_multibyte_characters_split_across_tokens_are_held_back() -> None:
    u = Utf8Pieces()
    data = "é€😀".encode()
    out = []
    pending = []
    for b in data:
        out.append(u.decode(bytes([b])))
        pending.append(u.pending)
    assert "".join(out) == "é€😀"
    assert out[0] == "" and pending[0]  # first byte of é alone is not text yet
    assert not pending[-1]


def test_a_cut_character_is_flushed_as_replacement() -> None:
    u = Utf8Pieces()
    assert u.decode(b"ok\xe2\x82") == "ok"
    assert u.flush() == "\ufffd"
    assert u.decode(b"a") == "a"


# --- GGUF headers -------------------------------------------------------------------------------


def test_gguf_header_keys_are_read(tiny_pair: TinyPair) -> None:
    meta = read_gguf_keys(
        tiny_pair.mmproj,
        [
            "general.architecture",
            "clip.projector_type",
            "clip.vision.patch_size",
            "clip.vision.projection_dim",
            "no.such.key",
        ],
    )
    assert meta == {
        "general.architecture": "clip",
        "clip.projector_type": "qwen2.5vl_merger",
        "clip.vision.patch_size": 14,
        "clip.vision.projection_dim": 64,
        "no.such.key": None,
    }
    assert read_gguf_keys(tiny_pair.model, ["general.architecture"]) == {"general.architecture": "qwen2vl"}


def test_non_gguf_truncated_and_missing_files_are_engine_errors(tmp_path: Path, tiny_pair: TinyPair) -> None:
    (tmp_path / "x.gguf").write_text("hello")
    with pytest.raises(EngineError, match="not a GGUF file"):
        read_gguf_keys(tmp_path / "x.gguf", ["a"])
    (tmp_path / "cut.gguf").write_bytes(tiny_pair.mmproj.read_bytes()[:200])
    with pytest.raises(EngineError, match="truncated or corrupt"):
        read_gguf_keys(tmp_path / "cut.gguf", ["no.such.key"])
    with pytest.raises(EngineError, match="not found"):
        read_gguf_keys(tmp_path / "nope.gguf", ["a"])


# --- chat renderers -----------------------------------------------------------------------------


def _conversation() -> list[Message]:
    return [
        Message("system", "Be exact."),
        Message("user", f"{IMAGE_MARKER}\nWhat is it?"),
        Message("assistant", "<code>print(1)</code><sandbox_output>1</sandbox_output>A cat."),
        Message("user", "Sure?"),
    ]


def test_chatml_renders_qwen25vl_format_with_default_system() -> None:
    r = ChatMLRenderer()
    assert r.render([Message("user", "hi")], add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    text = r.render(_conversation(), add_generation_prompt=False)
    assert text.startswith("<|im_start|>system\nBe exact.<|im_end|>\n<|im_start|>user\n<__media__>\nWhat is it?")
    assert "You are a helpful assistant." not in text


def test_the_tiny_models_chatml_template_renders_like_the_python_chatml() -> None:
    jinja = TemplateRenderer(CHATML_TEMPLATE)
    python = ChatMLRenderer(default_system=None)
    for n in range(1, 5):
        msgs = _conversation()[:n]
        assert jinja.render(msgs, add_generation_prompt=True) == python.render(msgs, add_generation_prompt=True)


GEMMA_LIKE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "<start>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for p in message['content'] %}{% if p['type'] == 'text' %}{{ p['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}<end>\n{% endfor %}{% if add_generation_prompt %}<start>model\n{% endif %}"
)


def test_a_template_without_system_role_gets_system_text_in_the_first_user_turn() -> None:
    r = TemplateRenderer(GEMMA_LIKE, bos_token="<bos>")
    assert not r.system_role
    text = r.render(_conversation()[:2], add_generation_prompt=True)
    assert text == f"<bos><start>user\nBe exact.\n\n{IMAGE_MARKER}\nWhat is it?<end>\n<start>model\n"


def test_content_style_is_probed_per_role() -> None:
    string_only = (
        "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}[a]{% endif %}"
    )
    r = TemplateRenderer(string_only)
    assert r.styles == {"user": "string", "assistant": "string", "system": "string"}
    assert r.render([Message("user", "x")], add_generation_prompt=True) == "[user]x[a]"
    parts_only = (
        "{% for m in messages %}[{{ m['role'] }}]{% for p in m['content'] %}{{ p['text'] }}{% endfor %}{% endfor %}"
    )
    assert TemplateRenderer(parts_only).styles["user"] == "parts"


def test_template_errors_are_engine_errors() -> None:
    with pytest.raises(EngineError, match="does not parse"):
        TemplateRenderer("{% for %}")
    alternating = (
        "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('roles must alternate') }}{% endif %}{{ m['content'] }}{% endfor %}"
    )
    r = TemplateRenderer(alternating)
    with pytest.raises(EngineError, match="roles must alternate"):
        r.render([Message("user", "a"), Message("user", "b")], add_generation_prompt=True)


# --- options ---------------------------------------------------------------------------------------


def test_engine_options_from_a_registry_entry() -> None:
    from thyme_cli.engine.settings import EngineOptions
    from thyme_cli.models.registry import load_registry

    spec = load_registry().get("thyme-7b")
    options = EngineOptions.from_spec(spec)
    assert (options.n_ctx, options.image_min_tokens, options.image_max_tokens) == (
        spec.n_ctx,
        spec.image_min_tokens,
        spec.image_max_tokens,
    )
    lowered = EngineOptions.from_spec(spec, n_ctx=4096, max_image_tokens=2, n_threads=3)
    assert (lowered.n_ctx, lowered.image_max_tokens, lowered.n_threads) == (4096, 2, 3)
    assert lowered.token_limits == (2, 2)  # a max below the model's min pulls the min down


def test_bad_option_values_are_usage_errors() -> None:
    from thyme_cli.engine.settings import EngineOptions, SamplingOptions
    from thyme_cli.errors import UsageError

    for bad in ({"temperature": -1}, {"top_p": 0}, {"top_k": -2}, {"min_p": 1.0}, {"seed": -1}):
        with pytest.raises(UsageError):
            SamplingOptions(**bad)  # type: ignore[arg-type]
    for bad_engine in ({"n_ctx": 10}, {"image_resize": "big"}, {"kv_cache_type": "q2"}, {"n_threads": 0}):
        with pytest.raises(UsageError):
            EngineOptions(**bad_engine)  # type: ignore[arg-type]
    assert SamplingOptions().greedy and not SamplingOptions(temperature=0.7).greedy
