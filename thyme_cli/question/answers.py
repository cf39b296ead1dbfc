"""What counts as an answer: pure functions, no I/O.

Real models copy the prompt's own format line ("Your final answer to the user's question goes
here."), nest tags (``<answer><answer>x</answer>``), leave fences and ``<sandbox_output>`` inside
the answer, or stop with nothing between the tags. None of that is an answer: ``clean_answer``
returns the text a user should see, or None when nothing real is left.
"""

from __future__ import annotations

import re

from thyme_cli.engine.base import IMAGE_MARKER

# The placeholders of the user prompt's "Output Format" lines (protocol.user_prompt, direct_prompt).
PLACEHOLDERS = (
    "Your final answer to the user's question goes here.",
    "Your detailed reasoning process, including any code, should go here.",
    "Your detailed reasoning process should go here.",
)
# Sandbox output, and code BLOCKS (<code> then a line break or a fence); an inline "<code>" in
# prose ("the <code> tag") is part of the answer.
_BLOCKS_RE = re.compile(r"<sandbox_output>[\s\S]*?(?:</sandbox_output>|$)|<code>[ \t]*(?:\n|```)[\s\S]*?(?:</code>|$)",
                        re.IGNORECASE)
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
