"""The Thyme prompt format and reply parsing: pure functions, no I/O.

The wording and layout of the system prompt and the user turn are exactly those Thyme was trained
and evaluated with (upstream `eval/utils.py`), because a fine-tuned model is sensitive to them.
Observations go back inside the assistant turn for Thyme weights (as in its RL training) and as a
user turn for general VLMs (protocol "generic").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from thyme_cli.engine.base import IMAGE_MARKER

SYSTEM_PROMPT = """You are a helpful assistant.

Solve the following problem step by step, and optionally write Python code for image manipulation to enhance your reasoning process. The Python code will be executed by an external sandbox, and the processed image or result (wrapped in <sandbox_output></sandbox_output>) can be returned to aid your reasoning and help you arrive at the final answer.

**Reasoning & Image Manipulation (Optional but Encouraged):**
    * You have the capability to write executable Python code to perform image manipulations (e.g., cropping to a Region of Interest (ROI), resizing, rotation, adjusting contrast) or perform calculation for better reasoning.
    * The code will be executed in a secure sandbox, and its output will be provided back to you for further analysis.
    * All Python code snippets **must** be wrapped as follows:
    <code>
    ```python
    # your code.
    ```
    </code>
    * At the end of the code, print the path of the processed image (processed_path) or the result for further processing in a sandbox environment."""

# What we add for models not trained on Thyme, so they know the tags and where answers go.
GENERIC_SUFFIX = """

