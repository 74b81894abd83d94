"""The nightly and the retraining, composed from the layers below.

Owns the nightly stages as plain functions and their one ordered list (``stages``),
retraining with the serving gate (``retrain``), what a run and a training record
(``run_summary``, ``train_summary``), the nightly's HTML report (``run_report``) and what a
data directory holds (``status``).
Prefect tasks (``tasks/``) and flows (``flows/``) wrap these; nothing here imports Prefect.

May import: models, mining, data, ops. Other packages import this one through the names below
(``from prodassoc_core.pipeline import ...``), never through its modules' private names;
the names load on first use, so importing the package costs nothing until one is used.
"""

from prodassoc_core._exports import lazy_exports

MODULES = ("retrain", "run_report", "run_summary", "stages", "status", "train_summary")
NAMES = {
    "NoDataError": "stages",
    "RetentionError": "stages",
}

__all__, __getattr__ = lazy_exports(__name__, MODULES, NAMES)
