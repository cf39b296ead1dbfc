"""The shape the code keeps (issue 15): no function longer than 40 lines, so each reads top-down.

Counted from the `def` line to the last line, decorators excluded. A Typer command's signature
declares its options (one per line once formatted), so a command is counted from its first body line.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "thyme_cli"
MOST_LINES = 40


def _is_typer_command(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A parameter declared as a typer.Option/Argument: in its annotation or as its default, directly
    or through a shared alias (flags.py's `o.ModelOpt`, a module's `QuantOpt` or `NAME_ARG`)."""
    args = node.args
    declared = [a.annotation for a in (*args.args, *args.kwonlyargs)] + [*args.defaults, *args.kw_defaults]
    for part in declared:
        text = ast.unparse(part) if part is not None else ""
        if "typer." in text or text.startswith("o.") or text.endswith(("Opt", "_ARG")):
            return True
    return False


def function_lengths(root: Path) -> list[tuple[int, str]]:
    """(lines, "path:line name") for every function under `root`."""
    rows: list[tuple[int, str]] = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                start = node.body[0].lineno if _is_typer_command(node) else node.lineno
                end = node.end_lineno or node.lineno
                rows.append((end - start + 1, f"{path.relative_to(root.parent)}:{node.lineno} {node.name}"))
    return rows


def test_no_function_is_longer_than_forty_lines() -> None:
    too_long = sorted((row for row in function_lengths(PACKAGE) if row[0] > MOST_LINES), reverse=True)
    assert not too_long, "functions over 40 lines:\n" + "\n".join(f"{n:4d} {where}" for n, where in too_long)


def test_the_length_rule_sees_long_functions_and_command_signatures(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(41))
    signature = "\n".join(f"    p{i}: o.ModelOpt = None," for i in range(30))
    old_style = "\n".join(f"    p{i}: int = typer.Option(1, '--p{i}')," for i in range(30))
    (package / "m.py").write_text(
        f"def long():\n{body}\n\n\ndef short():\n    return 1\n\n\n"
        f"def command(\n{signature}\n) -> None:\n    return None\n\n\n"
        f"def old_command(\n{old_style}\n) -> None:\n    return None\n\n\n"
        f"def plain(\n{signature.replace('o.ModelOpt', 'int')}\n) -> None:\n    return None\n",
        encoding="utf-8",
    )
    lengths = {where.split()[-1]: n for n, where in function_lengths(package)}
    assert lengths == {"long": 42, "short": 2, "command": 1, "old_command": 1, "plain": 33}
