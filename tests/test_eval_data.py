"""Reading benchmarks: VLMEvalKit TSVs (base64, shared images, empty options, hints) and JSONL manifests."""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from thyme_cli.errors import UsageError
from thyme_cli.eval.items import build_prompt
from thyme_cli.eval.load import load_benchmark
from thyme_cli.eval.synth import NUMBER_HINT, NUMBER_QUESTION, write_synthetic_tsv


def _png_b64(size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (10, 20, 30)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _tsv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


HEADER = ["index", "image", "question", "A", "B", "C", "D", "answer", "category"]


def test_synthetic_tsv_reads_back_with_images_options_hints_and_categories(tmp_path: Path) -> None:
    truth = write_synthetic_tsv(tmp_path / "synth.tsv", per_category=3)
    items = load_benchmark(tmp_path / "synth.tsv", tmp_path / "images")
    assert [i.id for i in items] == [t.index for t in truth] == ["1", "2", "3", "4", "5", "6", "7"]
    for item, t in zip(items, truth, strict=True):
        assert item.answer == t.answer and item.options == t.options and item.category == t.category
        with Image.open(item.image) as img:
            assert img.size == (1600, 1200) and img.format == "PNG"
    assert items[3].image == items[0].image  # row 4 names row 1's index instead of carrying an image
    assert items[3].options != items[0].options and items[3].question.startswith(items[0].question)
    number = items[4]
    assert list(number.options) == ["A", "B", "C"]  # the empty D cell is no option
    assert number.l2_category == "digits" and number.hint == NUMBER_HINT
    assert number.prompt == (
        f"Hint: {NUMBER_HINT}\nQuestion: {NUMBER_QUESTION}\nOptions:\n"
        + "".join(f"{k}. {v}\n" for k, v in number.options.items())
        + "Please select the correct answer from the options above."
    )
    assert items[0].prompt.startswith("Question: ") and "Hint" not in items[0].prompt


def test_only_wanted_images_are_decoded_and_shared_ones_are_fetched(tmp_path: Path) -> None:
    write_synthetic_tsv(tmp_path / "synth.tsv", per_category=2)
    items = load_benchmark(tmp_path / "synth.tsv", tmp_path / "images", wanted=lambda i: i == "3")
    by_id = {i.id: i for i in items}
    assert len(items) == 5 and by_id["3"].image.endswith("1.png")  # row 3 shares row 1's image
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["1.png"]
    assert all(i.image == "" for i in items if i.id != "3")


def test_limit_reads_only_the_first_rows(tmp_path: Path) -> None:
    write_synthetic_tsv(tmp_path / "synth.tsv", per_category=3)
    items = load_benchmark(tmp_path / "synth.tsv", tmp_path / "images", limit=2)
    assert [i.id for i in items] == ["1", "2"]
    assert len(list((tmp_path / "images").iterdir())) == 2


def test_forward_references_float_indexes_nan_cells_and_extra_letters(tmp_path: Path) -> None:
    header = ["index", "image", "question", "A", "B", "C", "D", "E", "answer", "category", "l2-category", "hint"]
    rows = [
        ["1.0", "2", "q1", "x", "y", "nan", "NaN", "", "B", "c1", "nan", ""],
        ["2.0", _png_b64(), "q2", "x", "y", "z", "w", "v", "e", "c1", "sub", "look closely"],
    ]
    items = load_benchmark(_tsv(tmp_path / "b.tsv", header, rows), tmp_path / "img")
    assert [i.id for i in items] == ["1", "2"]
    assert items[0].image == items[1].image and Path(items[0].image).is_file()
    assert items[0].options == {"A": "x", "B": "y"} and items[0].l2_category is None and items[0].hint is None
    assert (
        items[1].options["E"] == "v" and items[1].answer == "E" and items[1].prompt.startswith("Hint: look closely\n")
    )


def test_mme_realworld_option_lists_and_chinese_prompt(tmp_path: Path) -> None:
    header = ["index", "image", "question", "multi-choice options", "answer", "category", "l2-category"]
    rows = [
        ["7", _png_b64(), "图中的数字是多少？", "['(A) 1', '(B) 2', '(C) 3', '(D) 4', '(E) 5']", "C", "OCR", "text"]
    ]
    (item,) = load_benchmark(_tsv(tmp_path / "mme.tsv", header, rows), tmp_path / "img")
    assert item.options == {"A": "1", "B": "2", "C": "3", "D": "4", "E": "5"} and item.answer == "C"
    assert item.prompt.endswith("E. 5\n请直接回答选项字母。")


def test_image_path_column_is_relative_to_the_tsv(tmp_path: Path) -> None:
    Image.new("RGB", (30, 30)).save(tmp_path / "pic.jpg")
    header = ["index", "image_path", "question", "A", "B", "answer"]
    (item,) = load_benchmark(
        _tsv(tmp_path / "p.tsv", header, [["1", "pic.jpg", "q", "yes", "no", "A"]]), tmp_path / "i"
    )
    assert item.image == str(tmp_path / "pic.jpg") and item.category is None


def test_open_question_prompt_is_the_question() -> None:
    assert build_prompt("What is written?", {}) == "What is written?"
    assert build_prompt("What is written?", {}, "small print") == "Hint: small print\nWhat is written?"


BAD_TSVS = [
    ("no tabs", "index,image,question,answer\n1,abc,q,A\n", "not a TSV file"),
    ("missing columns", "index\timage\tA\tB\tanswer\n1\tx\ta\tb\tA\n", "missing column(s) question"),
    ("broken base64", f"{chr(9).join(HEADER)}\n1\t{'@' * 100}\tq\ta\tb\tc\td\tA\tx\n", "not valid base64"),
    (
        "not an image",
        f"{chr(9).join(HEADER)}\n1\t{base64.b64encode(b'hello world' * 20).decode()}\tq\ta\tb\tc\td\tA\tx\n",
        "not a PNG, JPEG",
    ),
    (
        "unknown answer letter",
        f"{chr(9).join(HEADER)}\n1\t{_png_b64()}\tq\ta\tb\tc\t\tD\tx\n",
        "the answer 'D' is not one of the options A, B, C",
    ),
    (
        "answer not a letter",
        f"{chr(9).join(HEADER)}\n1\t{_png_b64()}\tq\ta\tb\tc\td\tmaybe\tx\n",
        "not an option letter",
    ),
    (
        "duplicate index",
        f"{chr(9).join(HEADER)}\n1\t{_png_b64()}\tq\ta\tb\tc\td\tA\tx\n1\t1\tq\ta\tb\tc\td\tA\tx\n",
        "duplicate index '1'",
    ),
    ("reference loop", f"{chr(9).join(HEADER)}\n1\t2\tq\ta\tb\tc\td\tA\tx\n2\t1\tq\ta\tb\tc\td\tA\tx\n", "loop"),
    ("several images", f"{chr(9).join(HEADER)}\n1\t['{_png_b64()}']\tq\ta\tb\tc\td\tA\tx\n", "several images"),
    ("empty question", f"{chr(9).join(HEADER)}\n1\t{_png_b64()}\t\ta\tb\tc\td\tA\tx\n", "the question is empty"),
    ("wrong field count", f"{chr(9).join(HEADER)}\n1\t{_png_b64()}\tq\ta\n", "row 1 has 4 fields, the header has 9"),
    ("no image", f"{chr(9).join(HEADER)}\n1\t\tq\ta\tb\tc\td\tA\tx\n", "no image"),
]


@pytest.mark.parametrize(("name", "content", "message"), BAD_TSVS, ids=[b[0] for b in BAD_TSVS])
def test_bad_tsvs_are_one_clear_error(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = tmp_path / "bad.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UsageError) as info:
        load_benchmark(path, tmp_path / "img")
    assert message in info.value.message and "\n" not in info.value.message


def test_binary_file_and_wrong_suffix_and_missing_file(tmp_path: Path) -> None:
    binary = tmp_path / "x.tsv"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x00" * 10)
    with pytest.raises(UsageError, match="not UTF-8 text"):
        load_benchmark(binary, tmp_path)
    other = tmp_path / "x.parquet"
    other.write_bytes(b"PAR1")
    with pytest.raises(UsageError, match=r"expected a VLMEvalKit \.tsv or a \.jsonl manifest"):
        load_benchmark(other, tmp_path)
    with pytest.raises(UsageError, match="no such file"):
        load_benchmark(tmp_path / "nope.tsv", tmp_path)


def test_jsonl_manifest_options_as_list_or_object_and_answers_as_text(tmp_path: Path) -> None:
    Image.new("RGB", (20, 20)).save(tmp_path / "a.png")
    rows = [
        {"image": "a.png", "question": "colour?", "options": ["red", "blue"], "answer": "blue", "category": "c"},
        {
            "id": "x7",
            "image": str(tmp_path / "a.png"),
            "question": "size?",
            "options": {"b": "big", "a": "small"},
            "answer": "(a)",
        },
        {"image": "a.png", "question": "what is written?", "answer": "STOP"},
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    items = load_benchmark(tmp_path / "m.jsonl", tmp_path / "img")
    assert [i.id for i in items] == ["1", "x7", "3"]
    assert items[0].options == {"A": "red", "B": "blue"} and items[0].answer == "B" and items[0].category == "c"
    assert items[1].options == {"A": "small", "B": "big"} and items[1].answer == "A"
    assert items[2].options == {} and items[2].answer == "STOP"
    # a question without options gets upstream's VQA instruction (eval/items.py)
    assert (
        items[2].prompt
        == "what is written?\nPlease try to answer the question with short words or phrases if possible."
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"image": "missing.png", "question": "q"}', "image missing.png: no such file"),
        ('{"image": "a.png"}', "needs 'image' and 'question'"),
        ('{"image": "a.png", "question": "q", "options": "A, B"}', "'options' must be a list"),
        ('{"image": "a.png", "question": "q", "options": ["x", "y"], "answer": "C"}', "not one of the options A, B"),
        ("[1, 2]", "each line must be a JSON object"),
        ("{oops", "not valid JSON"),
    ],
)
def test_bad_manifest_lines(tmp_path: Path, line: str, message: str) -> None:
    Image.new("RGB", (20, 20)).save(tmp_path / "a.png")
    (tmp_path / "m.jsonl").write_text(line + "\n")
    with pytest.raises(UsageError, match=r"m\.jsonl:1") as info:
        load_benchmark(tmp_path / "m.jsonl", tmp_path / "img")
    assert message in info.value.message
