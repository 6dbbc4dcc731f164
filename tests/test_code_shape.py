"""The code stays readable: no function over 60 lines, no call with more than 6 positional arguments.

Measured on the syntax tree (a function's lines from ``def`` to its last line, docstring included),
so it holds however the code is formatted.  ruff's PLR0913/PLR0915 count parameters and statements,
not lines, and not the calls.
"""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import ROOT

MAX_LINES = 60
MAX_POSITIONAL = 6
#: Calls whose positional arguments are a list of like things (a table's columns, a row's cells),
#: not an argument list to remember.
VARIADIC = {"Table", "select", "add_row"}
FILES = sorted((ROOT / "autotl").rglob("*.py"))


def _name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _shape(path: Path, root: Path = ROOT) -> tuple[list[str], list[str]]:
    """The functions over MAX_LINES and the calls over MAX_POSITIONAL in one file, as ``file:line name (n)``."""
    where = path.relative_to(root).as_posix()
    long, wide = [], []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_LINES:
                long.append(f"{where}:{node.lineno} {node.name} ({lines} lines)")
        elif isinstance(node, ast.Call) and _name(node) not in VARIADIC:
            positional = sum(not isinstance(a, ast.Starred) for a in node.args)
            if positional > MAX_POSITIONAL:
                wide.append(f"{where}:{node.lineno} {_name(node)}(...) ({positional} positional)")
    return long, wide


def test_the_check_sees_a_long_function_and_a_wide_call(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    bad = tmp_path / "bad.py"
    bad.write_text(f"def f():\n{body}\n\n\nf(1, 2, 3, 4, 5, 6, 7)\nTable(1, 2, 3, 4, 5, 6, 7)\n")
    long, wide = _shape(bad, tmp_path)
    assert long == ["bad.py:1 f (61 lines)"]
    assert wide == ["bad.py:64 f(...) (7 positional)"]  # a table's columns are a list, not counted


def test_no_function_over_60_lines_and_no_call_with_more_than_6_positional_arguments() -> None:
    assert len(FILES) > 50
    long, wide = [], []
    for path in FILES:
        found = _shape(path)
        long += found[0]
        wide += found[1]
    assert not long, f"functions over {MAX_LINES} lines (split them at their steps): {long}"
    assert not wide, f"calls with more than {MAX_POSITIONAL} positional arguments: {wide}"
