"""Which option did the model pick? Free text in, one letter (or none) out.

Models answer multiple-choice questions in many ways: "B", "(B)", "B. red", "Answer: B",
"the answer is b", the option's own text, inside or outside ``<answer>``. Scoring needs one letter,
and a reply that names two options ("A or B") must count as no choice rather than a lucky hit.
The rules run from the most explicit to the least; the first one that decides wins. Everything is
deterministic and local (no judge model), so a score can always be recomputed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from thyme_cli.question.answers import answer_body, normalize

# Rules, in the order they are tried (the name is stored with every scored item).
RULES = ("letter", "declared", "label", "mention", "text")

# The whole answer is one letter, perhaps bracketed or punctuated: "B", "(b)", "**C.**".
_LONE_RE = re.compile(r"""[\s(\[{'"]*([A-Za-z])[\s)\]}'".:,;!]*""")
# The answer starts with an option label: "B. red", "(B) red", "B) red", "C: red", "D - red".
_LABEL_RE = re.compile(r"""\s*(?:[(\[]([A-Za-z])[)\]]|([A-Z])\s*(?:[.:)\]]|-\s)|([a-z])[.)]\s)""")
# "the answer is B", "Answer: (C)", "I choose D", "correct option is b", "答案是B", "选B".
_DECLARED_RE = re.compile(
    r"(?:\b(?:final\s+answer|answer|(?:correct|best|right)\s+(?:answer|option|choice))"
    r"(?:\s+(?:is|would\s+be|should\s+be|must\s+be|will\s+be|=))?"
    r"|\b(?:i\s+(?:would\s+)?(?:choose|select|pick|go\s+with)|(?:chose|chosen|selected|picked))"
    r"|答案\s*(?:是|为|為)?|选择?|選擇?)"
    r"""\s*[:：]?\s*(?:(?:option|choice|选项|選項)\s*)?[*'"(\[]*([A-Za-z])[*'")\]]*(?![A-Za-z0-9])""",
    re.IGNORECASE,
)
_KEYWORD_RE = re.compile(r"\b(?:answer|choose|select|pick|option|choice)\b|答案|选|選", re.IGNORECASE)
# Right after a declared letter: "... is A or B" makes the declaration ambiguous.
_ALT_TAIL_RE = re.compile(
    r"""\s*(?:,|/|&|\bor\b|\band\b|或|和)\s*(?:option\s+)?[(\[]?([A-Za-z])[)\]]?(?![A-Za-z0-9])""", re.IGNORECASE
)
# Two options offered as alternatives anywhere: "A or B", "(A)/(C)", "B and D", "A, B".
_ALTERNATIVES_RE = re.compile(
    r"(?<![A-Za-z0-9])[(\[]?([A-Z])[)\]]?\s*(?:,\s*(?:or|and)?|/|&|\bor\b|\band\b|\bnor\b|或|和)\s*"
    r"(?:option\s+)?[(\[]?([A-Z])[)\]]?(?![A-Za-z0-9])"
)
# A capital letter standing alone: "(B)", "B.", "option C", "D is correct".
_MENTION_RE = re.compile(r"(?<![A-Za-z0-9])([(\[])?([A-Z])([)\]])?(?![A-Za-z0-9])")
# Words after which a bare capital still reads as an option: "B is right" (but "A cat" is an article).
_VERBISH = frozenset(
    {"is", "was", "seems", "looks", "appears", "would", "should", "must", "matches", "fits", "corresponds"}
)


@dataclass(frozen=True)
class Choice:
    """The option picked (None: no choice) and the rule that decided, for the per-item report."""

    letter: str | None
    rule: str  # one of RULES, or "empty", "ambiguous", "unknown letter", "none"


def extract_choice(text: str | None, options: Mapping[str, str]) -> Choice:
    """The option letter a reply picks among ``options`` (letter -> text), or no choice."""
    letters = {k.upper() for k in options}
    body = answer_body(text)
    if not body:
        return Choice(None, "empty")
    lone = _LONE_RE.fullmatch(body)
    if lone:
        letter = lone.group(1).upper()
        return Choice(letter, "letter") if letter in letters else Choice(None, "unknown letter")
    declared, declared_ambiguous = _declared(body, letters)
    if declared_ambiguous or len(declared) > 1:
        return Choice(None, "ambiguous")
    label = _label(body, letters)
    if declared:
        (letter,) = declared
        if label is not None and label != letter:
            return Choice(None, "ambiguous")
        return Choice(letter, "declared")
    if any(a in letters and b in letters and a != b for a, b in _ALTERNATIVES_RE.findall(body)):
        return Choice(None, "ambiguous")
    if label is not None:
        return Choice(label, "label")
    mentioned = _mentions(body, letters)
    if len(mentioned) == 1:
        return Choice(mentioned.pop(), "mention")
    if len(mentioned) > 1:
        return Choice(None, "ambiguous")
    return _by_text(body, options)


def _declared(body: str, letters: set[str]) -> tuple[set[str], bool]:
    """Letters the reply declares as its answer, and whether a declaration offers alternatives."""
    found: set[str] = set()
    ambiguous = False
    for match in _DECLARED_RE.finditer(body):
        raw = match.group(1)
        letter = raw.upper()
        if letter not in letters or _reads_as_word(raw, body[match.end() :]):
            continue
        found.add(letter)
        alt = _ALT_TAIL_RE.match(body, match.end())
        if alt and alt.group(1).upper() in letters and alt.group(1).upper() != letter:
            ambiguous = True
    return found, ambiguous


def _reads_as_word(raw: str, rest: str) -> bool:
    """True when a captured letter is really an English word: "answer is a red car", "I think"."""
    if raw.lower() not in ("a", "i"):
        return False
    following = re.match(r"\s+([a-z]+)", rest)
    return following is not None and following.group(1) not in _VERBISH


def _label(body: str, letters: set[str]) -> str | None:
    match = _LABEL_RE.match(body)
    if not match:
        return None
    letter = next(g for g in match.groups() if g).upper()
    return letter if letter in letters else None


def _mentions(body: str, letters: set[str]) -> set[str]:
    found: set[str] = set()
    for match in _MENTION_RE.finditer(body):
        opened, letter, closed = match.groups()
        if letter not in letters:
            continue
        bracketed = bool(opened and closed)
        before = body[: match.start()].rstrip().lower()
        if not bracketed and not before.endswith(("option", "choice")) and _reads_as_word(letter, body[match.end() :]):
            continue
        found.add(letter)
    return found


def _by_text(body: str, options: Mapping[str, str]) -> Choice:
    """Match the option texts: the whole answer first, then the words after the last "answer"."""
    texts = {k.upper(): normalize(v) for k, v in options.items() if normalize(v)}
    keyword = None
    for keyword in _KEYWORD_RE.finditer(body):  # noqa: B007 (the last one is wanted)
        pass
    tails = [body[keyword.end() :], body] if keyword else [body]
    for tail in tails:
        said = normalize(tail)
        exact = [k for k, v in texts.items() if v == said]
        if len(exact) == 1:
            return Choice(exact[0], "text")
        padded = f" {said} "
        inside = [k for k, v in texts.items() if f" {v} " in padded]
        # "dark red" also contains "red": keep only the longest of nested matches.
        inside = [
            k for k in inside if not any(texts[k] != texts[o] and f" {texts[k]} " in f" {texts[o]} " for o in inside)
        ]
        if len(inside) == 1:
            return Choice(inside[0], "text")
        if len(inside) > 1:
            return Choice(None, "ambiguous")
    return Choice(None, "none")


def matches_free_answer(text: str | None, expected: str) -> bool:
    """Open questions (no options): the normalized answer equals, or contains, the expected words."""
    said, want = normalize(answer_body(text)), normalize(expected)
    return bool(want) and (said == want or f" {want} " in f" {said} ")
