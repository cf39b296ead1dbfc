"""Where an eval keeps what scoring needs, next to the results file.

For results ``X.jsonl`` (written by the batch machinery, one line per item) the eval's work dir is
``X.eval/``: ``meta.json`` (benchmark, fingerprint, tools on/off), ``items.jsonl`` (per id: options,
answer, category; the side table), ``images/`` (decoded TSV images), and after scoring
``scored.jsonl``, ``summary.json`` and ``report.md``. Keeping the side table out of the batch lines
means `thyme batch` needs no eval-specific fields, and a results file can be re-scored at any time.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thyme_cli.errors import UsageError
from thyme_cli.eval.items import EvalItem

META_VERSION = 1


@dataclass(frozen=True)
class EvalPaths:
    results: Path

    @property
    def work(self) -> Path:
        return self.results.with_name(self.results.name.removesuffix(".jsonl") + ".eval")

    @property
    def meta(self) -> Path:
        return self.work / "meta.json"

    @property
    def items(self) -> Path:
        return self.work / "items.jsonl"

    @property
    def images(self) -> Path:
        return self.work / "images"

    @property
    def scored(self) -> Path:
        return self.work / "scored.jsonl"

    @property
    def summary(self) -> Path:
        return self.work / "summary.json"

    @property
    def report(self) -> Path:
        return self.work / "report.md"


@dataclass
class SideTable:
    meta: dict[str, Any]
    items: dict[str, dict[str, Any]]  # id -> EvalItem.side_record(), in benchmark order


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def check_resumable(paths: EvalPaths, items: list[EvalItem], *, tools: bool) -> None:
    """Refuse to append to results of another benchmark or of the other tools mode.

    Compared item by item (question, options, answer), so a resume with a larger --limit is fine.
    """
    if not paths.meta.is_file() or not paths.items.is_file():
        return
    old = read_side_table(paths)
    if bool(old.meta.get("tools", True)) != tools:
        was = "with tools" if old.meta.get("tools", True) else "with --no-tools"
        raise UsageError(
            f"{paths.results} was run {was}; resuming it in the other mode would mix the two", hint="choose another -o"
        )
    new = {item.id: item.side_record() for item in items}
    common = old.items.keys() & new.keys()
    if (old.items and not common) or any(old.items[i] != new[i] for i in common):
        raise UsageError(
            f"{paths.results} holds results of another benchmark ({old.meta.get('benchmark')})",
            hint="choose another -o for this benchmark",
        )


def write_side_table(paths: EvalPaths, items: list[EvalItem], meta: dict[str, Any]) -> None:
    lines = "".join(json.dumps(item.side_record(), ensure_ascii=False) + "\n" for item in items)
    _write_atomic(paths.items, lines)
    _write_atomic(paths.meta, json.dumps({"version": META_VERSION, **meta}, indent=2, ensure_ascii=False) + "\n")


def read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{path}: cannot read the eval's metadata ({e})") from None
    if not isinstance(meta, dict):
        raise UsageError(f"{path}: not an eval metadata file")
    return meta


def read_side_table(paths: EvalPaths) -> SideTable:
    if not paths.items.is_file() or not paths.meta.is_file():
        raise UsageError(
            f"{paths.results}: no eval data next to it (expected {paths.work}/)",
            hint="results of `thyme eval` keep it there; else pass --benchmark FILE to score against",
        )
    items: dict[str, dict[str, Any]] = {}
    for n, line in enumerate(paths.items.read_text(encoding="utf-8").splitlines(), 1):
        try:
            record = json.loads(line)
            items[str(record["id"])] = record
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UsageError(f"{paths.items}:{n}: damaged side table line") from None
    return SideTable(read_meta(paths.meta), items)


def side_table_from_items(items: list[EvalItem], meta: dict[str, Any]) -> SideTable:
    return SideTable(meta, {item.id: item.side_record() for item in items})


def read_results(path: Path) -> list[dict[str, Any]]:
    """The result lines; a torn last line (a run killed mid-write) is skipped, other damage is an error."""
    try:
        data = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: cannot read it ({e})") from None
    lines = data.split("\n")
    complete, tail = lines[:-1], lines[-1]
    records = []
    for n, line in enumerate(complete, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise UsageError(f"{path}:{n}: not a JSON line; is this a thyme eval/batch results file?") from None
        if not isinstance(record, dict) or "id" not in record:
            raise UsageError(f"{path}:{n}: not a thyme eval/batch result (no 'id')")
        records.append(record)
    if tail.strip():
        try:
            record = json.loads(tail)
            if isinstance(record, dict) and "id" in record:
                records.append(record)
        except json.JSONDecodeError:
            pass  # torn by an interrupted run; --resume redoes that item
    return records


def write_json(path: Path, data: Any) -> None:
    _write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_lines(path: Path, rows: list[dict[str, Any]]) -> None:
    _write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
