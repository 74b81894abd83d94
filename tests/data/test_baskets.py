from datetime import datetime

import polars as pl

from prodassoc_core.data.baskets import ITEMS, baskets, product_lines
from prodassoc_core.data.contracts import TRANSACTIONS
from prodassoc_core.ops.settings import BasketConfig


def lines(rows):
    return pl.DataFrame(
        [
            {"order_id": o, "product_id": p, "quantity": q, "unit_price": u,
             "customer_id": None, "ordered_at": datetime(2011, 1, 1, 10, m), "store_id": None}
            for m, (o, p, q, u) in enumerate(rows)
        ],
        schema=TRANSACTIONS.polars_schema,
    ).lazy()


def test_basket_rules_drop_cancellations_returns_free_lines_and_non_products():
    frame = lines([
        ("1", "A", 2, 1.0),
        ("1", "K", 1, 1.0),
        ("1", "A", 1, 1.0),      # repeated product: counted once
        ("1", "POST", 1, 18.0),  # postage: not a product
        ("2", "A", -1, 1.0),     # return line
        ("2", "C", 1, 0.0),      # free line
        ("C3", "A", -2, 1.0),    # cancellation
        ("4", "gift_0001_10", 1, 10.0),
        ("5", "E", 1, None),     # unknown price is kept
    ])
    out = baskets(frame, BasketConfig()).collect()
    assert out["order_id"].to_list() == ["1", "5"]
    assert out[ITEMS].to_list() == [["A", "K"], ["E"]]


def test_rules_are_configurable():
    frame = lines([("C1", "A", 1, 1.0), ("2", "X", 1, 0.0)])
    cfg = BasketConfig(drop_cancellations=False, require_positive_price=False)
    assert product_lines(frame, cfg).collect().height == 2
