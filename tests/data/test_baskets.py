from dataclasses import asdict
from datetime import datetime

import polars as pl
import pytest

from prodassoc_core.data.baskets import (
    ITEMS,
    baskets,
    describe_account,
    describe_split,
    line_account,
    load_basket_codes,
    load_baskets_file,
    product_lines,
    read_transactions_file,
    split_orders,
)
from prodassoc_core.data.contracts import TRANSACTIONS
from prodassoc_core.ops.basket_rules import BasketRules
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
        ("C3", "A", -2, 1.0),    # a cancellation (Online Retail's C536379): negative lines, returns
        ("4", "gift_0001_10", 1, 10.0),
        ("5", "E", 1, None),     # unknown price is kept
        ("CO-6", "K", 1, 2.0),   # an order id that starts with C is an order like any other
    ])
    out = baskets(frame, BasketConfig()).collect()
    assert out["order_id"].to_list() == ["1", "5", "CO-6"]
    assert out[ITEMS].to_list() == [["A", "K"], ["E"], ["K"]]


def test_rules_are_configurable():
    frame = lines([("C1", "A", 1, 1.0), ("2", "X", 1, 0.0)])
    assert product_lines(frame, BasketConfig(require_positive_price=False)).collect().height == 2
    # a retailer whose cancelled orders carry an id prefix says so; their positive lines go too
    cancelled = BasketConfig(drop_cancellations=True, cancellation_prefix="C")
    assert product_lines(frame, cancelled).collect().height == 0


def test_every_line_is_accounted_for_under_the_first_rule_that_drops_it():
    frame = lines([
        ("1", "A", 2, 1.0), ("1", "K", 1, 1.0), ("1", "A", 1, 1.0), ("1", "POST", 1, 18.0),
        ("2", "A", -1, 1.0), ("2", "C", 1, 0.0), ("C3", "POST", -2, 0.0), ("4", "POST", 1, 1.0),
        ("4", "gift_0001_10", 1, 10.0), ("5", "E", 1, None),
    ])
    cfg = BasketConfig(drop_cancellations=True)
    account = line_account(frame, cfg).collect()
    assert account.rows() == [
        ("cancelled order", None, 1),  # C3 would fail three rules: counted once, under the first
        ("return (quantity <= 0)", None, 1),
        ("price <= 0", None, 1),
        ("non-product code", "POST", 2),
        ("non-product code", "gift_0001_10", 1),
        ("kept", None, 4),
    ]
    assert account["lines"].sum() == 10 and product_lines(frame, cfg).collect().height == 4
    n = baskets(frame, cfg).collect().height
    assert describe_account(account, n, top_codes=1) == (
        "10 lines, 4 kept in 2 baskets; dropped: 1 cancelled order; 1 return (quantity <= 0); 1 price <= 0; "
        "3 non-product code (POST 2, 1 more)"
    )
    clean = lines([("1", "A", 1, 1.0)])
    assert describe_account(line_account(clean, BasketConfig()).collect(), 1) == "1 lines, 1 kept in 1 baskets; dropped: none"


def test_orders_whose_lines_span_days_or_stores_are_named():
    """An order is one visit: receipt numbers that restart each day or store merge visits into one
    basket. Such orders are found and described (none in Online Retail: 0 of 25,900 invoices)."""
    frame = lines([("1", "A", 1, 1.0), ("1", "K", 1, 1.0), ("2", "A", 1, 1.0), ("3", "K", 1, 1.0)]).collect()
    frame = frame.with_columns(
        ordered_at=pl.Series([datetime(2011, 1, 1, 10), datetime(2011, 1, 2, 9), datetime(2011, 1, 1, 11),
                              datetime(2011, 1, 1, 12)]),
        store_id=pl.Series(["s1", "s1", "s1", "s2"]),
    ).vstack(lines([("3", "A", 1, 1.0)]).collect().with_columns(store_id=pl.lit("s1"))).lazy()
    split = split_orders(frame).collect()
    assert split.rows() == [("1", 2, 1), ("3", 1, 2)]  # (order_id, days, stores), most days first
    assert describe_split(split, 3) == (
        "2 of 3 orders have lines on more than one day or in more than one store (order 1: 2 days, 1 store; "
        "order 3: 1 day, 2 stores): if order ids restart each day or store, several visits became one basket; "
        "make them unique before landing (prefix the store and the date)")
    assert split_orders(lines([("1", "A", 1, 1.0)])).collect().is_empty()


