"""The model chain and what is served from it.

Owns training loops and devices (``training``), the BERT-family encoders (``encoders``),
masked-language-model pre-training (``mlm``), product pairs (``pairs``), the fine-tuned teacher
(``teacher``), the distilled student (``student``), product vectors (``embeddings``), the
product graph and its GNN (``graph``, ``gnn``), the hybrid ranking (``hybrid``), the chain of
stages (``chain``), registered models and their use (``champions``, ``tracking``) and the
point-in-time choice of what serves a date (``serving``).

May import: mining, data, ops. Other packages import this one through the names below
(``from prodassoc_core.models import ...``), never through its modules' private names;
the names load on first use, so importing the package costs nothing until one is used.
"""

from prodassoc_core._exports import lazy_exports

MODULES = ("chain", "champions", "embeddings", "encoders", "gnn", "graph", "hybrid", "mlm", "pairs", "serving", "student", "teacher", "tracking", "training")
NAMES = {
    "budget_lines": "chain",
    "AS_OF_TAG": "champions",
    "champion_dir": "champions",
    "resolve_pretrained": "encoders",
    "StoreError": "tracking",
    "Device": "training",
    "StageResult": "training",
    "choose_device": "training",
    "device_of": "training",
    "flatten": "training",
}

__all__, __getattr__ = lazy_exports(__name__, MODULES, NAMES)
