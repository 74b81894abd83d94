"""The core's layout is its architecture (issue 13).

- No import cycles: every import of one ``prodassoc_core`` module by another, at module level or
  inside a function, is an edge; a cycle means two modules that cannot be read, tested or moved apart.
- The layers point one way: ops <- data <- mining <- models <- pipeline <- evaluation. A module
  imports only from its own package or from the packages below it.
- Between packages, imports go through the package's public names (its ``__all__``): never
  ``from prodassoc_core.data.ingest import ...`` from outside ``data``.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "prodassoc_core"
LAYERS = ("ops", "data", "mining", "models", "pipeline", "evaluation")  # each may import the ones before it


def core_modules() -> dict[str, Path]:
    """'data.ingest' -> its file, for every module of every sub-package."""
    return {f"{p.parent.name}.{p.stem}": p for layer in LAYERS for p in (CORE / layer).glob("*.py")
            if p.stem != "__init__"}


def imports_of(path: Path) -> list[tuple[str, list[str]]]:
    """(imported module path relative to prodassoc_core, the names taken) for each import statement."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("prodassoc_core"):
            out.append((node.module.removeprefix("prodassoc_core").lstrip("."), [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name.removeprefix("prodassoc_core."), []) for a in node.names if a.name.startswith("prodassoc_core.")]
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the core modules it imports, resolving package-level names to their modules."""
    modules = core_modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for m, path in modules.items():
        for target, names in imports_of(path):
            if target in modules:
                graph[m].add(target)
            elif target in LAYERS:
                package = importlib.import_module(f"prodassoc_core.{target}")
                for name in names:
                    module = name if name in package.MODULES else package.NAMES.get(name)
                    if module:
                        graph[m].add(f"{target}.{module}")
        graph[m].discard(m)
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


def layering_violations() -> list[str]:
    """Imports that point up a layer, reach into another package's module, or name a private name."""
    found = []
    for m, path in core_modules().items():
        own = m.split(".")[0]
        for target, names in imports_of(path):
            if not target:
                found.append(f"{m}: imports prodassoc_core itself ({names})")
                continue
            package = target.split(".")[0]
            if package not in LAYERS:
                continue  # prodassoc_core._exports
            if LAYERS.index(package) > LAYERS.index(own):
                found.append(f"{m}: imports {target} from a layer above ({package} over {own})")
            elif package != own:
                if target != package:
                    found.append(f"{m}: imports {target}: go through prodassoc_core.{package}'s public names")
                else:
                    public = importlib.import_module(f"prodassoc_core.{package}").__all__
                    found += [f"{m}: {package}.{n} is not public" for n in names if n not in public]
    return found


def test_every_core_module_belongs_to_a_layer():
    loose = sorted(p.name for p in CORE.glob("*.py") if p.stem not in {"__init__", "_exports"})
    assert loose == [], f"modules outside the layer packages: {loose}"
    packages = sorted(p.name for p in CORE.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert packages == sorted(LAYERS)


def test_the_core_has_no_import_cycle():
    graph = import_graph()
    assert sum(map(len, graph.values())) > 50  # the resolver sees the imports
    found = cycles(graph)
    assert found == [], f"import cycles in prodassoc_core: {found}"


def test_the_layers_point_one_way_through_public_names():
    assert layering_violations() == []


@pytest.mark.parametrize("layer", LAYERS)
def test_each_package_says_what_it_owns_and_every_public_name_resolves(layer):
    package = importlib.import_module(f"prodassoc_core.{layer}")
    assert "Owns" in package.__doc__ and "May import" in package.__doc__
    modules = {p.stem for p in (CORE / layer).glob("*.py") if p.stem != "__init__"}
    assert set(package.MODULES) == modules
    for name, module in package.NAMES.items():
        assert module in modules and hasattr(importlib.import_module(f"prodassoc_core.{layer}.{module}"), name), name


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
