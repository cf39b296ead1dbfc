"""One benchmark question, and the prompt a model sees for it.

The multiple-choice prompt follows upstream Thyme's VLMEvalKit wrapper (the prompt the paper's
numbers were measured with): an optional "Hint:" line, "Question: ...", "Options:" with one
"X. text" line per option, then the instruction to pick one (in Chinese when the text is Chinese).
A question without options gets upstream's instruction for its benchmark type (no hint line there):
yes/no benchmarks " Please answer yes or no." (not MME), the others (VQA) a line asking for short
words or phrases (not MMVet).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

MCQ_EN_PROMPT = "Please select the correct answer from the options above."
MCQ_CN_PROMPT = "请直接回答选项字母。"
VQA_PROMPT = "\nPlease try to answer the question with short words or phrases if possible."
YORN_PROMPT = " Please answer yes or no."
_CJK_RE = re.compile("[\u4e00-\u9fff]")


@dataclass(frozen=True)
class EvalItem:
    id: str
    image: str  # a file path (TSV images are decoded into the eval's work dir)
    question: str  # as in the benchmark
    options: dict[str, str] = field(default_factory=dict)  # letter -> text, in order
    answer: str | None = None  # a letter when there are options, else free text
    category: str | None = None
    l2_category: str | None = None
    hint: str | None = None
    instruction: str = ""  # appended to a question without options (upstream's VQA / yes-no suffix)

    @property
    def prompt(self) -> str:
        return build_prompt(self.question, self.options, self.hint, self.instruction)

    def side_record(self) -> dict[str, Any]:
        """What scoring needs later, kept next to the results (the prompt is in the results)."""
        record = asdict(self)
        record.pop("image")
        return record


def build_prompt(question: str, options: dict[str, str], hint: str | None = None, instruction: str = "") -> str:
    """The question text for the model; a question without options gets ``instruction`` (as upstream,
    without the hint), or stays as it is when there is none."""
    if not options:
        if instruction:
            return question + instruction
        return f"Hint: {hint}\n{question}" if hint else question
    lines = [f"Hint: {hint}"] if hint else []
    lines.append(f"Question: {question}")
    lines.append("Options:")
    lines.extend(f"{letter}. {text}" for letter, text in options.items())
    text = "\n".join(lines) + "\n"
    return (text + (MCQ_CN_PROMPT if _CJK_RE.search(text) else MCQ_EN_PROMPT)).rstrip()


def fingerprint(items: list[EvalItem]) -> str:
    """A content hash of the questions and answers: the same benchmark anywhere gives the same value."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(json.dumps([item.id, item.question, item.options, item.answer], ensure_ascii=False).encode())
    return digest.hexdigest()[:16]


def open_question_instruction(benchmark_name: str, items: list[EvalItem]) -> str:
    """Upstream's suffix for the benchmark's questions without options: yes/no when every such
    question's answer is yes or no (VLMEvalKit's Y/N type; none for MME), else the VQA one (none
    for MMVet)."""
    answers = [(item.answer or "").strip().lower() for item in items if not item.options]
    if not answers:
        return ""
    if all(a in ("yes", "no") for a in answers):
        return "" if "mme" in benchmark_name.lower() else YORN_PROMPT
    return "" if "mmvet" in benchmark_name.lower() else VQA_PROMPT
