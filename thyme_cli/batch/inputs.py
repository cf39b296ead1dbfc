"""Where a batch's items come from: directories, globs, JSONL/CSV manifests, or paths on stdin.

Each item gets a stable id (the same inputs always give the same ids), which is what `--resume`
and `--shard` rely on.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from thyme_cli.errors import UsageError
from thyme_cli.question.input_image import IMAGE_EXTENSIONS

MANIFEST_SUFFIXES = (".jsonl", ".csv")


@dataclass(frozen=True)
class Item:
    id: str
    image: str  # as given (resolved for manifests)
    question: str
    expected: str | None = None


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in (*IMAGE_EXTENSIONS, ".pdf")


def _images_in_dir(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and _is_image(p))


def _pages(image: str) -> list[str]:
    """A PDF becomes one input per page (doc.pdf#p1, doc.pdf#p2, ...); anything else stays as it is."""
    if not image.lower().endswith(".pdf"):
        return [image]
    from thyme_cli.question.pdf import page_count

    return [f"{image}#p{n}" for n in range(1, page_count(Path(image)) + 1)]


def _has_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def collect_items(inputs: list[str], question: str | None, stdin: IO[str] | None = None) -> list[Item]:
    """Expand every input into items, in a stable order; ids unique."""
    raw: list[tuple[str, str, str | None, str | None]] = []  # (image, question, id, expected)
    for spec in inputs:
        if spec == "-":
            if stdin is None:
                raise UsageError("'-' reads image paths from stdin, but there is no stdin")
            paths = [line.strip() for line in stdin if line.strip()]
            raw.extend((p, _need_question(question, p), None, None) for p in paths)
            continue
        path = Path(spec).expanduser()
        if path.suffix.lower() in MANIFEST_SUFFIXES and path.is_file():
            raw.extend(_read_manifest(path, question))
        elif path.is_dir():
            found = _images_in_dir(path)
            if not found:
                raise UsageError(f"{spec}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)}, .pdf)")
            raw.extend((str(p), _need_question(question, str(p)), None, None) for p in found)
        elif path.is_file():
            raw.append((spec, _need_question(question, spec), None, None))
        elif _has_glob(spec):
            matches = sorted(m for m in glob.glob(spec, recursive=True) if _is_image(Path(m)) and Path(m).is_file())
            if not matches:
                raise UsageError(f"{spec}: the pattern matches no images")
            raw.extend((m, _need_question(question, m), None, None) for m in matches)
        else:
            raise UsageError(f"{spec}: no such file, directory or manifest")
    if not raw:
        raise UsageError("no items to process")
    return _assign_ids(
        (page, q, (f"{given}#p{page.rsplit('#p', 1)[1]}" if given and page != image else given), e)
        for image, q, given, e in raw
        for page in _pages(image)
    )


def _need_question(question: str | None, image: str) -> str:
    if not question:
        raise UsageError(f"no question for {image}", hint="pass -q QUESTION, or use a manifest with a question column")
    return question


def jsonl_objects(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """The non-blank lines of a JSONL manifest as (line number, object); one clear error per bad line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text") from None
    except OSError as e:
        raise UsageError(f"{path}: cannot read it ({e.strerror})") from None
    rows: list[tuple[int, dict[str, Any]]] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UsageError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise UsageError(f"{path}:{n}: each line must be a JSON object")
        rows.append((n, row))
    return rows


def _read_manifest(path: Path, default_question: str | None) -> list[tuple[str, str, str | None, str | None]]:
    rows: list[dict[str, Any]] = []
    try:
        if path.suffix.lower() == ".jsonl":
            rows = [row for _, row in jsonl_objects(path)]
        else:
            with path.open(encoding="utf-8", newline="") as f:
                reader = csv.DictReader(f)
                if not reader.fieldnames or "image" not in reader.fieldnames:
                    raise UsageError(f"{path}: the CSV needs a header row with an 'image' column")
                rows.extend(reader)
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text") from None
    except OSError as e:
        raise UsageError(f"{path}: cannot read it ({e.strerror})") from None
    out = []
    for n, row in enumerate(rows, 1):
        image = row.get("image")
        if not image:
            raise UsageError(f"{path}: row {n} has no 'image'")
        image_path = Path(str(image)).expanduser()
        if not image_path.is_absolute():
            image_path = path.parent / image_path
        question = row.get("question") or default_question
        if not question:
            raise UsageError(f"{path}: row {n} has no 'question' and no -q was given")
        expected = row.get("answer", row.get("expected"))
        row_id = row.get("id")
        out.append(
            (
                str(image_path),
                str(question),
                str(row_id) if row_id not in (None, "") else None,
                str(expected) if expected not in (None, "") else None,
            )
        )
    return out


def _assign_ids(raw: Iterable[tuple[str, str, str | None, str | None]]) -> list[Item]:
    items: list[Item] = []
    seen: dict[str, int] = {}
    for image, question, given_id, expected in raw:
        base = given_id or image
        if given_id and given_id in seen:
            raise UsageError(f"duplicate id {given_id!r} in the inputs")
        count = seen.get(base, 0)
        seen[base] = count + 1
        item_id = base if count == 0 else f"{base}#{count + 1}"
        items.append(Item(item_id, image, question, expected))
    return items


def parse_shard(text: str) -> tuple[int, int]:
    """'i/N' with 1 <= i <= N."""
    try:
        left, right = text.split("/")
        index, total = int(left), int(right)
    except ValueError:
        raise UsageError(f"--shard {text!r}: expected i/N, e.g. 1/4") from None
    if total < 1 or not 1 <= index <= total:
        raise UsageError(f"--shard {text!r}: i must be between 1 and N")
    return index, total


def in_shard(item_id: str, index: int, total: int) -> bool:
    """A stable split that does not depend on input order: by hash of the item id."""
    digest = hashlib.sha256(item_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % total == index - 1
