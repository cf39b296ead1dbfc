"""The AST rewrites that reproduce upstream Thyme's code semantics (stdlib only: runs in the jail).

Literal crop boxes, `:.Nf}` specs, and literal numpy slices of arrays that provably hold the input
image's pixels (upstream's dead slice rule, applied only where it was meant to); computed boxes are
never touched. See docs/sandbox.md, "Fidelity to upstream Thyme".
"""

from __future__ import annotations

import ast
import re

from thyme_cli.sandbox.jail import boxrule

SLICE_HELPER = "__thyme_slice__"
_FORMAT_SPEC = re.compile(r":\.\d{1}f}")
_SPEC_ONLY = re.compile(r"\.\d{1}f")


class _Fixer(ast.NodeTransformer):
    changed = False


def _number(node: ast.expr | None) -> float | None:
    """A literal int/float (upstream's `_get_numeric_value`: bools count, as isinstance says)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return node.value
    return None


class LiteralBoxFixer(_Fixer):
    """Upstream's literal crop-box rewrite: `x1, y1, x2, y2 = 1250, 1030, 1360, 1070` and
    `crop_box = (a, b, c, d)` become the clamped/extended box for the input image."""

    def __init__(self, width: int, height: int) -> None:
        self.width = width
        self.height = height

    def _fix(self, value: ast.Tuple) -> None:
        raw = [_number(v) for v in value.elts]
        if any(v is None for v in raw):
            return
        numbers = [float(v) for v in raw if v is not None]
        x1, y1, x2, y2 = numbers
        box = boxrule.upstream_box(x1, y1, x2, y2, self.width, self.height)
        if boxrule.rounded(box) != boxrule.rounded(numbers):
            value.elts = [
                ast.copy_location(ast.Constant(v), e) for v, e in zip(boxrule.rounded(box), value.elts, strict=True)
            ]
            self.changed = True

    def visit_Assign(self, node: ast.Assign) -> ast.AST:
        if len(node.targets) == 1 and isinstance(node.value, ast.Tuple) and len(node.value.elts) == 4:
            target = node.targets[0]
            if (
                isinstance(target, ast.Tuple)
                and len(target.elts) == 4
                and all(isinstance(t, ast.Name) for t in target.elts)
            ):
                names = [t.id.lower() for t in target.elts if isinstance(t, ast.Name)]
                if any(n in boxrule.UNPACK_NAMES for n in names):
                    self._fix(node.value)
            elif isinstance(target, ast.Name) and target.id in boxrule.BOX_NAMES:
                self._fix(node.value)
        self.generic_visit(node)
        return node


class FormatSpecFixer(_Fixer):
    """`:.Nf}` (one digit) -> `:.8f}` wherever it appears in a string or an f-string."""

    def visit_FormattedValue(self, node: ast.FormattedValue) -> ast.AST:
        spec = node.format_spec
        if (
            isinstance(spec, ast.JoinedStr)
            and len(spec.values) == 1
            and isinstance(spec.values[0], ast.Constant)
            and isinstance(spec.values[0].value, str)
            and _SPEC_ONLY.fullmatch(spec.values[0].value)
        ):
            spec.values[0] = ast.copy_location(ast.Constant(".8f"), spec.values[0])
            self.changed = True
            node.value = self.visit(node.value)
            return node
        self.generic_visit(node)
        return node

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        if isinstance(node.value, str) and _FORMAT_SPEC.search(node.value):
            self.changed = True
            return ast.copy_location(ast.Constant(_FORMAT_SPEC.sub(":.8f}", node.value)), node)
        return node


_ARRAY_FUNCS = frozenset({"array", "asarray", "asanyarray", "copy", "ascontiguousarray"})
_PIL_METHODS = frozenset({"convert", "crop", "copy"})


class ImageSliceFixer(_Fixer):
    """`crop = arr[a:b, c:d]` (literal bounds) -> `crop = __thyme_slice__(arr, a, b, c, d)`, only
    for arrays that provably hold the input image's pixels (or a crop of them)."""

    def __init__(self, image_path: str) -> None:
        self.image_path = image_path
        self.arrays: set[str] = set()
        self.pictures: set[str] = set()

    def _is_input(self, node: ast.expr) -> bool:
        if isinstance(node, ast.Name):
            return node.id == "image_path"
        return isinstance(node, ast.Constant) and node.value == self.image_path

    def _is_picture(self, node: ast.expr) -> bool:
        """A PIL image of the input (opened, converted, cropped, copied)."""
        if isinstance(node, ast.Name):
            return node.id in self.pictures
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            return False
        func = node.func
        if func.attr == "open" and isinstance(func.value, ast.Name) and func.value.id == "Image":
            return bool(node.args) and self._is_input(node.args[0])
        return func.attr in _PIL_METHODS and self._is_picture(func.value)

    def _is_array(self, node: ast.expr) -> bool:
        """A numpy array of the input's pixels (or a crop of them)."""
        if isinstance(node, ast.Name):
            return node.id in self.arrays
        if isinstance(node, ast.Subscript):
            return self._is_array(node.value)
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            return False
        func = node.func
        owner = func.value.id if isinstance(func.value, ast.Name) else None
        first = node.args[0] if node.args else None
        if owner == "cv2" and func.attr == "imread":
            return first is not None and self._is_input(first)
        if owner == "cv2" and func.attr == "cvtColor":
            return first is not None and self._is_array(first)
        if owner in ("np", "numpy") and func.attr in _ARRAY_FUNCS:
            return first is not None and (self._is_array(first) or self._is_picture(first))
        return func.attr == "copy" and not node.args and self._is_array(func.value)

    def _track(self, name: str, value: ast.expr) -> None:
        is_array, is_picture = self._is_array(value), self._is_picture(value)
        self.arrays.discard(name)
        self.pictures.discard(name)
        if is_array:
            self.arrays.add(name)
        elif is_picture:
            self.pictures.add(name)

    def visit_Assign(self, node: ast.Assign) -> ast.AST:
        self.generic_visit(node)
        for target in node.targets:  # anything re-bound loses what we knew about it
            for sub in ast.walk(target):
                if isinstance(sub, ast.Name):
                    self.arrays.discard(sub.id)
                    self.pictures.discard(sub.id)
        if len(node.targets) != 1 or not isinstance(node.targets[0], ast.Name):
            return node
        name = node.targets[0].id
        self._track(name, node.value)
        call = self._slice_call(node.value)
        if call is not None:
            node.value = call
            self.changed = True
        return node

    def visit_withitem(self, node: ast.withitem) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.optional_vars, ast.Name):
            self._track(node.optional_vars.id, node.context_expr)
        return node

    def _slice_call(self, value: ast.expr) -> ast.Call | None:
        if not (isinstance(value, ast.Subscript) and isinstance(value.value, ast.Name)):
            return None
        if value.value.id not in self.arrays:
            return None
        index = value.slice
        if not (isinstance(index, ast.Tuple) and len(index.elts) == 2):
            return None
        bounds: list[ast.expr] = []
        for part in index.elts:
            if not isinstance(part, ast.Slice) or part.step is not None:
                return None
            for bound in (part.lower, part.upper):
                if bound is None:
                    bounds.append(ast.Constant(None))
                elif _number(bound) is not None and not isinstance(bound.value, bool):  # type: ignore[attr-defined]
                    bounds.append(bound)
                else:
                    return None
        if all(isinstance(b, ast.Constant) and b.value is None for b in bounds):
            return None
        call = ast.Call(func=ast.Name(id=SLICE_HELPER, ctx=ast.Load()), args=[value.value, *bounds], keywords=[])
        return ast.copy_location(call, value)
