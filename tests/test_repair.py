"""Thyme's code repairs (thyme_cli.sandbox.repair / helpers): pure functions, run on the host."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from thyme_cli.sandbox import helpers, repair
from thyme_cli.sandbox.repair import RepairContext, fix_indentation

OUT = "/mnt/data/output/step3"
INPUT = "/mnt/data/input/photo.jpg"


def ctx(existing: set[str] | None = None) -> RepairContext:
    files = existing if existing is not None else {INPUT}
    return RepairContext(image_path=INPUT, output_dir=OUT, is_file=lambda p: p in files)


def run_repaired(code: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Repair, compile the AST exactly as the worker does, and execute it with the helpers."""
    fixed = repair.repair(code, ctx())
    assert fixed.tree is not None, fixed.syntax_error
    ns: dict[str, Any] = {
        repair.CROP_HELPER: helpers.thyme_crop,
        repair.SLICE_HELPER: helpers.thyme_slice,
        "Image": Image,
        "np": np,
        **(extra or {}),
    }
    exec(compile(fixed.tree, "<string>", "exec"), ns)
    return ns


# -- indentation ------------------------------------------------------------------------------


def test_indentation_first_line_flush_left_rest_indented() -> None:
    code = "import math\n    x = 1\n    y = math.sqrt(4)\n    print(x + y)"
    fixed = fix_indentation(code)
    assert fixed == "import math\nx = 1\ny = math.sqrt(4)\nprint(x + y)"


def test_indentation_whole_block_indented_is_dedented() -> None:
    fixed = fix_indentation("    a = 1\n    if a:\n        b = 2\n")
    assert fixed == "a = 1\nif a:\n    b = 2"


def test_indentation_valid_code_is_untouched() -> None:
    code = "for i in range(3):\n    print(i)\nprint('done')"
    assert fix_indentation(code) == code


def test_indentation_tabs_and_ragged_blocks() -> None:
    code = "def f(x):\n\treturn x * 2\nif True:\n  y = f(2)\n    z = y + 1\nprint(z)"
    fixed = fix_indentation(code)
    ns: dict[str, Any] = {}
    exec(compile(fixed, "<t>", "exec"), ns)
    assert ns["z"] == 5


def test_indentation_block_body_not_indented() -> None:
    code = "total = 0\nfor i in range(4):\ntotal += i\nprint(total)"
    fixed = fix_indentation(code)
    ns: dict[str, Any] = {}
    exec(compile(fixed, "<t>", "exec"), ns)
    assert ns["total"] == 6  # the body line went under the for (the only sensible reading)


def test_indentation_keeps_continuation_lines_and_strings() -> None:
    code = 'x = [1,\n      2,\n   3]\n    s = """a\n  b"""\nprint(x, s)'
    fixed = fix_indentation(code)
    ns: dict[str, Any] = {}
    exec(compile(fixed, "<t>", "exec"), ns)
    assert ns["x"] == [1, 2, 3]
    assert ns["s"] == "a\n  b"


def test_unparseable_code_gives_syntax_error_not_exception() -> None:
    fixed = repair.repair("def (:\n", ctx())
    assert fixed.tree is None
    assert isinstance(fixed.syntax_error, SyntaxError)


def test_nul_bytes_give_syntax_error() -> None:
    fixed = repair.repair("x = 1\x00", ctx())
    assert fixed.tree is None and fixed.syntax_error is not None


# -- image_path ---------------------------------------------------------------------------------


def test_image_path_literal_that_does_not_exist_is_replaced() -> None:
    fixed = repair.repair('image_path = "/path/to/image.jpg"\nim = image_path', ctx())
    assert "image_path" in fixed.applied
    assert f"image_path = '{INPUT}'" in fixed.unparse()


def test_image_path_literal_that_exists_is_kept() -> None:
    other = "/mnt/data/output/step1/crop.png"
    fixed = repair.repair(f'image_path = "{other}"', ctx({INPUT, other}))
    assert "image_path" not in fixed.applied
    assert other in fixed.unparse()


