"""The settings of the Thyme paper's evaluation, and the eval report's statement of a run's settings.

Read from upstream's evaluation code (yfzhang114/Thyme, eval/VLMEvalKit/vlmeval/vlm/thyme/model.py
and vlmeval/config.py, model "Thyme-7B"): max_iterations 5 code steps, max_new_tokens 2048 per
step, temperature 0.01 with top_k 1 (greedy), a failed code segment discarded and regenerated
(max_retry 5, temperature 1.0 after a failure), images at the processor's pixel limits (OCRBench:
min_pixels 100 x 28 x 28), Thyme's system prompt and user turn. `thyme eval run` uses these unless
told otherwise; the report states what a run used next to them.

Image limits: config.py's "Thyme-7B" passes no min_pixels/max_pixels, so every image goes through
qwen_vl_utils' defaults (4 x 28 x 28 .. 16384 x 28 x 28 px) and the Qwen2.5-VL processor's
(3,136 .. 12,845,056 px, the same 4 .. 16,384 tokens); only OCRBench sets min_pixels (100 tokens)
and keeps the default maximum. One image token is a 28 x 28 px patch.

Retrying (model.py, generate_inner_transformers): a code step that yields no image/text result is
rolled back (KV cache and variables) and the turn is generated again, and that attempt COUNTS as one
of the 5 iterations. The "temperature 1.0" it sets after some failures does not change the output:
top_k stays 1 (and top_p 0.001), so generation stays greedy. After 5 iterations without an answer
the whole question is started again (up to max_retry 5 times, still greedy), then asked once more
with a plain prompt (no tools). thyme's --on-error retry differs (docs/eval.md says how).
"""

from __future__ import annotations

from typing import Any

# (key, label, this value is the paper's, how the paper's evaluation did it)
PAPER_SETTINGS: list[tuple[str, str, Any, str]] = [
    ("tools", "code tools", True, "on (Thyme's system prompt and user turn)"),
    ("max_turns", "code steps per question", 5, "5 (max_iterations)"),
    ("max_tokens", "tokens per step", 2048, "2048 (max_new_tokens)"),
    ("temperature", "temperature", 0.0, "0.01 with top_k 1: greedy"),
    (
        "on_error",
        "failed code step",
        "retry",
        "rolled back and regenerated greedily; each attempt is one of the 5 iterations",
    ),
    (
        "max_image_tokens",
        "image tokens (max)",
        16384,
        "16,384 (12,845,056 px: qwen_vl_utils' and the processor's default)",
    ),
    ("min_image_tokens", "image tokens (min)", 4, "4 (3,136 px); OCRBench: 100 (78,400 px)"),
]

PAPER_MAX_IMAGE_TOKENS = 16384  # upstream: no max_pixels given -> 16384 * 28 * 28 (qwen_vl_utils MAX_PIXELS)
PAPER_MIN_IMAGE_TOKENS = 4  # upstream: no min_pixels given -> 4 * 28 * 28 (qwen_vl_utils MIN_PIXELS)
OCRBENCH_MIN_IMAGE_TOKENS = 100  # upstream: item['min_pixels'] = 10 * 10 * 28 * 28 for OCRBench


def paper_min_image_tokens(benchmark_name: str) -> int:
    """The minimum image size (in 28 x 28 px tokens) the paper's evaluation used for this benchmark."""
    return OCRBENCH_MIN_IMAGE_TOKENS if "ocrbench" in benchmark_name.lower() else PAPER_MIN_IMAGE_TOKENS


def paper_image_tokens(benchmark_name: str, max_image_tokens: int | None = None) -> tuple[int, int]:
    """(min, max) image tokens for an eval of this benchmark: the paper's, or the maximum asked for
    (--max-image-tokens); the minimum never exceeds the maximum."""
    hi = max_image_tokens if max_image_tokens is not None else PAPER_MAX_IMAGE_TOKENS
    return min(paper_min_image_tokens(benchmark_name), hi), hi


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
            paper_text = f"{paper_value} ({paper_value * 28 * 28:,} px)"
        shown = "model default" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        same = value == paper_value
        if not same:
            differs.append(label)
        lines.append(f"| {label} | {shown}{'' if same else ' (differs)'} | {paper_text} |")
    lines.append("")
    lines.append(
        "Settings differ from the paper's evaluation: " + ", ".join(differs) + "."
        if differs
        else "All settings are those of the paper's evaluation."
    )
    return lines


def eval_context(ctx: int | None, max_image_tokens: int, max_turns: int, max_tokens: int) -> int | None:
    """The context for an eval: --ctx when given; else room for the input image and one step's
    image at the full image budget plus every turn's tokens (the paper's model had 128k positions),
    or None (the model's own) when that is no more than 16,384."""
    if ctx is not None:
        return ctx
    need = 2 * max_image_tokens + max_turns * max_tokens + 1024  # 1024: system prompt and question
    need = -(-need // 1024) * 1024
    return need if need > 16384 else None
