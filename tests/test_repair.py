"""Thyme's code repairs (thyme_cli.sandbox.jail.repair / helpers): pure functions, run on the host."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from thyme_cli.sandbox.jail import boxrule, helpers, repair, repair_upstream
from thyme_cli.sandbox.jail.repair import RepairContext, fix_indentation

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
    fixed = repair.repair(f"img = {alias}.imread(image_path)\ng = {alias}.cvtColor(img, {alias}.COLOR_BGR2GRAY)", ctx())
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


# -- crop boxes: upstream's literal-box rule, nothing at run time ---------------------------------
# (tests/test_fidelity_corpus.py checks the same rules against upstream's recorded results)


def sized_ctx(w: int = 400, h: int = 300) -> RepairContext:
    return RepairContext(image_path=INPUT, output_dir=OUT, is_file=lambda p: p == INPUT, image_size=(w, h))


def run_sized(code: str, extra: dict[str, Any] | None = None, size: tuple[int, int] = (400, 300)) -> dict[str, Any]:
    fixed = repair.repair(code, sized_ctx(*size))
    assert fixed.tree is not None, fixed.syntax_error
    ns: dict[str, Any] = {
        repair.CROP_HELPER: helpers.thyme_crop,
        repair.SLICE_HELPER: helpers.thyme_slice,
        "Image": Image,
        "np": np,
        "image_path": INPUT,
        **(extra or {}),
    }
    exec(compile(fixed.tree, "<string>", "exec"), ns)
    return ns


def make_image(w: int = 400, h: int = 300) -> Image.Image:
    return Image.new("RGB", (w, h), (10, 20, 30))


def test_readme_box_is_extended_from_its_top_left() -> None:
    fixed = repair.repair("x1, y1, x2, y2 = 1250, 1030, 1360, 1070", sized_ctx(2496, 1392))
    assert fixed.unparse() == "x1, y1, x2, y2 = (1250, 1030, 1360, 1094)"
    assert "literal_box" in fixed.applied


def test_literal_box_names_and_shapes() -> None:
    code = (
        "crop_box = (10, 10, 20, 20)\nbbox = [10, 10, 20, 20]\nplate = (10, 10, 20, 20)\n"
        "left, top, right, bottom = 390, 290, 395, 295\nx1, y1, x2, y2 = -5, 0, 10, 10\n"
        "a, b, c, d = 1, 2, 3, 4\nx1, y1, x2, y2 = w, 0, 10, 10"
    )
    ns = run_sized(code, {"w": 3})
    assert ns["crop_box"] == (10, 10, 74, 74)
    assert ns["bbox"] == [10, 10, 20, 20]  # a list: upstream leaves it
    assert ns["plate"] == (10, 10, 20, 20)  # not one of upstream's names
    assert (ns["left"], ns["top"], ns["right"], ns["bottom"]) == (336, 236, 400, 300)  # shifted back inside
    assert (ns["a"], ns["b"], ns["c"], ns["d"]) == (1, 2, 3, 4)
    assert (ns["x1"], ns["x2"]) == (3, 10)  # computed: untouched (and -5 is not a literal number)


def test_literal_box_without_image_size_is_left_alone() -> None:
    fixed = repair.repair("crop_box = (10, 10, 20, 20)", ctx())
    assert "literal_box" not in fixed.applied


def test_pil_crop_runs_as_pillow_runs_it() -> None:
    code = "cx, cy = 200, 150\nc = img.crop((cx - 5, cy - 5, cx + 5, cy + 5))\nd = img.crop(box=(390, 290, 410, 310))"
    ns = run_sized(code, {"img": make_image()})
    assert ns["c"].size == (10, 10)
    assert ns["d"].size == (20, 20) and ns["d"].getpixel((19, 19)) == (0, 0, 0)  # outside: black


def test_crop_on_a_non_image_is_left_alone() -> None:
    class Cropper:
        def crop(self, box: Any) -> Any:
            return ("cropped", box)

    ns = run_sized("r = obj.crop((5, 5, 1, 1))", {"obj": Cropper()})
    assert ns["r"] == ("cropped", (5, 5, 1, 1))


def test_numpy_slice_of_the_input_image_gets_upstreams_rule() -> None:
    pixels = np.zeros((300, 400, 3), dtype=np.uint8)

    class FakeCv2:  # cv2.imread of the input path, as the jail would return it
        @staticmethod
        def imread(path: str) -> Any:
            assert path == INPUT
            return pixels

    code = "img = cv2.imread(image_path)\nroi = img[100:120, 390:420]\nbig = img[10:200, 10:300]\nsub = roi[0:10, 0:10]"
    ns = run_sized(code, {"cv2": FakeCv2})
    assert ns["roi"].shape == (64, 64, 3)  # 100..164, and 390..454 shifted back to 336..400
    assert ns["big"].shape == (190, 290, 3)
    assert ns["sub"].shape == (64, 64, 3)  # a crop of the input is still the input's pixels


def test_numpy_slices_of_other_arrays_are_untouched() -> None:
    code = (
        "M = np.array([[2, 1, 3], [0, 4, 5], [1, 0, 6]])\nm = M[1:3, 1:3]\n"
        "img = np.array(Image.open(image_path))\ncorner = img[-120:-20, -200:-20]\n"
        "cy = 50\nvar = img[cy:cy + 8, 0:8]\nimg = np.zeros((300, 400))\nafter = img[0:5, 0:5]"
    )
    fixed = repair.repair(code, sized_ctx())
    text = fixed.unparse()
    assert text.count(repair.SLICE_HELPER) == 0, text


def test_image_slice_is_rewritten_in_the_tree() -> None:
    fixed = repair.repair("a = img.crop(b)\narr = cv2.imread(image_path)\nc = arr[1:2, 3:]", sized_ctx())
    text = fixed.unparse()
    assert f"{repair.CROP_HELPER}(img, b)" in text
    assert f"{repair.SLICE_HELPER}(arr, 1, 2, 3, None)" in text
    assert "image_slice" in fixed.applied


def test_format_spec_rewrite() -> None:
    code = 'r = 2 / 3\na = f"{r:.2f}"\nb = "{:.1f} {:.3f}".format(r, r)\nc = f"{r:.10f} {r:.2%}"\nd = "%.2f" % r'
    ns = run_sized(code)
    assert ns["a"] == "0.66666667"
    assert ns["b"] == f"{2 / 3:.8f} {2 / 3:.8f}"
    assert ns["c"] == f"{2 / 3:.10f} {2 / 3:.2%}"
    assert ns["d"] == "0.67"


@given(
    st.floats(-5000, 5000), st.floats(-5000, 5000), st.floats(-5000, 5000), st.floats(-5000, 5000),
    st.integers(1, 3000), st.integers(1, 3000),
)  # fmt: skip
def test_upstream_box_is_inside_and_at_least_64(x1: float, y1: float, x2: float, y2: float, w: int, h: int) -> None:
    left, top, right, bottom = boxrule.upstream_box(x1, y1, x2, y2, w, h)
    assert 0 <= left < right <= w and 0 <= top < bottom <= h
    assert right - left >= min(64, w) - 1e-9 and bottom - top >= min(64, h) - 1e-9


def test_upstream_box_extends_from_the_top_left() -> None:
    assert boxrule.upstream_box(100, 100, 110, 105, 400, 300) == [100, 100, 164, 164]
    assert boxrule.upstream_box(500, 350, -20, 100, 400, 300) == [0, 100, 400, 300]
    assert boxrule.upstream_box(1, 1, 2, 2, 40, 30) == [0, 0, 40, 30]


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
    allowed = {"__future__", "ast", "os", "posixpath", "re", "textwrap", "collections", "dataclasses"}
    assert imported <= allowed | {"thyme_cli"}
    for module in (repair_upstream, boxrule):  # the project modules it uses are stdlib-only too
        tree = ast.parse(Path(module.__file__).read_text())
        names = {
            (n.module or "").split(".")[0] if isinstance(n, ast.ImportFrom) else a.name.split(".")[0]
            for n in tree.body
            if isinstance(n, ast.Import | ast.ImportFrom)
            for a in n.names
        }
        assert names <= allowed | {"thyme_cli"}
