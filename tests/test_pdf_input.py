"""PDF input end to end: `thyme ask doc.pdf --page N` and `thyme batch doc.pdf` (one item per page).

The PDFs are real (written by Pillow; the broken ones by hand, byte by byte) and rendered by PDFium;
the code step reads the rendered page in the real sandbox.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import RunThyme

COLOURS = [(220, 30, 30), (30, 30, 220), (30, 160, 30)]  # page 1 red, page 2 blue, page 3 green
PROBE = (
    "<code>\n```python\nimg = Image.open(image_path).convert('RGB')\n"
    "print('size', img.size, 'centre', img.getpixel((img.width // 2, img.height // 2)))\n```\n</code>"
)
ANSWER = "<answer>done</answer>"


@pytest.fixture
def doc(tmp_path: Path) -> Path:
    """Three A4 pages (595 x 842 points), each filled with its own colour."""
    pages = [Image.new("RGB", (595, 842), c) for c in COLOURS]
    path = tmp_path / "doc.pdf"
    pages[0].save(path, save_all=True, append_images=pages[1:], resolution=72.0)
    return path


def _centre(stdout: str) -> tuple[int, ...]:
    """The centre pixel the code step printed."""
    return tuple(int(v) for v in stdout.split("centre (")[1].split(")")[0].split(","))


def _close(got: tuple[int, ...], want: tuple[int, int, int]) -> bool:
    return all(abs(a - b) <= 6 for a, b in zip(got, want, strict=True))  # Pillow stores pages as JPEG


def _script(tmp_path: Path) -> Path:
    path = tmp_path / "script.json"
    path.write_text(json.dumps([PROBE, ANSWER]))
    return path


def _pdf(objects: list[bytes], trailer_extra: bytes = b"") -> bytes:
    """A minimal, well-formed PDF file with these objects (1 is the catalog)."""
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R " % (len(objects) + 1) + trailer_extra + b">>\n"
    out += b"startxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


ENCRYPTED = _pdf(
    [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>",
        b"<< /Filter /Standard /V 1 /R 2 /O <" + b"ab" * 32 + b"> /U <" + b"cd" * 32 + b"> /P -4 >>",
    ],
    b"/Encrypt 4 0 R /ID [<" + b"01" * 16 + b"> <" + b"01" * 16 + b">] ",
)
NO_PAGES = _pdf([b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [] /Count 0 >>"])


def test_ask_about_page_two(run_thyme: RunThyme, tmp_path: Path, doc: Path, sandbox_backend: str) -> None:
    out = tmp_path / "run"
    result = run_thyme(
        "ask",
        str(doc),
        "what colour is it",
        "--page",
        "2",
        "--script",
        str(_script(tmp_path)),
        "--out",
        str(out),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    run = json.loads(result.stdout)
    assert run["image_source"] == f"{doc}#p2"
    assert _close(_centre(run["steps"][0]["stdout"]), COLOURS[1])  # the code saw page 2, rendered
    assert any("rendered from page 2 of 3 of doc.pdf" in n for n in run["notes"])
    w, h = run["image_size"]
    assert f"size ({w}, {h})" in run["steps"][0]["stdout"]
    assert w * h <= 3072 * 28 * 28 and w * h > 0.8 * 3072 * 28 * 28  # fits Qwen2.5-VL's default budget
    assert abs(w / h - 595 / 842) < 0.01


def test_dpi_and_the_models_budget(run_thyme: RunThyme, tmp_path: Path, doc: Path, sandbox_backend: str) -> None:
    script = str(_script(tmp_path))
    at72 = json.loads(run_thyme("ask", str(doc), "q", "--dpi", "72", "--script", script, "--json").stdout)
    assert at72["image_size"] == [595, 842]
    small = run_thyme("ask", str(doc), "q", "--max-image-tokens", "256", "--script", script, "--json")
    assert small.returncode == 0, small.stderr
    w, h = json.loads(small.stdout)["image_size"]
    assert 0.8 * 256 * 784 < w * h <= 256 * 784  # page 1 by default, sized to the smaller budget
    assert _close(_centre(json.loads(small.stdout)["steps"][0]["stdout"]), COLOURS[0])


@pytest.mark.parametrize(
    ("content", "args", "line"),
    [
        (ENCRYPTED, [], "is encrypted (password-protected)"),
        (b"%PDF-1.4\nnot really a pdf\n", [], "is not a readable PDF (corrupt or truncated)"),
        (b"", [], "is empty, not a PDF"),
        (NO_PAGES, [], "has no pages"),
        (None, ["--page", "4"], "has 3 page(s); page 4 is out of range"),
        (None, ["--dpi", "5000"], "--dpi 5000 is out of range"),
    ],
)
def test_bad_pdfs_get_one_clear_line(
    run_thyme: RunThyme, tmp_path: Path, doc: Path, content: bytes | None, args: list[str], line: str
) -> None:
    path = doc
    if content is not None:
        path = tmp_path / "bad.pdf"
        path.write_bytes(content)
    out = tmp_path / "run"
    result = run_thyme("ask", str(path), "q", *args, "--script", str(_script(tmp_path)), "--out", str(out))
    assert result.returncode == 2, result.stderr
    assert line in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2
    assert not out.exists()  # nothing left behind


def test_page_on_an_image_is_bad_usage(run_thyme: RunThyme, tmp_path: Path) -> None:
    png = tmp_path / "a.png"
    Image.new("RGB", (10, 10)).save(png)
    result = run_thyme("ask", str(png), "q", "--page", "2", "--script", str(_script(tmp_path)))
    assert result.returncode == 2 and "--page and --dpi apply to PDF input" in result.stderr


def test_batch_makes_one_item_per_page(run_thyme: RunThyme, tmp_path: Path, doc: Path, sandbox_backend: str) -> None:
    folder = tmp_path / "inbox"
    folder.mkdir()
    doc.rename(folder / "doc.pdf")
    Image.new("RGB", (64, 64), (250, 250, 0)).save(folder / "photo.png")
    out = tmp_path / "results.jsonl"
    result = run_thyme("batch", str(folder), "-q", "what colour?", "--script", str(_script(tmp_path)), "-o", str(out))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert [Path(r["id"]).name for r in lines] == ["doc.pdf#p1", "doc.pdf#p2", "doc.pdf#p3", "photo.png"]
    traces = [json.loads((Path(r["run_dir"]) / "trace.json").read_text()) for r in lines]
    assert [Path(t["image_source"]).name for t in traces] == ["doc.pdf#p1", "doc.pdf#p2", "doc.pdf#p3", "photo.png"]
    centres = [_centre(t["steps"][0]["stdout"]) for t in traces]
    assert all(_close(c, w) for c, w in zip(centres, [*COLOURS, (250, 250, 0)], strict=True)), centres
