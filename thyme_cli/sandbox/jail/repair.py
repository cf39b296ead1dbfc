"""Thyme's code repairs, as pure functions: the model was trained with these applied, so we apply them.

Stdlib only: they run inside the jail (and on the host in the unit tests). The AST is compiled
directly, so traceback line numbers still match the model's code. The list: docs/sandbox.md.
"""

from __future__ import annotations

import ast
import os
import posixpath
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field

from thyme_cli.sandbox.jail import repair_upstream

UPSTREAM_OUTPUT_DIR = "/mnt/data/temp_processed_images"
CV_ALIASES = frozenset({"cv", "cv3", "cv4", "CV"})
CROP_HELPER = "__thyme_crop__"
SLICE_HELPER = repair_upstream.SLICE_HELPER
# Upstream keeps a literal image_path only if it names an existing file with one of these endings.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tiff", ".webp")
INDENT = 4


@dataclass(frozen=True)
class RepairContext:
    """What the repairs need to know about the step being run."""

    image_path: str
    output_dir: str
    is_file: Callable[[str], bool] = os.path.isfile
    image_size: tuple[int, int] | None = None  # (width, height) of the input; None: unknown


@dataclass
class Repaired:
    """The code after repair: `tree` compiles as-is (None when the code does not parse)."""

    source: str
    tree: ast.Module | None
    syntax_error: SyntaxError | None = None
    applied: list[str] = field(default_factory=list)
    make_dirs: list[str] = field(default_factory=list)

    def unparse(self) -> str:
        return ast.unparse(self.tree) if self.tree is not None else self.source


def repair(code: str, ctx: RepairContext) -> Repaired:
    """Apply every repair; never raises for bad model code (a SyntaxError is returned instead)."""
    source = fix_indentation(code)
    applied = ["indentation"] if source != _normalize_newlines(code) else []
    try:
        tree = ast.parse(source, filename="<string>", mode="exec")
    except SyntaxError as exc:
        return Repaired(source=source, tree=None, syntax_error=exc, applied=applied)
    except (ValueError, RecursionError, MemoryError) as exc:  # NUL bytes, absurd nesting
        err = SyntaxError(f"cannot parse the code: {exc}")
        return Repaired(source=source, tree=None, syntax_error=err, applied=applied)

    make_dirs: list[str] = []
    transformers: list[tuple[str, ast.NodeTransformer]] = [
        ("image_path", _ImagePathFixer(ctx)),
        ("output_dir", _OutputDirFixer(ctx.output_dir, make_dirs)),
        ("cv2_alias", _Cv2AliasFixer()),
    ]
    if ctx.image_size is not None and all(ctx.image_size):  # upstream skips this without a size
        transformers.append(("literal_box", repair_upstream.LiteralBoxFixer(*ctx.image_size)))
    transformers += [
        ("format_spec", repair_upstream.FormatSpecFixer()),
        ("image_slice", repair_upstream.ImageSliceFixer(ctx.image_path)),
        ("crop", _CropFixer()),
    ]
    for name, transformer in transformers:
        try:
            tree = transformer.visit(tree)
        except RecursionError:
            continue
        if getattr(transformer, "changed", False):
            applied.append(name)
    ast.fix_missing_locations(tree)
    return Repaired(source=source, tree=tree, applied=applied, make_dirs=sorted(set(make_dirs)))


# --------------------------------------------------------------------------------------------
# 1. indentation


def _normalize_newlines(code: str) -> str:
    return code.replace("\r\n", "\n").replace("\r", "\n")


def _parses(source: str) -> bool:
    try:
        ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


def fix_indentation(code: str) -> str:
    """Return the first of several increasingly bold re-indentations that parses (or a dedent)."""
    code = _normalize_newlines(code).strip("\n")
    candidates = [code, textwrap.dedent(code)]
    aligned = textwrap.dedent(align_first_line(code))
    candidates.append(aligned)
    detabbed = _expand_leading_tabs(aligned)
    candidates.append(detabbed)
    candidates.append(reindent(detabbed))
    for candidate in candidates:
        if _parses(candidate):
            return candidate
    return textwrap.dedent(code)


