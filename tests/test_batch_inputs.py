"""Batch inputs (directories, globs, manifests, stdin), stable ids, shards, and the JSONL journal."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from thyme_cli.batch.inputs import collect_items, in_shard, parse_shard
from thyme_cli.batch.journal import Journal
from thyme_cli.errors import UsageError


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    for rel in ("b.png", "a.jpg", "sub/c.webp"):
        Image.new("RGB", (8, 8)).save(root / rel)
    (root / "notes.txt").write_text("not an image")
    return root


def test_directory_is_recursive_sorted_and_images_only(photos: Path) -> None:
    items = collect_items([str(photos)], "q?")
    assert [Path(i.image).name for i in items] == ["a.jpg", "b.png", "c.webp"]
    assert all(i.question == "q?" for i in items)
    assert len({i.id for i in items}) == 3


def test_glob_and_stdin(photos: Path) -> None:
    items = collect_items([str(photos / "**" / "*.png")], "q")
    assert [Path(i.image).name for i in items] == ["b.png"]
    stdin = io.StringIO(f"{photos / 'a.jpg'}\n\n{photos / 'b.png'}\n")
    assert [Path(i.image).name for i in collect_items(["-"], "q", stdin=stdin)] == ["a.jpg", "b.png"]


def test_jsonl_and_csv_manifests(photos: Path, tmp_path: Path) -> None:
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text(
        json.dumps({"id": "x1", "image": str(photos / "a.jpg"), "question": "what?", "answer": "B"})
        + "\n"
        + json.dumps({"image": "photos/b.png"})
        + "\n"
    )
    items = collect_items([str(jsonl)], "default q")
    assert (items[0].id, items[0].question, items[0].expected) == ("x1", "what?", "B")
    assert items[1].image == str(tmp_path / "photos" / "b.png") and items[1].question == "default q"

    csv_path = tmp_path / "m.csv"
    csv_path.write_text("image,question,id,answer\nphotos/a.jpg,how many?,r1,3\nphotos/b.png,color?,r2,\n")
    items = collect_items([str(csv_path)], None)
    assert [(i.id, i.question, i.expected) for i in items] == [("r1", "how many?", "3"), ("r2", "color?", None)]


def test_duplicate_images_get_distinct_stable_ids(photos: Path) -> None:
    path = str(photos / "a.jpg")
    ids = [i.id for i in collect_items([path, path], "q")]
    assert ids == [path, path + "#2"]
    assert ids == [i.id for i in collect_items([path, path], "q")]


@pytest.mark.parametrize(
    ("inputs", "question", "message"),
    [(["/no/such/dir"], "q", "no such file"), (["/no/*.png"], "q", "matches no images")],
)
def test_bad_inputs(inputs: list[str], question: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        collect_items(inputs, question)


def test_bad_manifests(tmp_path: Path, photos: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "a.png"}\n{not json\n')
    with pytest.raises(UsageError, match=r"bad.jsonl:2: not valid JSON"):
        collect_items([str(bad)], "q")
    no_q = tmp_path / "noq.jsonl"
    no_q.write_text(json.dumps({"image": str(photos / "a.jpg")}) + "\n")
    with pytest.raises(UsageError, match="no 'question'"):
        collect_items([str(no_q)], None)
    with pytest.raises(UsageError, match="no question"):
        collect_items([str(photos)], None)


def test_shards_partition_the_items() -> None:
    ids = [f"img{i}.png" for i in range(200)]
    shards = [[i for i in ids if in_shard(i, k, 4)] for k in range(1, 5)]
    assert sorted(i for shard in shards for i in shard) == sorted(ids)
    assert all(20 < len(s) < 80 for s in shards)
    assert parse_shard("2/4") == (2, 4)
    for bad in ("0/4", "5/4", "x", "1/0"):
        with pytest.raises(UsageError):
            parse_shard(bad)


def test_journal_refuses_to_overwrite_and_recovers_a_torn_tail(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    out.write_text('{"id": "a"}\n{"id": "b"}\n{"id": "c", "ans')
    with pytest.raises(UsageError, match="already exists"):
        Journal(out, resume=False)
    journal = Journal(out, resume=True)
    assert journal.done_ids == {"a", "b"} and journal.dropped_tail > 0
    journal.append({"id": "c", "answer": "ok"})
    journal.close()
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in lines] == ["a", "b", "c"]


def test_journal_rejects_a_foreign_file(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    out.write_text("hello\n")
    with pytest.raises(UsageError, match="not a thyme batch line"):
        Journal(out, resume=True)
