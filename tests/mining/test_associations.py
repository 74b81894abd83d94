import math

import polars as pl
import pytest

from prodassoc_core.data.contracts import PRODUCT_ASSOCIATIONS
from prodassoc_core.mining.associations import pair_counts, product_associations
from prodassoc_core.ops.settings import AssociationConfig

BASKETS = [["a", "b", "c"], ["a", "b"], ["a", "c"], ["b", "c", "d"], ["a", "b", "d"]]


def test_pair_counts_by_hand():
    pairs = pair_counts(BASKETS, min_pair_count=1)
    ab = pairs.filter((pl.col("product_id") == "a") & (pl.col("associated_product_id") == "b")).row(0, named=True)
    assert (ab["n_rule"], ab["n_antecedent"], ab["n_consequent"], ab["n_transactions"]) == (3, 4, 4, 5)
    # every pair appears in both directions, never with itself
    assert pairs.height == 2 * 6  # ab ac ad bc bd cd
    assert pairs.filter(pl.col("product_id") == pl.col("associated_product_id")).height == 0


def test_metrics_and_ranking_by_hand():
    table = pl.from_arrow(product_associations(BASKETS, AssociationConfig(method="confidence", min_pair_count=1, top_k=2)))
    d = table.filter(pl.col("product_id") == "d")
    # d is in 2 baskets, both with b: confidence 1, lift 1 * 5/4, conviction infinite -> null
    top = d.row(0, named=True)
    assert top["associated_product_id"] == "b" and top["rank"] == 1
    assert top["confidence"] == 1.0 and math.isclose(top["lift"], 5 / 4)
    assert top["conviction"] is None
    assert math.isclose(top["leverage"], 2 / 5 - (2 / 5) * (4 / 5))
    assert math.isclose(top["jaccard"], 2 / 4)
    # ties on confidence (c: a 2/3, b 2/3) break on lift, then count, then id
    c = table.filter(pl.col("product_id") == "c")["associated_product_id"].to_list()
    assert c == ["a", "b"]
    assert table.group_by("product_id").len()["len"].max() <= 2
    assert table.schema == pl.from_arrow(PRODUCT_ASSOCIATIONS.schema.empty_table()).schema


def test_min_pair_count_and_unknown_method():
    table = product_associations(BASKETS, AssociationConfig(method="confidence", min_pair_count=3))
    assert sorted(zip(table["product_id"].to_pylist(), table["associated_product_id"].to_pylist())) == [
        ("a", "b"), ("b", "a")
    ]
    with pytest.raises(ValueError, match="method"):
        product_associations(BASKETS, AssociationConfig(method="magic"))


def test_no_baskets_gives_empty_table():
    table = product_associations([], AssociationConfig(method="confidence"))
    assert table.num_rows == 0 and table.schema == PRODUCT_ASSOCIATIONS.schema
