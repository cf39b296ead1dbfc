"""VLMEvalKit benchmark TSVs: index, base64 image, question, option columns A, B, ..., answer, category.

V*, HRBench and MME-RealWorld ship in this format. Rows may carry their image as base64, as a
path (``image_path``), or as the ``index`` of another row whose image they share (HRBench does
this). Files can be many GB, so rows are streamed and only the images of the wanted items
(this shard) are decoded to files; a second pass fetches images shared from rows read earlier or
later. Every way a file can be wrong is one clear error naming the row.
"""

from __future__ import annotations

import ast
import base64
import binascii
import csv
import hashlib
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from thyme_cli.errors import UsageError
from thyme_cli.eval.items import EvalItem

REQUIRED = ("index", "question")
# pandas reads these cells as NaN; VLMEvalKit then treats the option as absent.
_MISSING = frozenset({"", "nan", "none", "null", "n/a", "na", "#n/a", "<na>"})
_MAGIC = (
    (b"\xff\xd8\xff", ".jpg"),
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"II*\x00", ".tiff"),
    (b"MM\x00*", ".tiff"),
    (b"BM", ".bmp"),
)
_OPTION_LINE_RE = re.compile(r"^\s*\(?([A-Z])[).:]\s*(.*)$", re.DOTALL)
REF_MAX_CHARS = 64  # VLMEvalKit: an image cell this short names another row's index


@dataclass
class _Row:
    number: int  # 1-based, header excluded
    item: EvalItem
    image: str  # base64 data, a short reference, or "" (then path is set)
    path: str | None


def missing(value: str | None) -> bool:
    return value is None or value.strip().lower() in _MISSING


def norm_index(value: str) -> str:
    """'12', ' 12 ', '12.0' are the same index (pandas may have written ints as floats)."""
    text = value.strip()
    return str(int(float(text))) if re.fullmatch(r"-?\d+\.0+", text) else text


def _raise_field_limit() -> None:
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:
            limit //= 2


def _rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """The data rows as dicts keyed by (lowercased, except option letters) column name."""
    _raise_field_limit()
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter="\t")
            header = next(reader, None)
            if not header or len(header) < 2:
                raise UsageError(
                    f"{path}: not a TSV file (no tab-separated header row)",
                    hint="a VLMEvalKit TSV starts with: index, image, question, A, B, ..., answer",
                )
            names = [
                h.strip() if re.fullmatch(r"[A-Z]", h.strip()) else h.strip().lower().replace("_", "-") for h in header
            ]
            absent = [c for c in REQUIRED if c not in names]
            if "image" not in names and "image-path" not in names:
                absent.append("image")
            if absent:
                raise UsageError(
                    f"{path}: missing column(s) {', '.join(absent)}",
                    hint="a VLMEvalKit TSV has index, image, question, A, B, ..., answer, category",
                )
            for number, row in enumerate(reader, 1):
                if not row:
                    continue
                if len(row) != len(names):
                    raise UsageError(f"{path}: row {number} has {len(row)} fields, the header has {len(names)}")
                yield number, dict(zip(names, row, strict=True))
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text; is it a TSV?") from None
    except csv.Error as e:
        raise UsageError(f"{path}: not a readable TSV ({e})") from None
    except OSError as e:
        raise UsageError(f"{path}: cannot read it ({e.strerror})") from None


def _options(row: dict[str, str], where: str) -> dict[str, str]:
    letters = sorted(k for k in row if re.fullmatch(r"[A-Z]", k))
    options = {k: row[k].strip() for k in letters if not missing(row[k])}
    if options or missing(row.get("multi-choice options")):
        return options
    return _options_from_list(row["multi-choice options"], where)


def _options_from_list(cell: str, where: str) -> dict[str, str]:
    """MME-RealWorld(-Lite) keeps options as a list like "['(A) red', '(B) blue']" or as lines."""
    text = cell.strip()
    try:
        entries = ast.literal_eval(text) if text.startswith("[") else text.splitlines()
    except (ValueError, SyntaxError):
        raise UsageError(f"{where}: cannot read the 'multi-choice options' cell") from None
    options: dict[str, str] = {}
    for entry in entries if isinstance(entries, list) else []:
        match = _OPTION_LINE_RE.match(str(entry))
        if match:
            options[match.group(1)] = match.group(2).strip()
    return options


def answer_letter(raw: str | None, options: dict[str, str], where: str) -> str | None:
    """The expected letter; an option's exact text is accepted too. Unknown letters are an error."""
    if missing(raw):
        return None
    assert raw is not None
    text = raw.strip()
    if not options:
        return text
    bare = text.strip("()[]. ").upper()
    if len(bare) == 1 and bare.isalpha():
        if bare not in options:
            raise UsageError(f"{where}: the answer {text!r} is not one of the options {', '.join(options)}")
        return bare
    by_text = [k for k, v in options.items() if v.strip().lower() == text.lower()]
    if len(by_text) == 1:
        return by_text[0]
    raise UsageError(f"{where}: the answer {text!r} is not an option letter ({', '.join(options)})")


