"""Ingestion stays in small pieces (issue 13): no function or method of its modules is over 80 lines.

``ingest`` runs the steps; each step lives in its own module (see ``ingest``'s docstring).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2] / "prodassoc_core" / "data"
INGEST_MODULES = ("ingest", "landing", "loading", "verdicts", "reconcile", "staging", "manifest")
MAX_LINES = 80


def function_lengths(path: Path) -> dict[str, int]:
    """'Class.method' or 'function' (nested ones too) -> its lines, decorators and docstring included."""
    out: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                    out[name] = child.end_lineno - first + 1
                visit(child, f"{name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(path.read_text()), "")
    return out


@pytest.mark.parametrize("module", INGEST_MODULES)
def test_no_ingest_function_is_over_80_lines(module):
    lengths = function_lengths(DATA / f"{module}.py")
    assert lengths, f"{module}.py has no function: is the list of ingest modules stale?"
    too_long = {name: n for name, n in lengths.items() if n > MAX_LINES}
    assert too_long == {}, f"{module}.py: functions over {MAX_LINES} lines (split them by what they do): {too_long}"


def test_the_length_check_sees_methods_and_nested_functions(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("class A:\n    @property\n    def f(self):\n        def g():\n            pass\n        return 1\n")
    assert function_lengths(source) == {"A.f": 5, "A.f.g": 2}
