"""The settings of the Thyme paper's evaluation, and the eval report's statement of a run's settings.

Read from upstream's evaluation code (yfzhang114/Thyme, eval/VLMEvalKit/vlmeval/vlm/thyme/model.py
and vlmeval/config.py, model "Thyme-7B"): max_iterations 5 code steps, max_new_tokens 2048 per
step, temperature 0.01 with top_k 1 (greedy), a failed code segment discarded and regenerated
(max_retry 5, temperature 1.0 after a failure), images at the processor's pixel limits (OCRBench:
min_pixels 100 x 28 x 28), Thyme's system prompt and user turn. `thyme eval run` uses these unless
told otherwise; the report states what a run used next to them.
"""

from __future__ import annotations

from typing import Any

# (key, label, this value is the paper's, how the paper's evaluation did it)
PAPER_SETTINGS: list[tuple[str, str, Any, str]] = [
    ("tools", "code tools", True, "on (Thyme's system prompt and user turn)"),
    ("max_turns", "code steps per question", 5, "5 (max_iterations)"),
    ("max_tokens", "tokens per step", 2048, "2048 (max_new_tokens)"),
    ("temperature", "temperature", 0.0, "0.01 with top_k 1: greedy"),
    ("on_error", "failed code step", "retry", "discarded and regenerated (max_retry 5)"),
    ("max_image_tokens", "image tokens (max)", None,
     "the checkpoint's processor limit (Qwen2.5-VL's default: 12,845,056 px)"),
    ("min_image_tokens", "image tokens (min)", None,
     "the processor's (3,136 px = 4 tokens); OCRBench: 78,400 px = 100 tokens"),
]

OCRBENCH_MIN_IMAGE_TOKENS = 100  # upstream: item['min_pixels'] = 10 * 10 * 28 * 28 for OCRBench


def paper_min_image_tokens(benchmark_name: str) -> int | None:
    """The minimum image size the paper's evaluation set for this benchmark (None: the default)."""
    return OCRBENCH_MIN_IMAGE_TOKENS if "ocrbench" in benchmark_name.lower() else None


def settings_markdown(settings: dict[str, Any]) -> list[str]:
    """A "Settings" section: what this run used, and the paper's evaluation beside it."""
    lines = ["", "## Settings", "", "| setting | this run | paper's evaluation |", "|---|---|---|"]
    differs = []
    for key, label, paper_value, paper_text in PAPER_SETTINGS:
        if key not in settings:
            continue
        value = settings[key]
        if key == "min_image_tokens":
            paper_value = paper_min_image_tokens(str(settings.get("benchmark", "")))
        shown = "model default" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        same = value == paper_value
        if not same:
            differs.append(label)
        lines.append(f"| {label} | {shown}{'' if same else ' (differs)'} | {paper_text} |")
    lines.append("")
    lines.append("Settings differ from the paper's evaluation: " + ", ".join(differs) + "." if differs
                 else "All settings are those of the paper's evaluation.")
    return lines
