"""Configuration and process safety, beside every stage.

Owns the typed settings of a run (``settings``) and the file locks that keep runs,
ingestion and view refreshes apart (``locks``).

May import: nothing else of prodassoc_core. Other packages import this one through the names below
(``from prodassoc_core.ops import ...``), never through its modules' private names;
the names load on first use, so importing the package costs nothing until one is used.
"""

from prodassoc_core._exports import lazy_exports

MODULES = ("basket_rules", "locks", "settings")
NAMES = {
    "BasketRules": "basket_rules",
    "LockBusyError": "locks",
    "ASSOCIATION_METHODS": "settings",
    "AssociationConfig": "settings",
    "BasketConfig": "settings",
    "EVALUATION_METHODS": "settings",
    "EncoderSpec": "settings",
    "GnnConfig": "settings",
    "GraphConfig": "settings",
    "HybridConfig": "settings",
    "MODEL_METHODS": "settings",
    "MiningConfig": "settings",
    "MlmConfig": "settings",
    "PairConfig": "settings",
    "SelectionConfig": "settings",
    "SparkConfig": "settings",
    "check_spark_master": "settings",
    "Settings": "settings",
    "TrainingConfig": "settings",
    "ValidationConfig": "settings",
    "from_environment": "settings",
    "unknown_environment": "settings",
}

__all__, __getattr__ = lazy_exports(__name__, MODULES, NAMES)
