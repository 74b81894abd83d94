import itertools
from datetime import datetime, timedelta

import polars as pl
import pytest

from prodassoc_core.data.contracts import PRODUCT_ASSOCIATIONS
from prodassoc_core.mining.associations import pair_counts
from prodassoc_core.mining.methods import METHODS, config_associations, publishable
from prodassoc_core.ops.settings import AssociationConfig

AS_OF = datetime(2024, 3, 1)
ITEMS = [["a", "b", "c"], ["a", "b"], ["a", "c"], ["b", "c", "d"], ["a", "b", "d"], ["e"]]
TRAIN = pl.DataFrame(
    {
        "order_id": [str(i) for i in range(len(ITEMS))],
        "ordered_at": [AS_OF - timedelta(days=10 * (len(ITEMS) - i)) for i in range(len(ITEMS))],
        "items": ITEMS,
    }
)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_publishes_the_same_table_with_true_counts(method):
    cfg = AssociationConfig(method=method, min_pair_count=1, top_k=3)
    table = publishable(config_associations(TRAIN, AS_OF, cfg), ITEMS)
    assert table.schema == PRODUCT_ASSOCIATIONS.schema
    frame = pl.from_arrow(table)
    assert frame.height > 0 and set(frame["method"]) == {method}
    assert frame.group_by("product_id").agg(pl.col("rank").max())["rank"].max() <= 3
    assert (frame["product_id"] != frame["associated_product_id"]).all()
    # counts attached to each row are the baskets' true co-purchase counts
    truth = {
        (r["product_id"], r["associated_product_id"]): r["n_rule"]
        for r in pair_counts(ITEMS, 1).iter_rows(named=True)
    }
    for r in frame.iter_rows(named=True):
        assert r["n_rule"] == truth.get((r["product_id"], r["associated_product_id"]), 0)
        assert r["n_transactions"] == len(ITEMS)


def test_training_baskets_on_or_after_as_of_are_refused():
    late = TRAIN.with_columns(pl.lit(AS_OF).alias("ordered_at"))
    with pytest.raises(ValueError, match="before as_of"):
        config_associations(late, AS_OF, AssociationConfig(method="decayed_damped"))


def test_the_hybrids_decayed_signals_are_the_top_lists_and_every_pairs_score():
    """decayed_signals (one basket matrix, one weighted count): the top lists are exactly
    decayed_associations'; every pair's score, the ones below min_pair_count too, is its
    definition, c(a, b) / c(b) ** exponent, and so is c(b); a product outside the window has none."""
    from prodassoc_core.mining.methods import DecayedConfig, decayed_associations, decayed_signals

    ids = ["a", "b", "c", "d", "e", "new"]
    for cfg in (DecayedConfig(top_k=2, min_pair_count=2), DecayedConfig(top_k=3, half_life_days=15.0, min_pair_count=1)):
        top, scores, c_b = decayed_signals(TRAIN, AS_OF, cfg, ids)
        assert top.equals(decayed_associations(TRAIN, AS_OF, cfg))
        weights = [2 ** (-(AS_OF - t).days / (cfg.half_life_days or float("inf"))) / max(len(i) - 1, 1) ** cfg.size_exponent
                   for t, i in zip(TRAIN["ordered_at"], ITEMS)]
        c = {p: sum(w for w, i in zip(weights, ITEMS) if p in i) for p in ids}
        assert c_b.tolist() == pytest.approx([c[p] for p in ids])
        for (i, p), (j, q) in itertools.product(enumerate(ids), repeat=2):
            c_pq = sum(w for w, basket in zip(weights, ITEMS) if p != q and {p, q} <= set(basket))
            expected = c_pq / c[q] ** cfg.popularity_exponent if c_pq else 0.0
            assert scores[i, j] == pytest.approx(expected), (p, q)
        assert c_b[5] == 0 and scores[5].nnz == 0 and scores[:, 5].nnz == 0  # never sold: no score
    assert top.filter(pl.col("product_id") == "a")["rank"].to_list() == [1, 2, 3]
