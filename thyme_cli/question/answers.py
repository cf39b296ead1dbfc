"""What counts as an answer: pure functions, no I/O.

Real models copy the prompt's own format line ("Your final answer to the user's question goes
here."), nest tags (``<answer><answer>x</answer>``), leave fences and ``<sandbox_output>`` inside
the answer, or stop with nothing between the tags. None of that is an answer: ``clean_answer``
returns the text a user should see, or None when nothing real is left.
"""

from __future__ import annotations

import re

from thyme_cli.engine.base import IMAGE_MARKER

# The placeholders of the user prompt's "Output Format" lines (prompts.user_prompt, direct_prompt).
PLACEHOLDERS = (
    "Your final answer to the user's question goes here.",
    "Your detailed reasoning process, including any code, should go here.",
    "Your detailed reasoning process should go here.",
)
# Sandbox output, and code BLOCKS (<code> then a line break or a fence); an inline "<code>" in
# prose ("the <code> tag") is part of the answer.
_BLOCKS_RE = re.compile(
    r"<sandbox_output>[\s\S]*?(?:</sandbox_output>|$)|<code>[ \t]*(?:\n|```)[\s\S]*?(?:</code>|$)", re.IGNORECASE
)
_TAGS_RE = re.compile(r"</?(?:think|answer|sandbox_output)\s*>", re.IGNORECASE)
_PY_FENCE_RE = re.compile(r"```[ \t]*(?:python3?|py)[ \t]*\n[\s\S]*?(?:```|$)", re.IGNORECASE)
_FENCE_LINE_RE = re.compile(r"^[ \t]*```[\w+-]*[ \t]*$", re.MULTILINE)
_FILLER_RE = re.compile(r"^[\s.…]*$")


def _normal(text: str) -> str:
    text = text.replace("\u2019", "'")
    return re.sub(r"[\s\"*`]+", " ", text).strip(" .").lower()


_PLACEHOLDER_KEYS = frozenset(_normal(p) for p in PLACEHOLDERS)


def is_placeholder(text: str) -> bool:
    """The prompt's own placeholder text (or just dots), copied back by the model."""
    return _normal(text) in _PLACEHOLDER_KEYS or bool(_FILLER_RE.match(text))


def clean_answer(text: str | None) -> str | None:
    """The answer without tags, code / sandbox blocks, fence lines and image markers; None when
    nothing is left or what is left is a placeholder from the prompt."""
    if text is None:
        return None
    cleaned = _BLOCKS_RE.sub("", text)
    cleaned = _PY_FENCE_RE.sub("", cleaned)
    cleaned = _TAGS_RE.sub("", cleaned)
    cleaned = _FENCE_LINE_RE.sub("", cleaned)
    cleaned = cleaned.replace(IMAGE_MARKER, "").strip()
    if not cleaned or is_placeholder(cleaned):
        return None
    return cleaned


# ---- the answer part of a reply, for comparing answers (samples.py votes, eval/ scores) -----------

_ANY_TAG_RE = re.compile(r"</?(?:think|answer|code|sandbox_output)>", re.IGNORECASE)
_THINK_RE = re.compile(r"<think>[\s\S]*?</think>", re.IGNORECASE)
_CODE_RE = re.compile(r"<code>[\s\S]*?</code>", re.IGNORECASE)
_SANDBOX_RE = re.compile(r"<sandbox_output>[\s\S]*?</sandbox_output>", re.IGNORECASE)
_BOXED_RE = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")
_TEXT_CMD_RE = re.compile(r"\\(?:text|textbf|mathrm)\{([^{}]*)\}")
_MARKDOWN_RE = re.compile(r"\*\*|__|`")


def answer_body(text: str | None) -> str:
    """The part of a reply that is the answer: inside ``<answer>``, without think, code, tags, markdown."""
    if not text:
        return ""
    body = _THINK_RE.sub(" ", text)
    lower = body.lower()
    start = lower.rfind("<answer>")
    if start >= 0:
        body = body[start + len("<answer>") :]
        end = body.lower().find("</answer>")
        body = body[:end] if end >= 0 else body
    else:
        end = lower.find("</answer>")
        body = body[:end] if end >= 0 else body
        think_end = body.lower().rfind("</think>")  # an unclosed think opened before the answer
        body = body[think_end + len("</think>") :] if think_end >= 0 else body
    body = _SANDBOX_RE.sub(" ", _CODE_RE.sub(" ", body))
    boxed = _BOXED_RE.findall(body)
    if boxed:
        body = boxed[-1]
    body = _TEXT_CMD_RE.sub(r"\1", body)
    body = _ANY_TAG_RE.sub(" ", body).replace("<__media__>", " ")
    body = _MARKDOWN_RE.sub("", body)
    return " ".join(body.split())


def normalize(text: str) -> str:
    """Lowercase words only, for comparing an answer with an option's text."""
    return " ".join(re.findall(r"\w+", text.lower()))
