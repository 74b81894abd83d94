"""Classic association mining and the protocol every ranking is judged by.

Owns frequent itemsets and rules (``rules``) with their measures (``metrics``), pair counts
and product associations (``associations``), the classic ranking methods (``methods``), the
held-out evaluation protocol: temporal split, queries, NDCG (``protocol``), and the choice of
the classic method per catalog (``selection``), and the same counts, rules and pair rankings as
Spark jobs for ``engine: spark`` (``spark_mining``).

May import: data, ops. Other packages import this one through the names below
(``from prodassoc_core.mining import ...``), never through its modules' private names;
the names load on first use, so importing the package costs nothing until one is used.
"""

from prodassoc_core._exports import lazy_exports

MODULES = ("associations", "methods", "metrics", "protocol", "rules", "selection", "spark_mining")
NAMES = {
    "basket_matrix": "associations",
    "DecayedConfig": "methods",
    "decayed_associations": "methods",
    "decayed_signals": "methods",
    "popular_products": "methods",
    "rule_metrics": "metrics",
    "relevant_sets": "protocol",
    "score_associations": "protocol",
    "frequent_itemset_counts": "rules",
    "frequent_itemsets": "rules",
    "mine_rules": "rules",
    "label": "selection",
}

__all__, __getattr__ = lazy_exports(__name__, MODULES, NAMES)
