"""Property-based checks of the co-purchase statistics behind product_associations.

tests/mining/test_rules.py already checks the rule miner (counts against brute force, metric
identities, lift symmetry of mined rules). What it does not cover is the pair path used
for product_associations: ``associations.pair_counts`` + ``metrics.rule_metrics``.
"""

from __future__ import annotations

from itertools import permutations

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prodassoc_core.mining.associations import pair_counts
from prodassoc_core.mining.metrics import rule_metrics

baskets_st = st.lists(st.lists(st.sampled_from("abcdefg"), max_size=7), min_size=1, max_size=30)


@settings(max_examples=100, deadline=None)
@given(baskets_st, st.integers(1, 3))
def test_pair_counts_and_metrics_match_definitions(baskets, min_pair_count):
    sets = [frozenset(b) for b in baskets]
    n = len(sets)
    count = lambda *items: sum(1 for s in sets if set(items) <= s)  # noqa: E731
    items = sorted(set().union(*sets))
    expected = {(a, b): count(a, b) for a, b in permutations(items, 2) if count(a, b) >= min_pair_count}

    pairs = rule_metrics(pair_counts(baskets, min_pair_count).lazy()).collect()
    rows = {(r["product_id"], r["associated_product_id"]): r for r in pairs.iter_rows(named=True)}
    assert {k: r["n_rule"] for k, r in rows.items()} == expected  # both directions, never (a, a)

    for (a, b), r in rows.items():
        assert (r["n_transactions"], r["n_antecedent"], r["n_consequent"]) == (n, count(a), count(b))
        support_ab, support_a = count(a, b) / n, count(a) / n
        assert r["support"] == pytest.approx(support_ab, rel=1e-12)
        # confidence(A => B) = support(A ∪ B) / support(A)
        assert r["confidence"] == pytest.approx(support_ab / support_a, rel=1e-12)
        assert r["lift"] == pytest.approx(r["confidence"] / (count(b) / n), rel=1e-12)
        reverse = rows[(b, a)]
        # symmetric measures are exactly equal in both directions (same integer products)
        for metric in ("support", "lift", "leverage", "jaccard", "n_rule"):
            assert r[metric] == reverse[metric], metric
        # confidence in the two directions differ exactly by the antecedent supports
        assert r["confidence"] * count(a) == pytest.approx(reverse["confidence"] * count(b), rel=1e-12)
        assert 0 < r["jaccard"] <= 1 and 0 < r["confidence"] <= 1
        assert (r["conviction"] is None) == (count(a, b) == count(a))


@settings(max_examples=50, deadline=None)
@given(baskets_st, st.randoms(use_true_random=False))
def test_pair_counts_do_not_depend_on_order(baskets, rnd):
    shuffled = [rnd.sample(b, len(b)) for b in baskets]
    rnd.shuffle(shuffled)
    key = ["product_id", "associated_product_id"]
    assert pair_counts(shuffled, 1).sort(key).equals(pair_counts(baskets, 1).sort(key))


def test_empty_and_single_item_baskets_give_no_pairs():
    assert pair_counts([["a"], [], ["b"]], 1).is_empty()
    assert pair_counts([["a"], [], ["b"]], 1).schema["n_rule"] == pl.Int64