# --- basket files, as `prodassoc rules` reads them --------------------------------------------

def transactions_file(tmp_path, rows, **overrides):
    frame = lines(rows).collect().with_columns(**overrides)
    path = tmp_path / "transactions.parquet"
    frame.write_parquet(path)
    return path


SHOP_LINES = [
    ("1", "A", 2, 1.0), ("1", "K", 1, 1.0), ("1", "POST", 1, 18.0), ("C2", "A", -1, 1.0),
    ("3", "K", 1, 1.0), ("3", "X", 1, 2.0), ("3", "A", 1, 1.0), ("4", "X", 3, 2.0), ("5", "Z", -1, 1.0),
]


def test_basket_files_apply_the_basket_rules_and_codes_decode_to_the_same_baskets(tmp_path):
    path = transactions_file(tmp_path, SHOP_LINES)
    assert load_baskets_file(path) == [["A", "K"], ["A", "K", "X"], ["X"]]
    codes, items = load_basket_codes(path)
    assert items == ["A", "K", "X"]
    decoded = sorted(sorted(items[c] for c in basket) for basket in codes)  # sets, in no particular order
    assert decoded == sorted(load_baskets_file(path))
    assert all(isinstance(c, int) for basket in codes for c in basket)

    csv = tmp_path / "baskets.csv"
    csv.write_text("bread,butter\nmilk\n\nbread,jam,bread\n")
    codes, items = load_basket_codes(csv)
    assert [[items[c] for c in basket] for basket in codes] == load_baskets_file(csv) == [
        ["bread", "butter"], ["milk"], ["bread", "jam"]]


def test_a_transactions_file_is_checked_and_cast_as_the_contract_says(tmp_path):
    # stored types other than the contract's are cast as TRANSACTIONS.conform casts them
    path = transactions_file(tmp_path, [("17", "A", 1, 1.0), ("18", "K", 1, 1.0)],
                             order_id=pl.col("order_id").cast(pl.Int64), quantity=pl.col("quantity").cast(pl.Int32))
    assert read_transactions_file(path).collect_schema()["order_id"] == pl.String
    assert load_baskets_file(path) == [["A"], ["K"]]
    lean = lines([("1", "A", 1, 1.0), ("1", "K", 1, 1.0)]).collect().drop("unit_price", "customer_id", "store_id")
    lean.write_parquet(path)  # the optional columns absent: a missing price passes the price rule
    assert load_baskets_file(path) == [["A", "K"]]
    # a missing required column, missing ids, a file that is not Parquet: ValueError naming the problem
    pl.DataFrame({"order_id": ["1"], "product_id": ["A"]}).write_parquet(path)
    with pytest.raises(ValueError, match=r"transactions: missing required column\(s\) \['quantity'"):
        load_basket_codes(path)
    transactions_file(tmp_path, [("1", "A", 1, 1.0), ("2", None, 1, 1.0)])
    with pytest.raises(ValueError, match=r"\['product_id'\] have missing values"):
        load_basket_codes(path)
    path.write_text("order_id,product_id\n1,A\n")
    with pytest.raises(ValueError, match="not a readable transactions Parquet file"):
        load_basket_codes(path)
    with pytest.raises(FileNotFoundError):
        load_baskets_file(tmp_path / "missing.parquet")


def test_the_plain_basket_rules_are_the_settings_defaults():
    """`prodassoc rules` applies BasketRules() without pydantic; the nightly BasketConfig(): the same rules."""
    assert asdict(BasketRules()) == BasketConfig().model_dump()
