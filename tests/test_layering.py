"""The core's import graph has no cycle (issue 13): every import of one ``prodassoc_core`` module by
another, at module level or inside a function, is an edge; a cycle means two modules that cannot
be read, tested or moved apart."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "prodassoc_core"


def import_graph() -> dict[str, set[str]]:
    """module -> the core modules it imports (``from prodassoc_core import x``, ``import prodassoc_core.x``,
    ``from prodassoc_core.x import y``), wherever the import statement stands."""
    modules = {p.stem for p in CORE.glob("*.py") if p.stem != "__init__"}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for m in modules:
        for node in ast.walk(ast.parse((CORE / f"{m}.py").read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "prodassoc_core":
                    names = [a.name for a in node.names]
                elif node.module.startswith("prodassoc_core."):
                    names = [node.module.split(".")[1]]
            elif isinstance(node, ast.Import):
                names = [a.name.split(".")[1] for a in node.names if a.name.startswith("prodassoc_core.")]
            graph[m] |= {n for n in names if n in modules and n != m}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_core_has_no_import_cycle():
    found = cycles(import_graph())
    assert found == [], f"import cycles in prodassoc_core: {found}"


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