When you have enough information, give your final answer wrapped as <answer>...</answer>."""

# Forced openings of the final turn when the step budget is spent: every run ends with an answer.
FINAL_ANSWER_PREFIX = "\n</think>\n<answer>"
FINAL_ANSWER_REQUEST = (
    "You have no code steps left. Based on everything above, give your final answer now, "
    "wrapped as <answer>...</answer>."
)

# Upstream's code-block pattern, except that a language tag is dropped only where it is one: after
# a fence, or alone on the first line. Upstream's `(?:python\s*)?` also eats the start of code such
# as `python_version = 3`, and `py` must never be cut from `pyramid_volume = ...` or `py = 3`.
_LANG_TAG = r"(?:```[ \t]*(?:(?:python3?|py)(?![\w.]))?[ \t]*\n?|(?:python3?|py)[ \t]*\n)?"
_CODE_RE = re.compile(r"<code>\s*" + _LANG_TAG + r"([\s\S]*?)\s*(?:```\s*)?</code>", re.IGNORECASE)
_OPEN_CODE_RE = re.compile(r"<code>\s*" + _LANG_TAG + r"([\s\S]*)$", re.IGNORECASE)
_FENCE_RE = re.compile(r"```[ \t]*(?:python|py)[ \t]*\n([\s\S]*?)```", re.IGNORECASE)
_ANSWER_RE = re.compile(r"<answer>([\s\S]*?)</answer>", re.IGNORECASE)
_OPEN_ANSWER_RE = re.compile(r"<answer>([\s\S]*)$", re.IGNORECASE)
_THINK_RE = re.compile(r"<think>([\s\S]*?)(?:</think>|$)", re.IGNORECASE)
_TAG_RE = re.compile(r"</?(?:think|answer|code|sandbox_output)>", re.IGNORECASE)


DIRECT_SYSTEM_PROMPT = "You are a helpful assistant."


def system_prompt(protocol: str, *, tools: bool = True) -> str:
    """The system prompt for a protocol ("thyme" gets upstream's text unchanged).

    Without tools (the ablation) the model is not told about code at all.
    """
    if not tools:
        return DIRECT_SYSTEM_PROMPT
    return SYSTEM_PROMPT if protocol == "thyme" else SYSTEM_PROMPT + GENERIC_SUFFIX


def direct_prompt(question: str) -> str:
    """The user turn of the no-tools ablation: the same output format, no path, no code."""
    return (
        f"{IMAGE_MARKER}<image>\n{question}\n\n"
        "### **Output Format (strict adherence required):**\n\n"
        "<think>Your detailed reasoning process should go here.</think>\n"
        "<answer>Your final answer to the user's question goes here.</answer>\n"
    )


def user_prompt(question: str, image_path: str, width: int, height: int) -> str:
    """The first user turn: the image, the question, the image's path and size as the code sees it.

    Upstream puts the image before a text that itself starts with the literal ``<image>`` line; we
    keep both. The size is the ORIGINAL file's size, because the model's crop code runs on that file.
    """
    return (
        f"{IMAGE_MARKER}<image>\n{question}\n\n"
        f'### User Image Path:** "{image_path}"\n'
        f'### User Image Size:** "{width}x{height}"\n\n'
        "### **Output Format (strict adherence required):**\n\n"
        "<think>Your detailed reasoning process, including any code, should go here.</think>\n"
        "<answer>Your final answer to the user's question goes here.</answer>\n"
    )


def observation(*, n_images: int, stdout: str, error: str | None) -> str:
    """The text of a ``<sandbox_output>`` block: one image marker per new image, else the text.

    As in training, when the step produced images the model sees the images; otherwise it sees what
    the code printed, and the error when the code failed.
    """
    if n_images:
        body = IMAGE_MARKER * n_images
    else:
        parts = [stdout.strip()] if stdout.strip() else []
        if error:
            parts.append(f"Error:\n{error.strip()}")
        body = "\n".join(parts) if parts else "(the code printed nothing and produced no image)"
    return f"<sandbox_output>{body}</sandbox_output>"


def repeated_code_observation(step: int) -> str:
    """What the model is told when it writes the previous step's code again (it is not re-run)."""
    return (
        f"<sandbox_output>This code is identical to step {step}'s, so it was not run again: "
        f"its result is above. Change the code, or give your final answer.</sandbox_output>"
    )


def _is_inline(text: str, match: re.Match[str]) -> bool:
    """A ``<code>x</code>`` after prose on the same line, with no line break or fence inside: a
    mention in prose ("the <code>img</code> variable"), not a code block."""
    body = text[match.start() : match.end()]
    if "\n" in body or "```" in body:
        return False
    line_start = text.rfind("\n", 0, match.start()) + 1
    return bool(text[line_start : match.start()].strip())


def _code_blocks(text: str, start: int = 0) -> list[re.Match[str]]:
    """The complete code blocks of ``text`` from ``start``, inline mentions left out."""
    return [m for m in _CODE_RE.finditer(text, start) if not _is_inline(text, m)]


@dataclass(frozen=True)
class Reply:
    """What one model segment contains. Every field is optional: parsing never fails."""

    think: str | None = None
    code: str | None = None  # the first complete code block
    code_truncated: bool = False  # a code block was opened but never closed
    extra_code_blocks: int = 0  # further complete blocks in the same segment (not executed)
    answer: str | None = None
    answer_truncated: bool = False  # <answer> opened but not closed (e.g. token budget)


def parse_reply(text: str, *, lenient_fences: bool = False) -> Reply:
    """Extract think / code / answer from one generated segment.

    ``lenient_fences`` also accepts a bare ```python fence as code (general VLMs often omit the
    ``<code>`` tags). Text after ``</answer>`` is ignored. An inline ``<code>x</code>`` in a line of
    prose is not code.
    """
    answer_match = _ANSWER_RE.search(text)
    blocks = _code_blocks(text)
    code_match = blocks[0] if blocks else None
    # A live engine stops at whichever closes first, so that one is what the model meant to do.
    if answer_match and not (code_match and code_match.end() <= answer_match.start()):
        before_answer = text[: answer_match.start()]
        return Reply(think=_think(before_answer), answer=answer_match.group(1).strip())
    if code_match:
        later = len(blocks) - 1
        return Reply(
            think=_think(text[: code_match.start()]), code=code_match.group(1).strip("\n"), extra_code_blocks=later
        )
    if lenient_fences:
        fences = _FENCE_RE.findall(text)
        if fences:
            return Reply(think=_think(text), code=fences[0].strip("\n"), extra_code_blocks=len(fences) - 1)

    open_answer = _OPEN_ANSWER_RE.search(text)
    if open_answer:
        partial = open_answer.group(1).strip()
        return Reply(think=_think(text[: open_answer.start()]), answer=partial or None, answer_truncated=True)
    blanked = text
    for m in reversed([m for m in _CODE_RE.finditer(text) if _is_inline(text, m)]):
        # an inline mention is not an unclosed block either
        blanked = blanked[: m.start()] + " " * (m.end() - m.start()) + blanked[m.end() :]
    open_code = _OPEN_CODE_RE.search(blanked)
    return Reply(think=_think(text), code_truncated=open_code is not None)


def _think(text: str) -> str | None:
    match = _THINK_RE.search(text)
    body = match.group(1) if match else text
    for block in reversed(_code_blocks(body)):
        body = body[: block.start()] + body[block.end() :]
    body = _TAG_RE.sub("", body).strip()
    return body or None


def without_code(text: str, placeholder: str = "") -> str:
    """The text with each complete code block replaced by ``placeholder`` (for showing prose)."""
    return _CODE_RE.sub(placeholder, text)


def untagged_answer(text: str) -> str | None:
    """A last resort for models that never use ``<answer>``: the visible text without code or tags."""
    cleaned = _CODE_RE.sub("", text)
    cleaned = re.sub(r"<sandbox_output>[\s\S]*?</sandbox_output>", "", cleaned, flags=re.IGNORECASE)
    cleaned = _TAG_RE.sub("", cleaned).replace(IMAGE_MARKER, "").strip()
    return cleaned or None