def test_image_path_annotated_assignment() -> None:
    fixed = repair.repair('image_path: str = "nope.png"', ctx())
    assert INPUT in fixed.unparse()


def test_other_variables_are_not_touched() -> None:
    fixed = repair.repair('path = "/nope.png"', ctx())
    assert "/nope.png" in fixed.unparse()


# -- output dir ---------------------------------------------------------------------------------


def test_output_prefix_rewritten_in_plain_and_f_strings_and_join() -> None:
    code = (
        "a = '/mnt/data/temp_processed_images/crop.png'\n"
        "name = 'z'\n"
        "b = f'/mnt/data/temp_processed_images/{name}.png'\n"
        "c = os.path.join('/mnt/data/temp_processed_images', 'x.png')\n"
    )
    fixed = repair.repair(code, ctx())
    text = fixed.unparse()
    assert "temp_processed_images" not in text
    assert f"'{OUT}/crop.png'" in text
    assert f"f'{OUT}/{{name}}.png'" in text
    assert f"os.path.join('{OUT}', 'x.png')" in text


def test_output_prefix_subdirectories_are_listed_for_creation() -> None:
    fixed = repair.repair("p = '/mnt/data/temp_processed_images/zoom/a/b.png'", ctx())
    assert fixed.make_dirs == [f"{OUT}/zoom/a"]


def test_output_prefix_with_dotdot_creates_nothing_outside() -> None:
    fixed = repair.repair("p = '/mnt/data/temp_processed_images/../../etc/x.png'", ctx())
    assert fixed.make_dirs == []


def test_similar_prefix_is_not_rewritten() -> None:
    fixed = repair.repair("p = '/mnt/data/temp_processed_images_old/x.png'", ctx())
    assert "temp_processed_images_old" in fixed.unparse()


# -- cv2 aliases --------------------------------------------------------------------------------


@pytest.mark.parametrize("alias", ["cv", "cv3", "cv4"])
def test_cv_aliases_become_cv2(alias: str) -> None:
    fixed = repair.repair(
        f"img = {alias}.imread(image_path)\ng = {alias}.cvtColor(img, {alias}.COLOR_BGR2GRAY)", ctx()
    )
    text = fixed.unparse()
    assert f"{alias}." not in text.replace("cv2.", "")
    assert text.count("cv2.") == 3


def test_import_cv4_becomes_cv2() -> None:
    fixed = repair.repair("import cv4\nx = cv4.IMREAD_COLOR", ctx())
    assert "import cv2 as cv4" in fixed.unparse()


def test_repaired_tree_keeps_original_line_numbers() -> None:
    fixed = repair.repair("a = 1\nb = 2\nc = cv.imread('x')\n", ctx())
    assert fixed.tree is not None
    call = next(n for n in ast.walk(fixed.tree) if isinstance(n, ast.Attribute) and n.attr == "imread")
    assert call.lineno == 3


# -- crop boxes -----------------------------------------------------------------------------------


def make_image(w: int = 400, h: int = 300) -> Image.Image:
    return Image.new("RGB", (w, h), (10, 20, 30))


def test_pil_crop_small_box_is_widened_to_64() -> None:
    ns = run_repaired("c = img.crop((100, 100, 110, 105))", {"img": make_image()})
    assert ns["c"].size == (64, 64)


def test_pil_crop_reversed_and_out_of_bounds_box_is_ordered_and_clamped() -> None:
    ns = run_repaired("c = img.crop((500, 350, -20, 100))", {"img": make_image()})
    assert ns["c"].size == (400, 200)


def test_pil_crop_computed_box_and_keyword_box() -> None:
    code = "x1, y1 = 390, 290\nbox = [x1, y1, x1 + 30, y1 + 30]\nc = img.crop(box)\nd = img.crop(box=(0, 0, 5, 5))"
    ns = run_repaired(code, {"img": make_image()})
    assert ns["c"].size == (64, 64)  # clamped into the image, then widened inside it
    assert ns["d"].size == (64, 64)


