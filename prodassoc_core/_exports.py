"""Lazy public names for the core's sub-packages.

``from prodassoc_core.data import IngestError`` imports ``prodassoc_core.data.ingest`` only then:
a command that needs the rule miner (``prodassoc rules``) never pays for Great Expectations,
torch or MLflow because a package it passes through names them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping


def lazy_exports(package: str, modules: Iterable[str], names: Mapping[str, str]
                 ) -> tuple[list[str], Callable[[str], object]]:
    """``(__all__, __getattr__)`` for ``package``: its public modules and the names it re-exports
    from them (name -> module)."""
    modules = tuple(modules)

    def __getattr__(name: str) -> object:
        if name in names:
            return getattr(importlib.import_module(f"{package}.{names[name]}"), name)
        if name in modules:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return sorted({*modules, *names}), __getattr__
