"""The Thyme prompt format and the reply parser (pure functions; property-based where it matters)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thyme_cli.engine.base import IMAGE_MARKER
from thyme_cli.question.prompts import (
    SYSTEM_PROMPT,
    observation,
    parse_reply,
    system_prompt,
    untagged_answer,
    user_prompt,
)


def test_user_prompt_is_upstreams_layout() -> None:
    text = user_prompt("What is the serial number?", "/data/in.png", 1280, 960)
    assert text.startswith(IMAGE_MARKER + "<image>\nWhat is the serial number?\n\n")
    assert '### User Image Path:** "/data/in.png"\n' in text
    assert '### User Image Size:** "1280x960"\n' in text
    assert text.endswith("<answer>Your final answer to the user's question goes here.</answer>\n")
    assert text.count(IMAGE_MARKER) == 1


def test_system_prompt_thyme_is_verbatim_and_generic_adds_answer_tags() -> None:
    assert system_prompt("thyme") == SYSTEM_PROMPT
    assert "<sandbox_output></sandbox_output>" in SYSTEM_PROMPT
    assert system_prompt("generic").startswith(SYSTEM_PROMPT)
    assert "<answer>" in system_prompt("generic")


def test_observation_images_text_and_errors() -> None:
    assert observation(n_images=2, stdout="/x.png\n", error=None) == (
        f"<sandbox_output>{IMAGE_MARKER}{IMAGE_MARKER}</sandbox_output>"
    )
    assert observation(n_images=0, stdout="area = 42\n", error=None) == "<sandbox_output>area = 42</sandbox_output>"
    failed = observation(n_images=0, stdout="", error="NameError: name 'x' is not defined")
    assert "NameError" in failed and failed.startswith("<sandbox_output>")
    assert "printed nothing" in observation(n_images=0, stdout="  ", error=None)


CROP = "<think>Let me zoom.\n<code>\n```python\nimg = Image.open(image_path)\nprint(1)\n```\n</code>"


def test_code_block_with_fence() -> None:
    reply = parse_reply(CROP)
    assert reply.code == "img = Image.open(image_path)\nprint(1)"
    assert reply.think == "Let me zoom."
    assert reply.answer is None and not reply.code_truncated


def test_code_without_fence_and_unclosed_code() -> None:
    assert parse_reply("<code>print(2)</code>").code == "print(2)"
    cut = parse_reply("<think>hm <code>\n```python\nimg.crop((1,2,")
    assert cut.code is None and cut.code_truncated


def test_bare_fence_only_in_lenient_mode() -> None:
    text = "I will crop.\n```python\nprint(3)\n```\n"
    assert parse_reply(text).code is None
    assert parse_reply(text, lenient_fences=True).code == "print(3)"


def test_several_blocks_first_runs_and_the_rest_are_counted() -> None:
    reply = parse_reply("<code>a=1</code>\nthen\n<code>\nb=2\n</code>\nand\n<code>\n```python\nc=3\n```\n</code>")
    assert reply.code == "a=1" and reply.extra_code_blocks == 2


def test_inline_code_in_prose_is_not_a_code_block() -> None:
    reply = parse_reply(
        "In HTML, the <code>code</code> tag marks <code>inline</code> code.\n<answer>inline code</answer>"
    )
    assert reply.code is None and reply.answer == "inline code"
    assert reply.think == "In HTML, the code tag marks inline code."
    prose_then_block = parse_reply("Use <code>img</code> here:\n<code>\n```python\nprint(img.size)\n```\n</code>")
    assert prose_then_block.code == "print(img.size)" and prose_then_block.extra_code_blocks == 0


def test_answer_without_think_and_text_after_answer() -> None:
    reply = parse_reply("<answer> B </answer> trailing words <code>x</code>")
    assert reply.answer == "B" and reply.code is None and reply.think is None


def test_code_closed_before_answer_wins() -> None:
    reply = parse_reply("<code>print(1)</code><answer>guess</answer>")
    assert reply.code == "print(1)" and reply.answer is None


def test_truncated_answer_and_empty_output() -> None:
    cut = parse_reply("<think>ok</think><answer>The number is 12")
    assert cut.answer == "The number is 12" and cut.answer_truncated
    empty = parse_reply("")
    assert (empty.code, empty.answer, empty.think, empty.code_truncated) == (None, None, None, False)


def test_untagged_answer_strips_code_and_tags() -> None:
    assert untagged_answer("<think>x</think> It is 7. <code>print(1)</code>") == "x It is 7."
    assert untagged_answer("<code>print(1)</code>") is None


TAGS = ["<think>", "</think>", "<code>", "</code>", "<answer>", "</answer>", "```python\n", "```", "\n", " "]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(TAGS), st.text(max_size=12)), max_size=30).map("".join))
def test_parser_never_crashes_and_only_returns_parts_of_the_input(text: str) -> None:
    for lenient in (False, True):
        reply = parse_reply(text, lenient_fences=lenient)
        if reply.code is not None:
            assert reply.code in text
            assert not reply.code_truncated
        if reply.answer is not None:
            assert reply.answer in text
        if reply.code is not None and reply.answer is not None:
            raise AssertionError("a reply is either code or an answer, never both")
        assert reply.extra_code_blocks >= 0
        untagged_answer(text)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200), st.text(max_size=200).filter(lambda s: "</answer>" not in s.lower()))
def test_a_closed_answer_is_always_found(prefix: str, answer: str) -> None:
    text = prefix.replace("<", "(") + "<answer>" + answer.replace("<", "(") + "</answer>"
    assert parse_reply(text).answer == answer.replace("<", "(").strip()


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        ("<code>\npyramid_volume = 3\nprint(pyramid_volume)\n</code>", "pyramid_volume = 3\nprint(pyramid_volume)"),
        ("<code>\npy = 3\n</code>", "py = 3"),
        ("<code>\npython_version = 3\n</code>", "python_version = 3"),
        ("<code>\n```python\npython_version = 3\n```\n</code>", "python_version = 3"),
        ("<code>\n```py\npy = 3\n```\n</code>", "py = 3"),
        ("<code>\n```\npyx = 1\n```\n</code>", "pyx = 1"),
        ("<code>```pyramid = 1```</code>", "pyramid = 1"),
        ("<code>\npython\nx = 2\n</code>", "x = 2"),
    ],
)
def test_only_a_fence_language_tag_is_dropped(reply: str, code: str) -> None:
    assert parse_reply(reply).code == code
    assert parse_reply(reply.removesuffix("</code>").rstrip("`\n")).code_truncated
