"""The evaluation harness: every method scored on held-out days, and its report.

Owns running the protocol over the served methods, the models and the baselines
(``harness``) and the Markdown report (``report``).

May import: pipeline, models, mining, data, ops. Other packages import this one through the names below
(``from prodassoc_core.evaluation import ...``), never through its modules' private names;
the names load on first use, so importing the package costs nothing until one is used.
"""

from prodassoc_core._exports import lazy_exports

MODULES = ("harness", "report")
NAMES = {
    "markdown_table": "report",
}

__all__, __getattr__ = lazy_exports(__name__, MODULES, NAMES)
