"""Reading the chosen option out of free text: many phrasings, ambiguity, never a letter that is not offered."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thyme_cli.eval.extract import Choice, answer_body, extract_choice, matches_free_answer

OPTIONS = {"A": "red car", "B": "blue car", "C": "dark red car", "D": "12"}


@pytest.mark.parametrize(
    ("reply", "letter", "rule"),
    [
        ("B", "B", "letter"),
        ("(b)", "B", "letter"),
        ("**C.**", "C", "letter"),
        ("  D  ", "D", "letter"),
        ("B. blue car", "B", "label"),
        ("(B) blue", "B", "label"),
        ("C: dark red car", "C", "label"),
        ("Answer: B", "B", "declared"),
        ("the answer is b", "B", "declared"),
        ("The answer is (C).", "C", "declared"),
        ("The correct option is D because there are twelve.", "D", "declared"),
        ("I choose D", "D", "declared"),
        ("Option A shows red, option B shows blue. The answer is B.", "B", "declared"),
        ("Between A and B, I pick B", "B", "declared"),
        ("答案是B", "B", "declared"),
        ("<think>maybe A</think><answer>B</answer>", "B", "letter"),
        (
            "<think>I will crop</think><code>print(1)</code><sandbox_output>A</sandbox_output><answer>C</answer>",
            "C",
            "letter",
        ),
        ("<answer>C", "C", "letter"),  # cut off by the token budget
        ("\n</think>\n<answer>B", "B", "letter"),  # what the forced final turn leaves
        ("reasoning...</think> D", "D", "letter"),
        ("\\boxed{C}", "C", "letter"),
        ("The answer is $\\boxed{\\text{A}}$", "A", "letter"),
        ("I think it is B", "B", "mention"),
        ("A is correct", "A", "mention"),
        ("blue car", "B", "text"),
        ("It is the dark red car", "C", "text"),  # the longest nested option wins
        ("There are 12", "D", "text"),
        ("The answer is a red car", "A", "text"),  # "a" is an article here, not option A
    ],
)
def test_phrasings(reply: str, letter: str, rule: str) -> None:
    assert extract_choice(reply, OPTIONS) == Choice(letter, rule)


@pytest.mark.parametrize(
    ("reply", "rule"),
    [
        ("A or B", "ambiguous"),
        ("The answer is A or B", "ambiguous"),
        ("(A)/(C)", "ambiguous"),
        ("B and D", "ambiguous"),
        ("B, but maybe C", "ambiguous"),
        ("A. The answer is B.", "ambiguous"),
        ("red car or blue car", "ambiguous"),
        ("E", "unknown letter"),
        ("F.", "unknown letter"),
        ("", "empty"),
        ("<think>A</think><answer></answer>", "empty"),
        ("I cannot tell from this image.", "none"),
        ("The car is blue.", "none"),  # not an option's full text
    ],
)
def test_no_choice(reply: str, rule: str) -> None:
    assert extract_choice(reply, OPTIONS) == Choice(None, rule)


def test_none_reply_is_empty() -> None:
    assert extract_choice(None, OPTIONS) == Choice(None, "empty")


def test_answer_body_strips_think_code_and_markdown() -> None:
    assert answer_body("<think>x</think>**Answer:** `B`") == "Answer: B"
    assert answer_body("<think>a</think><answer> the <b>cat</b> </answer> trailing") == "the <b>cat</b>"


def test_free_answers_match_by_words() -> None:
    assert matches_free_answer("<answer>The sign says STOP.</answer>", "stop")
    assert matches_free_answer("Stop", "STOP")
    assert not matches_free_answer("stopped", "stop")
    assert not matches_free_answer(None, "stop")


# ---- properties ----------------------------------------------------------------------------

TEMPLATE_WORDS = {
    "the",
    "answer",
    "option",
    "choice",
    "correct",
    "choose",
    "final",
    "and",
    "but",
    "not",
    "looking",
    "closely",
    "visible",
    "think",
    "box",
    "boxed",
    "text",
    "pick",
    "select",
    "one",
}
WORD = st.text(alphabet="bcdefghjklmnopqrstuvwxyz", min_size=3, max_size=9).filter(lambda w: w not in TEMPLATE_WORDS)


@st.composite
def option_sets(draw: st.DrawFn) -> dict[str, str]:
    n = draw(st.integers(2, 6))
    words = draw(st.lists(WORD, min_size=n, max_size=n, unique=True))
    # Distinct normalized texts that do not contain each other as words.
    return {"ABCDEF"[i]: w for i, w in enumerate(words)}


LETTER_TEMPLATES = [
    "{L}",
    "({L})",
    "{L}.",
    "{l}",
    "({l})",
    "**{L}**",
    "[{L}]",
    "{L}. {T}",
    "({L}) {T}",
    "{L}) {T}",
    "{L}: {T}",
    "Answer: {L}",
    "answer: {l}",
    "ANSWER: {L}",
    "The answer is {L}.",
    "the answer is {l}",
    "The answer is ({L})",
    "The correct option is ({L}).",
    "The best answer is {L}",
    "I choose {L}",
    "I would go with {L}.",
    "Final answer: {L}",
    "So the final answer is **{L}**.",
    "\\boxed{{{L}}}",
    "答案是{L}",
    "答案：{L}",
    "Looking closely, the {T} is visible. So the answer is {L}.",
    "Option {L}",
    "{L} is correct",
    "{T}",
    "{TU}!",
    "The answer is {T}.",
    "It is {T}",
    "the answer is: {T}",
]
WRAPPERS = [
    "{x}",
    "<answer>{x}</answer>",
    "<think>Let me zoom in first.</think><answer>{x}</answer>",
    "<think>hmm</think>\n<answer>\n{x}\n</answer>",
    "  {x}  ",
    "<think>check the options</think>{x}",
]


@settings(max_examples=400, deadline=None)
@given(options=option_sets(), data=st.data())
def test_every_phrasing_of_one_option_gives_that_option(options: dict[str, str], data: st.DataObject) -> None:
    letter = data.draw(st.sampled_from(sorted(options)))
    template = data.draw(st.sampled_from(LETTER_TEMPLATES))
    wrapper = data.draw(st.sampled_from(WRAPPERS))
    text = options[letter]
    reply = wrapper.format(x=template.format(L=letter, l=letter.lower(), T=text, TU=text.upper()))
    assert extract_choice(reply, options).letter == letter, reply


AMBIGUOUS_TEMPLATES = [
    "{A} or {B}",
    "Either ({A}) or ({B})",
    "{A}/{B}",
    "The answer is {A} or {B}",
    "{A} and {B}",
    "({A}) and ({B}) are both plausible",
    "{TA} or {TB}",
    "I choose {A}. The answer is {B}.",
]


@settings(max_examples=200, deadline=None)
@given(options=option_sets(), data=st.data())
def test_two_options_at_once_give_no_choice(options: dict[str, str], data: st.DataObject) -> None:
    first, second = data.draw(st.lists(st.sampled_from(sorted(options)), min_size=2, max_size=2, unique=True))
    template = data.draw(st.sampled_from(AMBIGUOUS_TEMPLATES))
    reply = template.format(A=first, B=second, TA=options[first], TB=options[second])
    assert extract_choice(reply, options).letter is None, reply


@settings(max_examples=300, deadline=None)
@given(options=option_sets(), reply=st.text(max_size=80))
def test_never_a_letter_that_is_not_offered(options: dict[str, str], reply: str) -> None:
    choice = extract_choice(reply, options)
    assert choice.letter is None or choice.letter in options
    assert (choice.letter is None) == (choice.rule not in ("letter", "declared", "label", "mention", "text"))
