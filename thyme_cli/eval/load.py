"""Reading a benchmark file: a VLMEvalKit TSV or a JSONL manifest, into EvalItems.

A JSONL manifest is one object per line: ``image`` (a path, relative to the manifest), ``question``,
and optionally ``options`` (a list, or an object letter -> text), ``answer`` (a letter, or an
option's text), ``category``, ``hint`` and ``id`` (default: the line number).
"""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from thyme_cli.batch.inputs import jsonl_objects
from thyme_cli.errors import UsageError
from thyme_cli.eval.items import EvalItem, open_question_instruction
from thyme_cli.eval.tsv import answer_letter, read_tsv

SUFFIXES = (".tsv", ".jsonl")


def load_benchmark(
    path: Path, images_dir: Path, wanted: Callable[[str], bool] | None = None, *, limit: int | None = None
) -> list[EvalItem]:
    """The items of a benchmark file (the first ``limit``); the images of the wanted ids are ready as files."""
    if not path.is_file():
        raise UsageError(f"{path}: no such file" if not path.exists() else f"{path} is not a file")
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        items = read_tsv(path, images_dir, wanted, limit=limit)
    elif suffix == ".jsonl":
        items = read_manifest(path)[:limit]
    else:
        raise UsageError(f"{path}: expected a VLMEvalKit .tsv or a .jsonl manifest")
    if not items:
        raise UsageError(f"{path}: the benchmark has no items")
    instruction = open_question_instruction(path.stem, items)  # upstream's VQA / yes-no suffix
    return [replace(item, instruction=instruction) if not item.options and instruction else item for item in items]


def read_manifest(path: Path) -> list[EvalItem]:
    items: list[EvalItem] = []
    seen: set[str] = set()
    for number, row in jsonl_objects(path):
        item = _manifest_item(path, number, row)
        if item.id in seen:
            raise UsageError(f"{path}:{number}: duplicate id {item.id!r}")
        seen.add(item.id)
        items.append(item)
    return items


def _text(value: Any) -> str | None:
    return None if value is None or str(value).strip() == "" else str(value).strip()


def _manifest_item(path: Path, number: int, row: dict[str, Any]) -> EvalItem:
    where = f"{path}:{number}"
    image, question = _text(row.get("image")), _text(row.get("question"))
    if image is None or question is None:
        raise UsageError(f"{where}: each line needs 'image' and 'question'")
    image_path = Path(image).expanduser()
    image_path = image_path if image_path.is_absolute() else path.parent / image_path
    if not image_path.is_file():
        raise UsageError(f"{where}: image {image}: no such file")
    options = _manifest_options(row.get("options"), where)
    answer = row.get("answer", row.get("expected"))
    return EvalItem(
        id=_text(row.get("id")) or str(number),
        image=str(image_path),
        question=question,
        options=options,
        answer=answer_letter(_text(answer), options, where),
        category=_text(row.get("category")),
        l2_category=_text(row.get("l2_category", row.get("l2-category"))),
        hint=_text(row.get("hint")),
    )


def _manifest_options(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, list) and len(value) <= 26:
        return {string.ascii_uppercase[i]: str(v).strip() for i, v in enumerate(value)}
    if isinstance(value, dict) and all(isinstance(k, str) and len(k) == 1 and k.isalpha() for k in value):
        return {k.upper(): str(v).strip() for k, v in sorted(value.items())}
    raise UsageError(f'{where}: \'options\' must be a list of texts or an object like {{"A": "..."}}')
