"""A synthetic VLMEvalKit-style benchmark: small text in large images, multiple choice.

It exercises every part of the TSV format the real benchmarks use (base64 images, a row sharing
another row's image by index, an empty option cell, hints, category and l2-category), and the
task is the one Thyme's tools are for: the answer is only readable after zooming in. Tests use it
with scripted models; `python -m thyme_cli.eval.synth out.tsv` writes one to try `thyme eval`.
"""

from __future__ import annotations

import base64
import csv
import io
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

WORDS = (
    "maple",
    "cedar",
    "birch",
    "aspen",
    "alder",
    "larch",
    "hazel",
    "rowan",
    "holly",
    "olive",
    "cherry",
    "walnut",
    "spruce",
    "willow",
    "poplar",
    "laurel",
    "myrtle",
    "acacia",
    "juniper",
    "linden",
    "sequoia",
    "cypress",
    "hemlock",
    "magnolia",
)
HEADER = ("index", "image", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category")
WORD_QUESTION = "Which word is written in small letters somewhere in the image?"
NUMBER_QUESTION = "Which number is printed in the image?"
NUMBER_HINT = "The number is printed in black."


@dataclass(frozen=True)
class SynthItem:
    index: str
    category: str
    options: dict[str, str]
    answer: str  # the correct letter
    truth: str  # the text drawn in the image
    box: tuple[int, int, int, int]  # where it is drawn (left, top, right, bottom)
    shares_image_of: str | None = None

    @property
    def answer_line(self) -> str:
        """The prompt's line for the correct option, unique per item ("B. maple")."""
        return f"{self.answer}. {self.truth}"


def _image(text: str, size: tuple[int, int], rng: random.Random) -> tuple[str, tuple[int, int, int, int]]:
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", size, (250, 250, 245))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    x, y = rng.randrange(40, size[0] - 120), rng.randrange(40, size[1] - 40)
    draw.text((x, y), text, fill=(0, 0, 0), font=font)
    left, top, right, bottom = (int(v) for v in draw.textbbox((x, y), text, font=font))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode(), (left, top, right, bottom)


class _Rows:
    """The benchmark as it is written: items (the ground truth) and their TSV rows, in order."""

    def __init__(self, rng: random.Random, letter_for: Callable[[str, int], str] | None) -> None:
        self.rng, self.letter_for = rng, letter_for
        self.items: list[SynthItem] = []
        self.rows: list[list[str]] = []

    def add(
        self,
        category: str,
        truth: str,
        distractors: list[str],
        texts: tuple[str, str, str],  # question, hint, image (base64, or the index of a row to share)
        box: tuple[int, int, int, int],
        shares: str | None = None,
    ) -> None:
        """One item; its correct option goes where letter_for says, else at a random letter."""
        question, hint, image = texts
        letters = "ABCD"[: len(distractors) + 1]
        i = sum(1 for it in self.items if it.category == category)
        answer = self.letter_for(category, i) if self.letter_for else self.rng.choice(letters)
        options_texts = list(distractors)
        options_texts.insert(letters.index(answer), truth)
        options = dict(zip(letters, options_texts, strict=True))
        index = str(len(self.items) + 1)
        self.items.append(SynthItem(index, category, options, answer, truth, box, shares))
        cells = [options.get(k, "") for k in "ABCD"]
        kind = "text" if category == "word" else "digits"
        self.rows.append([index, image, question, hint, *cells, answer, category, kind])


def write_synthetic_tsv(
    path: Path,
    *,
    per_category: int = 3,
    size: tuple[int, int] = (1600, 1200),
    seed: int = 0,
    letter_for: Callable[[str, int], str] | None = None,
) -> list[SynthItem]:
    """Write the TSV; return the ground truth. ``letter_for(category, i)`` fixes where the answer goes."""
    rng = random.Random(seed)
    words = rng.sample(WORDS, per_category * 4)
    numbers = rng.sample(range(100, 999), per_category * 3)
    table = _Rows(rng, letter_for)
    for i in range(per_category):
        truth, *others = words[4 * i : 4 * i + 4]
        image, box = _image(truth, size, rng)
        table.add("word", truth, others, (WORD_QUESTION, "", image), box)
    first = table.items[0]  # HRBench-style: one more question on an earlier row's image, by index
    others = [w for w in first.options.values() if w != first.truth][::-1]
    table.add("word", first.truth, others, (WORD_QUESTION + " ", "", first.index), first.box, shares=first.index)
    for i in range(per_category):
        truth, *others = (str(n) for n in numbers[3 * i : 3 * i + 3])
        image, box = _image(truth, size, rng)
        table.add("number", truth, others, (NUMBER_QUESTION, NUMBER_HINT, image), box)  # three options: no D
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(HEADER)
        writer.writerows(table.rows)
    return table.items


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m thyme_cli.eval.synth OUT.tsv")
    items = write_synthetic_tsv(Path(sys.argv[1]))
    print(f"wrote {len(items)} items to {sys.argv[1]}")


if __name__ == "__main__":
    main()
