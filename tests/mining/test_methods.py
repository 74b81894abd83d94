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