def _item(path: Path, number: int, row: dict[str, str]) -> _Row:
    index = norm_index(row["index"])
    where = f"{path}: row {number} (index {index or '?'})"
    if not index:
        raise UsageError(f"{path}: row {number} has an empty index")
    if missing(row["question"]):
        raise UsageError(f"{where}: the question is empty")
    options = _options(row, where)
    image = (row.get("image") or "").strip()
    image_path = None if missing(row.get("image-path")) else row["image-path"].strip()
    if image.startswith("[") or (image_path or "").startswith("["):
        raise UsageError(f"{where}: several images per question are not supported")
    if not image and not image_path:
        raise UsageError(f"{where}: no image (the image and image_path cells are empty)")
    item = EvalItem(
        id=index,
        image="",
        question=row["question"].strip(),
        options=options,
        answer=answer_letter(row.get("answer"), options, where),
        category=None if missing(row.get("category")) else row["category"].strip(),
        l2_category=None if missing(row.get("l2-category")) else row["l2-category"].strip(),
        hint=None if missing(row.get("hint")) else row["hint"].strip(),
    )
    return _Row(number, item, image if len(image) <= REF_MAX_CHARS else "<data>", image_path)


def read_tsv(
    path: Path, images_dir: Path, wanted: Callable[[str], bool] | None = None, *, limit: int | None = None
) -> list[EvalItem]:
    """The items of the TSV (the first ``limit``), the images of the ``wanted`` ids (default: all) as files."""
    want = wanted or (lambda _id: True)
    rows: list[_Row] = []
    files: dict[str, str] = {}  # index -> decoded image file
    seen: set[str] = set()
    for number, raw in _rows(path):
        if limit is not None and len(rows) >= limit:
            break
        row = _item(path, number, raw)
        if row.item.id in seen:
            raise UsageError(f"{path}: row {number}: duplicate index {row.item.id!r}")
        seen.add(row.item.id)
        if row.image == "<data>" and want(row.item.id):
            files[row.item.id] = _write_image(
                raw["image"], images_dir, row.item.id, f"{path}: row {number} (index {row.item.id})"
            )
        rows.append(row)
    by_id = {r.item.id: r for r in rows}
    sources = _image_sources(path, rows)
    needed = {sources[r.item.id] for r in rows if want(r.item.id) and by_id[sources[r.item.id]].image} - set(files)
    if needed:  # shared images from rows that were not themselves wanted: read those rows again
        for number, raw in _rows(path):
            index = norm_index(raw["index"])
            if index in needed:
                files[index] = _write_image(raw["image"], images_dir, index, f"{path}: row {number} (index {index})")
    items = []
    for row in rows:
        source = by_id[sources[row.item.id]]
        if not want(row.item.id):
            image = ""
        elif source.image:
            image = files[source.item.id]
        else:
            image = _existing(path, source)
        items.append(replace(row.item, image=image))
    return items


def _image_sources(path: Path, rows: list[_Row]) -> dict[str, str]:
    """Which row's image each row uses: its own, or the one its short image cell names (by index)."""
    by_id = {r.item.id: r for r in rows}
    sources: dict[str, str] = {}
    for row in rows:
        target, hops = row, 0
        while target.image not in ("<data>", "") and norm_index(target.image) in by_id:
            if hops >= 8 or norm_index(target.image) == target.item.id:
                raise UsageError(f"{path}: row {row.number} (index {row.item.id}): image references form a loop")
            target, hops = by_id[norm_index(target.image)], hops + 1
        if target.image not in ("<data>", ""):
            target.image = "<data>"  # a short cell naming no row: a (tiny) image of its own
        sources[row.item.id] = target.item.id
    return sources


def _existing(path: Path, row: _Row) -> str:
    assert row.path is not None
    image = Path(row.path).expanduser()
    image = image if image.is_absolute() else path.parent / image
    if not image.is_file():
        raise UsageError(f"{path}: row {row.number} (index {row.item.id}): image_path {row.path}: no such file")
    return str(image)


def decode_image(data: str, where: str) -> tuple[bytes, str]:
    """Base64 (optionally a data: URI) to image bytes and a file suffix."""
    text = data.strip()
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        raw = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise UsageError(f"{where}: the image is not valid base64") from None
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return raw, ".webp"
    for magic, suffix in _MAGIC:
        if raw.startswith(magic):
            return raw, suffix
    raise UsageError(f"{where}: the image is not a PNG, JPEG, WebP, TIFF or BMP file")


def _write_image(data: str, images_dir: Path, index: str, where: str) -> str:
    """Decode one image to images_dir; an identical file from an earlier run is kept as it is."""
    raw, suffix = decode_image(data, where)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", index)[:60]
    if stem != index:
        stem += "-" + hashlib.sha256(index.encode()).hexdigest()[:8]
    target = images_dir / f"{stem}{suffix}"
    if not (target.is_file() and target.stat().st_size == len(raw)):
        images_dir.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        partial.write_bytes(raw)
        partial.replace(target)
    return str(target)
