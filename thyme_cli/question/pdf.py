"""PDF pages as input images: `thyme ask doc.pdf --page N`, and one batch item per page (doc.pdf#p3).

Pages are rendered with PDFium (pypdfium2, the renderer Chrome uses) to a PNG, which then goes
through the normal input-image path, so the code step sees the rendered page as `image_path`.
The default resolution makes the page fit the model's pixel budget; broken, encrypted and empty
PDFs and pages out of range each get one clear line.
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path
from typing import Any

from thyme_cli.errors import UsageError

PAGE_SUFFIX = re.compile(r"^(?P<path>.+\.pdf)#p(?P<page>\d+)$", re.IGNORECASE)
PIXELS_PER_TOKEN = 28 * 28  # Qwen2.5-VL: one vision token per 28x28 pixels after the 2x2 merge
DEFAULT_IMAGE_TOKENS = 3072
MAX_DPI = 300.0
MIN_DPI = 36.0
PDFIUM_ERR_SUCCESS = 0  # FPDF_ERR_SUCCESS
PDFIUM_ERR_PASSWORD = 4  # FPDF_ERR_PASSWORD


def is_pdf(path: Path) -> bool:
    """A .pdf name, or a file that starts like one."""
    if path.suffix.lower() == ".pdf":
        return True
    try:
        with path.open("rb") as f:
            return f.read(5) == b"%PDF-"
    except OSError:
        return False


def split_page_ref(text: str) -> tuple[str, int] | None:
    """('doc.pdf', 3) for 'doc.pdf#p3' (what batch names a page), else None."""
    m = PAGE_SUFFIX.match(text)
    return (m.group("path"), int(m.group("page"))) if m else None


def pixel_budget(image_max_tokens: int | None) -> int:
    return (image_max_tokens or DEFAULT_IMAGE_TOKENS) * PIXELS_PER_TOKEN


def fit_dpi(width_pt: float, height_pt: float, max_pixels: int) -> float:
    """The resolution at which a page of WIDTH x HEIGHT points (1/72 inch) has at most MAX_PIXELS."""
    area_in2 = max(width_pt * height_pt, 1.0) / (72.0 * 72.0)
    dpi = max(MIN_DPI, min(MAX_DPI, math.sqrt(max_pixels / area_in2)))
    # PDFium rounds the bitmap size up: step down until the rounded size is within the budget.
    while dpi > MIN_DPI and math.ceil(width_pt * dpi / 72) * math.ceil(height_pt * dpi / 72) > max_pixels:
        dpi *= 0.999
    return dpi


def _open(path: Path) -> Any:
    import pypdfium2 as pdfium

    name = str(path)
    if not path.exists():
        raise UsageError(f"{name}: no such file")
    if path.is_dir():
        raise UsageError(f"{name} is a directory, not a PDF")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UsageError(f"{name}: cannot read it ({e.strerror})") from None
    if not data:
        raise UsageError(f"{name} is empty, not a PDF")
    try:
        doc = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as e:
        code = getattr(e, "err_code", None)
        if code == PDFIUM_ERR_PASSWORD or "password" in str(e).lower():
            raise UsageError(
                f"{name} is encrypted (password-protected); thyme cannot open it",
                hint="save an unprotected copy, e.g. with `qpdf --decrypt`",
            ) from None
        if code == PDFIUM_ERR_SUCCESS:  # PDFium refuses a document without pages, reporting no error
            raise UsageError(f"{name} has no pages") from None
        raise UsageError(f"{name} is not a readable PDF (corrupt or truncated)") from None
    if len(doc) == 0:
        doc.close()
        raise UsageError(f"{name} has no pages")
    return doc


def page_count(path: Path) -> int:
    doc = _open(path)
    try:
        return len(doc)
    finally:
        doc.close()


def render_page(path: Path, page: int, *, dpi: float | None = None, max_pixels: int | None = None) -> tuple[bytes, str]:
    """Page PAGE (1-based) of PATH as PNG bytes, and a note saying how it was rendered."""
    if page < 1:
        raise UsageError(f"--page {page}: pages are numbered from 1")
    if dpi is not None and not (1.0 <= dpi <= 1200.0):
        raise UsageError(f"--dpi {dpi:g} is out of range (1 to 1200)")
    doc = _open(path)
    try:
        if page > len(doc):
            raise UsageError(f"{path} has {len(doc)} page(s); page {page} is out of range")
        pdf_page = doc[page - 1]
        width_pt, height_pt = pdf_page.get_size()
        chosen = dpi if dpi is not None else fit_dpi(width_pt, height_pt, max_pixels or pixel_budget(None))
        try:
            image = pdf_page.render(scale=chosen / 72.0).to_pil().convert("RGB")
        except Exception as e:  # PDFium fails on some damaged page streams
            raise UsageError(f"{path}: page {page} cannot be rendered ({e})") from None
        buf = io.BytesIO()
        image.save(buf, "PNG", compress_level=1)
        note = (
            f"rendered from page {page} of {len(doc)} of {path.name} at {chosen:.0f} dpi ({image.width}x{image.height})"
        )
        return buf.getvalue(), note
    finally:
        doc.close()


def page_source(text: str, *, dpi: float | None = None, max_pixels: int | None = None) -> tuple[Path | bytes, str]:
    """What `prepare_input` gets for a batch item: PNG bytes for 'doc.pdf#p3' (or a bare PDF, page 1),
    the path itself for an image; plus the label the trace records."""
    ref = split_page_ref(text)
    if ref is not None:
        data, _ = render_page(Path(ref[0]), ref[1], dpi=dpi, max_pixels=max_pixels)
        return data, text
    path = Path(text)
    if path.is_file() and is_pdf(path):
        data, _ = render_page(path, 1, dpi=dpi, max_pixels=max_pixels)
        return data, f"{text}#p1"
    return path, text