def _indent_of(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def align_first_line(code: str) -> str:
    """Give the first non-blank line the indentation of the second (a common extraction artefact)."""
    lines = code.split("\n")
    nonblank = [i for i, line in enumerate(lines) if line.strip()]
    if len(nonblank) < 2:
        return code
    first, second = nonblank[0], nonblank[1]
    if lines[first].rstrip().endswith(":"):
        return code  # the second line is legitimately deeper
    lines[first] = " " * _indent_of(lines[second]) + lines[first].lstrip(" ")
    return "\n".join(lines)


def _expand_leading_tabs(code: str) -> str:
    out = []
    for line in code.split("\n"):
        stripped = line.lstrip(" \t")
        lead = line[: len(line) - len(stripped)]
        out.append(lead.replace("\t", " " * INDENT) + stripped)
    return "\n".join(out)


def _scan_line(line: str, state: list[str], depth: int) -> tuple[int, str]:
    """Track bracket depth and open triple-quoted strings across lines; return (depth, last code char)."""
    i = 0
    last = ""
    while i < len(line):
        if state:
            quote = state[-1]
            if line.startswith(quote, i):
                state.pop()
                i += len(quote)
                continue
            i += 2 if line[i] == "\\" else 1
            continue
        ch = line[i]
        if ch == "#":
            break
        if line.startswith('"""', i) or line.startswith("'''", i):
            state.append(line[i : i + 3])
            i += 3
            last = "s"
            continue
        if ch in "\"'":
            end = i + 1
            while end < len(line) and line[end] != ch:
                end += 2 if line[end] == "\\" else 1
            i = end + 1
            last = "s"
            continue
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        if not ch.isspace():
            last = ch
        i += 1
    return depth, last


def reindent(code: str) -> str:
    """Re-indent by block structure: a line after `:` goes one level deeper, other lines snap to
    the nearest enclosing level. Continuation lines move with the line that opened them."""
    levels = [0]
    out: list[str] = []
    depth = 0
    strings: list[str] = []
    opens_block = False
    shift = 0
    continued = False
    for line in code.split("\n"):
        if not line.strip():
            out.append(line if strings else "")
            continue
        if strings:
            out.append(line)  # inside a triple-quoted string: content, not code
        elif depth > 0 or continued:
            new = max(0, _indent_of(line) + shift)
            out.append(" " * new + line.lstrip(" "))
        else:
            ind = _indent_of(line)
            if opens_block:
                new = ind if ind > levels[-1] else levels[-1] + INDENT
                levels.append(new)
            else:
                while len(levels) > 1 and levels[-1] > ind:
                    levels.pop()
                new = levels[-1]
            shift = new - ind
            out.append(" " * new + line.lstrip(" "))
        depth, last = _scan_line(line, strings, depth)
        continued = line.rstrip().endswith("\\") and not strings
        if depth == 0 and not strings and not continued:
            opens_block = last == ":"
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# 2-5. AST transformers


class _Fixer(ast.NodeTransformer):
    changed = False


class _ImagePathFixer(_Fixer):
    """`image_path = "..."` naming a file that does not exist becomes the true input path."""

    def __init__(self, ctx: RepairContext) -> None:
        self.ctx = ctx

    def _fix(self, value: ast.expr | None) -> ast.expr | None:
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            path = value.value
            if path != self.ctx.image_path and not (path.lower().endswith(IMAGE_EXTENSIONS) and self._exists(path)):
                self.changed = True
                return ast.copy_location(ast.Constant(self.ctx.image_path), value)
        return value

    def _exists(self, path: str) -> bool:
        try:
            return bool(self.ctx.is_file(path))
        except (OSError, ValueError):
            return False

    def visit_Assign(self, node: ast.Assign) -> ast.AST:
        self.generic_visit(node)
        if any(isinstance(t, ast.Name) and t.id == "image_path" for t in node.targets):
            fixed = self._fix(node.value)
            assert fixed is not None
            node.value = fixed
        return node

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.target, ast.Name) and node.target.id == "image_path":
            node.value = self._fix(node.value)
        return node


class _OutputDirFixer(_Fixer):
    """Every string literal under /mnt/data/temp_processed_images points at the question's output folder."""

    def __init__(self, output_dir: str, make_dirs: list[str]) -> None:
        self.output_dir = output_dir.rstrip("/")
        self.make_dirs = make_dirs

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        value = node.value
        if not isinstance(value, str) or UPSTREAM_OUTPUT_DIR not in value:
            return node
        new = _replace_prefix(value, UPSTREAM_OUTPUT_DIR, self.output_dir)
        if new == value:
            return node
        self.changed = True
        self._note_dirs(new)
        return ast.copy_location(ast.Constant(new), node)

    def _note_dirs(self, text: str) -> None:
        start = text.find(self.output_dir + "/")
        if start < 0:
            return
        rel = text[start + len(self.output_dir) + 1 :]
        sub = posixpath.dirname(rel)
        if not sub or sub.startswith("/"):
            return
        normal = posixpath.normpath(sub)
        if normal == "." or normal.startswith("..") or "{" in normal or "\n" in normal:
            return
        self.make_dirs.append(posixpath.join(self.output_dir, normal))


def _replace_prefix(text: str, old: str, new: str) -> str:
    """Replace `old` where it is a whole path prefix (followed by '/', a quote-ish end, or nothing)."""
    out = []
    i = 0
    while True:
        j = text.find(old, i)
        if j < 0:
            out.append(text[i:])
            break
        end = j + len(old)
        follows = text[end : end + 1]
        out.append(text[i:j])
        if follows in ("", "/", " ", "'", '"', "\n", ",", ")"):
            out.append(new)
        else:
            out.append(old)
        i = end
    return "".join(out)


class _Cv2AliasFixer(_Fixer):
    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.value, ast.Name) and node.value.id in CV_ALIASES:
            node.value = ast.copy_location(ast.Name(id="cv2", ctx=ast.Load()), node.value)
            self.changed = True
        return node

    def visit_Import(self, node: ast.Import) -> ast.AST:
        for alias in node.names:
            if alias.name in ("cv3", "cv4"):
                alias.asname = alias.asname or alias.name
                alias.name = "cv2"
                self.changed = True
        return node


class _CropFixer(_Fixer):
    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        func = node.func
        if not (isinstance(func, ast.Attribute) and func.attr == "crop"):
            return node
        one_positional = len(node.args) == 1 and not isinstance(node.args[0], ast.Starred) and not node.keywords
        box_keyword = not node.args and [k.arg for k in node.keywords] == ["box"]
        if not (one_positional or box_keyword):
            return node
        self.changed = True
        call = ast.Call(
            func=ast.Name(id=CROP_HELPER, ctx=ast.Load()),
            args=[func.value, *node.args],
            keywords=node.keywords,
        )
        return ast.copy_location(call, node)