def test_pil_crop_of_small_image_is_the_whole_image() -> None:
    ns = run_repaired("c = img.crop((1, 1, 2, 2))", {"img": make_image(40, 30)})
    assert ns["c"].size == (40, 30)


def test_valid_crop_is_unchanged() -> None:
    ns = run_repaired("c = img.crop((10.0, 20, 210, 120))", {"img": make_image()})
    assert ns["c"].size == (200, 100)


def test_crop_on_a_non_image_is_left_alone() -> None:
    class Cropper:
        def crop(self, box: Any) -> Any:
            return ("cropped", box)

    ns = run_repaired("r = obj.crop((5, 5, 1, 1))", {"obj": Cropper()})
    assert ns["r"] == ("cropped", (5, 5, 1, 1))


def test_numpy_slice_crop_is_fixed() -> None:
    arr = np.zeros((300, 400, 3), dtype=np.uint8)
    ns = run_repaired("y1, y2, x1, x2 = 120, 100, 390, 420\nroi = arr[y1:y2, x1:x2]", {"arr": arr})
    assert ns["roi"].shape == (64, 64, 3)


def test_numpy_slice_with_channel_index_and_negative_start() -> None:
    arr = np.zeros((300, 400, 3), dtype=np.uint8)
    ns = run_repaired("roi = arr[-10:50, 10:200, 0]", {"arr": arr})
    assert ns["roi"].shape == (64, 190)


def test_numpy_slice_of_non_image_and_stores_are_untouched() -> None:
    data = np.arange(10 * 10 * 7).reshape(10, 10, 7)  # 7 channels: not an image
    arr = np.zeros((100, 100), dtype=np.uint8)
    code = "part = data[0:2, 0:3]\narr[0:2, 0:2] = 255\ntotal = int(arr.sum())\nm = arr[5:6, 5:6].mean()"
    ns = run_repaired(code, {"data": data, "arr": arr})
    assert ns["part"].shape == (2, 3, 7)
    assert ns["total"] == 4 * 255  # the store was not widened
    assert ns["m"] == 0.0  # not an assignment of a bare slice: left alone


def test_slice_and_crop_are_rewritten_in_the_tree() -> None:
    fixed = repair.repair("a = img.crop(b)\nc = arr[1:2, 3:4]", ctx())
    text = fixed.unparse()
    assert f"{repair.CROP_HELPER}(img, b)" in text
    assert f"{repair.SLICE_HELPER}(arr, 1, 2, 3, 4)" in text
    assert "crop" in fixed.applied


@given(
    st.floats(-5000, 5000), st.floats(-5000, 5000), st.floats(-5000, 5000), st.floats(-5000, 5000),
    st.integers(1, 3000), st.integers(1, 3000),
)  # fmt: skip
def test_fix_box_always_valid(x1: float, y1: float, x2: float, y2: float, w: int, h: int) -> None:
    box = helpers.fix_box((x1, y1, x2, y2), w, h)
    assert box is not None
    left, upper, right, lower = box
    assert 0 <= left < right <= w and 0 <= upper < lower <= h
    assert right - left >= min(64, w) and lower - upper >= min(64, h)


def test_fix_box_rejects_non_boxes() -> None:
    assert helpers.fix_box((1, 2, 3), 100, 100) is None
    assert helpers.fix_box(("a", 2, 3, 4), 100, 100) is None
    assert helpers.fix_box(None, 100, 100) is None
    assert helpers.fix_box((1, 2, float("nan"), 4), 100, 100) is None


def test_repair_module_is_stdlib_only() -> None:
    """It runs inside the jail before anything else: no third-party imports at module level."""
    source = Path(repair.__file__).read_text()
    tree = ast.parse(source)
    imported = {
        (n.module or "").split(".")[0] if isinstance(n, ast.ImportFrom) else a.name.split(".")[0]
        for n in tree.body
        if isinstance(n, ast.Import | ast.ImportFrom)
        for a in n.names
    }
    assert imported <= {"__future__", "ast", "os", "posixpath", "textwrap", "collections", "dataclasses"}
