"""Bundles a merchandiser can act on (issue 14, item 4): ranked by the orders they add beyond
chance, not by raw lift of rare sets; minimum counts; true figures and a one-line explanation."""

from __future__ import annotations

import itertools

import polars as pl
import pytest

from prodassoc_core.data.contracts import BUNDLES
from prodassoc_core.models import hybrid


def baskets() -> list[list[str]]:
    """200 orders: a popular pair (X, Y: 70 orders each, 60 together, lift 2.4), a rare pair
    (R1, R2) bought only together (12 orders, lift 16.7), a triple (T1, T2, T3) in 20 orders,
    and a pair at about chance (F, G: lift 1.3)."""
    out = [["X", "Y"]] * 60 + [["X", "F"]] * 10 + [["Y", "F"]] * 10 + [["R1", "R2"]] * 12
    out += [["T1", "T2", "T3"]] * 20 + [["T1", "F"]] * 10 + [["F", "G"]] * 30 + [["G"]] * 48
    return [list(b) for b in out]


def all_linked(items: list[list[str]]) -> pl.DataFrame:
    products = sorted({i for b in items for i in b})
    pairs = [(p, q) for p, q in itertools.permutations(products, 2)]
    return pl.DataFrame(pairs, schema={"product_id": pl.String, "associated_product_id": pl.String}, orient="row")


def test_support_weighted_ranking_puts_the_popular_pair_above_the_rare_high_lift_pair():
    items = baskets()
    found = hybrid.bundles(items, all_linked(items), min_support=0.05, min_baskets=10, min_item_baskets=10)
    ranked = [tuple(p) for p in found["products"].to_list()]
    assert ranked[0] == ("X", "Y")
    rare = found.filter(pl.col("products") == ["R1", "R2"]).row(0, named=True)
    top = found.row(0, named=True)
    assert rare["lift"] > 6 * top["lift"]  # raw lift would have put the rare pair first
    assert rare["bundle_rank"] > top["bundle_rank"]
    assert found["extra_baskets"].is_sorted(descending=True)
    assert found["bundle_rank"].to_list() == list(range(1, found.height + 1))
    assert ("X", "F") not in ranked and ("F", "Y") not in ranked  # bought together less than twice chance


def test_figures_are_true_and_the_explanation_states_them():
    items = baskets()
    found = hybrid.bundles(items, all_linked(items), min_support=0.05, min_baskets=10, min_item_baskets=10)
    n = len(items)
    for row in found.iter_rows(named=True):
        ps = set(row["products"])
        counts = [sum(1 for b in items if p in b) for p in row["products"]]
        together = sum(1 for b in items if ps <= set(b))
        expected = n
        for c in counts:
            expected *= c / n
        assert row["n_baskets"] == together and row["support"] == pytest.approx(together / n)
        assert row["expected_baskets"] == pytest.approx(expected)
        assert row["extra_baskets"] == pytest.approx(together - expected)
        assert row["lift"] == pytest.approx(together / expected)
        assert row["min_item_baskets"] == min(counts) and row["attach_rate"] == pytest.approx(together / min(counts))
    assert found.row(0, named=True)["explanation"] == (
        "both bought together in 60 orders (30.0% of orders), 2.4x as often as chance (36 more orders); "
        "86% of the orders of its least-sold product hold both")
    triple = found.filter(pl.col("size") == 3).row(0, named=True)
    assert triple["explanation"] == (
        f"all 3 bought together in 20 orders (10.0% of orders), {triple['lift']:,.1f}x as often as chance "
        f"({triple['extra_baskets']:,.0f} more orders); 100% of the orders of its least-sold product hold all 3"
    )
    pair = found.filter(pl.col("products") == ["R1", "R2"]).row(0, named=True)
    assert pair["explanation"].startswith("both bought together in 12 orders (6.0% of orders), 16.7x as often as chance")
    assert pair["explanation"].endswith("100% of the orders of its least-sold product hold both")
    BUNDLES.conform(found.with_columns(titles=pl.col("products")).to_arrow())  # the published contract holds it


def test_minimum_counts_and_lift_drop_sets_nobody_can_sell_or_that_are_chance():
    items = baskets()
    linked = all_linked(items)
    strict = hybrid.bundles(items, linked, min_support=0.05, min_baskets=10, min_item_baskets=15)
    assert ["R1", "R2"] not in strict["products"].to_list()  # each sold in 12 orders only
    assert (strict["min_item_baskets"] >= 15).all()
    few = hybrid.bundles(items, linked, min_support=0.05, min_baskets=25, min_item_baskets=1, min_lift=1.0)
    assert (few["n_baskets"] >= 25).all() and ["X", "Y"] in few["products"].to_list()
    assert ["T1", "T2", "T3"] not in few["products"].to_list()
    chance = hybrid.bundles(items, linked, min_support=0.05, min_baskets=1, min_item_baskets=1, min_lift=1.0)
    high = hybrid.bundles(items, linked, min_support=0.05, min_baskets=1, min_item_baskets=1, min_lift=2.0)
    assert (high["lift"] >= 2.0).all() and high.height < chance.height
    # only pairs associated in the published lists make a bundle
    only_xy = linked.filter(pl.col("product_id").is_in(["X", "Y"]) & pl.col("associated_product_id").is_in(["X", "Y"]))
    assert hybrid.bundles(items, only_xy, min_support=0.05, min_item_baskets=1, min_lift=1.0)["products"].to_list() == [
        ["X", "Y"]]


def test_same_baskets_in_any_order_give_the_same_bundles():
    import random

    items = baskets()
    shuffled = [list(reversed(b)) for b in items]
    random.Random(0).shuffle(shuffled)
    linked = all_linked(items)
    a = hybrid.bundles(items, linked, min_support=0.05, min_baskets=1, min_item_baskets=1, min_lift=1.0)
    b = hybrid.bundles(shuffled, linked.sample(fraction=1.0, shuffle=True, seed=1), min_support=0.05, min_baskets=1,
                       min_item_baskets=1, min_lift=1.0)
    assert a.height > 5 and a.equals(b)


def test_item_sets_in_any_item_order_give_the_same_bundles():
    """bundles_of takes pyfim's item sets as reported (items in no order) or an engine's sorted
    lists: the pair check, the figures and the ids are the same."""
    from prodassoc_core.mining import frequent_itemset_counts

    items = baskets()
    linked = all_linked(items).filter(pl.col("product_id") != "G")  # one direction only: F-G still linked
    counts = {p: sum(p in set(b) for b in items) for p in {i for b in items for i in b}}
    sets = frequent_itemset_counts(items, 0.05, min_len=2, max_len=4)
    assert any(list(s) != sorted(s) for s, _ in sets)  # pyfim's order is not the ids' order
    found = [hybrid.bundles_of([(order(s), c) for s, c in sets], counts, len(items), linked, min_baskets=10,
                               min_item_baskets=10, min_lift=1.0)
             for order in (sorted, lambda s: sorted(s, reverse=True), tuple)]
    assert found[0].height >= 4
    assert found[0].equals(found[1]) and found[0].equals(found[2])
    assert found[0].equals(hybrid.bundles(items, linked, min_support=0.05, min_baskets=10, min_item_baskets=10,
                                          min_lift=1.0))
    assert all(p == sorted(p) for p in found[0]["products"].to_list())
