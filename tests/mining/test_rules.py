"""prodassoc_core.mining.rules: arules' published Groceries results, hand-computed cases, properties."""

from __future__ import annotations

import math
import os
from collections import Counter
from fractions import Fraction
from itertools import combinations
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prodassoc_core.data.contracts import ASSOCIATION_RULES
from prodassoc_core.mining.rules import FREQUENT_ITEMSETS_SCHEMA, frequent_itemsets, min_count, mine_rules, rule_id
from prodassoc_core.ops.settings import MiningConfig


def cfg(**kw) -> MiningConfig:
    """Mining settings with arules' apriori defaults (maxlen 10) unless given."""
    return MiningConfig(**{"max_len": 10, **kw})


def by_rule(table: pa.Table) -> dict[tuple[tuple[str, ...], str], dict]:
    return {(tuple(r["antecedent"]), r["consequent"]): r for r in table.to_pylist()}


# --- Groceries: arules' published results -------------------------------------------


def groceries_dir() -> Path | None:
    """$PRODASSOC_SHARED_DIR/data/groceries, else ../shared/data/groceries next to the repo."""
    candidates = []
    if os.environ.get("PRODASSOC_SHARED_DIR"):
        candidates.append(Path(os.environ["PRODASSOC_SHARED_DIR"]) / "data" / "groceries")
    candidates.append(Path(__file__).resolve().parents[3] / "shared" / "data" / "groceries")
    return next((c for c in candidates if (c / "groceries.csv").is_file()), None)


@pytest.fixture(scope="module")
def groceries() -> list[list[str]]:
    """One basket per line, items split on "," and NOT stripped.

    arules keeps the labels as written ("cream cheese " and "roll products " end in a
    space, see groceries_iteminfo.csv); stripping would change no count either, since no
    two labels differ only in surrounding whitespace.
    """
    folder = groceries_dir()
    if folder is None:
        pytest.skip("shared Groceries data is not present on this machine")
    return [line.split(",") for line in (folder / "groceries.csv").read_text().splitlines()]


@pytest.mark.shared
def test_groceries_parsing_reproduces_arules_summary(groceries):
    items = frequent_itemsets(groceries, 0.0001, max_len=1)  # count >= 1: every item
    counts = dict(zip((s[0] for s in items["itemset"].to_pylist()), items["count"].to_pylist()))
    assert len(groceries) == 9835
    assert len(counts) == 169
    assert sum(counts.values()) == sum(len(set(b)) for b in groceries) == 43367
    assert Counter(counts).most_common(5) == [
        ("whole milk", 2513), ("other vegetables", 1903), ("rolls/buns", 1809),
        ("soda", 1715), ("yogurt", 1372),
    ]


GROCERIES_REFERENCE = [
    # (MiningConfig kwargs, published rule count, published length distribution or None)
    (dict(min_support=0.001, min_confidence=0.5), 5668, {2: 11, 3: 1461, 4: 3211, 5: 939, 6: 46}),
    (dict(min_support=0.001, min_confidence=0.8), 410, None),  # 406 with a float confidence test
    (dict(min_support=0.001, min_confidence=0.6), 2918, None),
    (dict(min_support=0.006, min_confidence=0.25, min_len=2), 463, None),  # MLwR
    (dict(min_support=0.003, min_confidence=0.5, max_len=4), 414, {2: 5, 3: 281, 4: 128}),
]


@pytest.mark.shared
@pytest.mark.parametrize(("params", "n_rules", "lengths"), GROCERIES_REFERENCE, ids=lambda v: str(v))
def test_groceries_matches_arules_rule_counts(groceries, params, n_rules, lengths):
    rules = mine_rules(groceries, cfg(**params))
    assert rules.schema == ASSOCIATION_RULES.schema
    assert rules.num_rows == n_rules
    if lengths is not None:
        assert dict(Counter(rules["length"].to_pylist())) == lengths


def close_to_published(value: float, published: str) -> bool:
    """value agrees with a number printed by R to as many decimals as were printed."""
    decimals = len(published.split(".")[1])
    return abs(value - float(published)) <= 0.5 * 10**-decimals + 1e-15


@pytest.mark.shared
def test_groceries_top_rules_by_lift_match_arules(groceries):
    rules = mine_rules(groceries, cfg(min_support=0.001, min_confidence=0.5))
    assert abs(max(rules["lift"].to_pylist()) - 18.99565) < 1e-4
    published = [
        (["Instant food products", "soda"], "hamburger meat", "0.001220132", "0.6315789", "18.99565"),
        (["popcorn", "soda"], "salty snack", "0.001220132", "0.6315789", "16.69779"),
        (["baking powder", "flour"], "sugar", "0.001016777", "0.5555556", "16.40807"),
        (["ham", "processed cheese"], "white bread", "0.001931876", "0.6333333", "15.04549"),
        (["Instant food products", "whole milk"], "hamburger meat", "0.001525165", "0.5", "15.03823"),
    ]
    top = rules.slice(0, 5).to_pylist()
    for row, (antecedent, consequent, support, confidence, lift) in zip(top, published, strict=True):
        assert (row["antecedent"], row["consequent"]) == (antecedent, consequent)
        assert close_to_published(row["support"], support)
        assert close_to_published(row["confidence"], confidence)
        assert close_to_published(row["lift"], lift)
    assert top[0]["n_rule"] == 12


@pytest.mark.shared
def test_groceries_metrics_agree_with_mlxtend(groceries):
    pd = pytest.importorskip("pandas")
    mlx = pytest.importorskip("mlxtend.frequent_patterns")
    encoding = pytest.importorskip("mlxtend.preprocessing")
    te = encoding.TransactionEncoder()
    onehot = pd.DataFrame(te.fit(groceries).transform(groceries), columns=te.columns_)
    itemsets = mlx.fpgrowth(onehot, min_support=0.003, use_colnames=True, max_len=4)
    theirs = mlx.association_rules(itemsets, num_itemsets=len(onehot), metric="confidence", min_threshold=0.5)
    theirs = theirs[theirs["consequents"].map(len) == 1]
    ours = by_rule(mine_rules(groceries, cfg(min_support=0.003, min_confidence=0.5, max_len=4)))
    assert len(theirs) == len(ours) == 414
    for t in theirs.itertuples():
        row = ours[(tuple(sorted(t.antecedents)), next(iter(t.consequents)))]
        for ours_col, their_col in [("support", "support"), ("confidence", "confidence"), ("lift", "lift"),
                                    ("leverage", "leverage"), ("conviction", "conviction"),
                                    ("zhangs_metric", "zhangs_metric"), ("jaccard", "jaccard")]:
            theirs_value = getattr(t, their_col)
            if row[ours_col] is None:
                assert math.isinf(theirs_value), ours_col
            else:
                assert math.isclose(row[ours_col], theirs_value, rel_tol=1e-9, abs_tol=1e-12), ours_col


# --- tiny, hand-computed -------------------------------------------------------------

SHOP = [
    ["milk", "bread"],
    ["milk", "bread", "butter"],
    ["milk"],
    ["bread", "butter"],
    ["milk", "bread", "eggs"],
]
# N=5; milk 4, bread 4, butter 2, eggs 1; milk&bread 3, bread&butter 2, milk&butter 1.


def test_every_metric_on_a_hand_computed_example():
    rules = mine_rules(SHOP, cfg(min_support=0.4, min_confidence=0.5))  # count >= 2
    assert rules.schema == ASSOCIATION_RULES.schema
    got = [(r["antecedent"], r["consequent"]) for r in rules.to_pylist()]
    # lift desc, confidence desc, then rule_id
    tied = sorted([(["milk"], "bread"), (["bread"], "milk")], key=lambda r: rule_id(*r))
    assert got == [(["butter"], "bread"), (["bread"], "butter"), *tied]
    r = by_rule(rules)
    expected = {
        # (A, c): n_A, n_c, n_AC, support, confidence, lift, leverage, conviction, zhang, jaccard
        (("milk",), "bread"): (4, 4, 3, 0.6, 0.75, 0.9375, -0.04, 0.8, -0.25, 0.6),
        (("bread",), "milk"): (4, 4, 3, 0.6, 0.75, 0.9375, -0.04, 0.8, -0.25, 0.6),
        (("butter",), "bread"): (2, 4, 2, 0.4, 1.0, 1.25, 0.08, None, 1 / 3, 0.5),
        (("bread",), "butter"): (4, 2, 2, 0.4, 0.5, 1.25, 0.08, 1.2, 1.0, 0.5),
    }
    assert r.keys() == expected.keys()
    names = ["n_antecedent", "n_consequent", "n_rule", "support", "confidence", "lift", "leverage",
             "conviction", "zhangs_metric", "jaccard"]
    for key, values in expected.items():
        row = r[key]
        assert row["n_transactions"] == 5 and row["length"] == 2
        assert row["rule_id"] == rule_id(*key)
        for name, value in zip(names, values):
            if value is None:
                assert row[name] is None, (key, name)
            else:
                assert math.isclose(row[name], value, rel_tol=1e-12, abs_tol=1e-15), (key, name, row[name])


def test_confidence_exactly_at_the_threshold_passes():
    # a in 5 baskets, a&b in 4: confidence 4/5. With N=6 the float ratio of supports
    # (4/6)/(5/6) is 0.7999999999999999, which is how float-based miners lose such rules.
    baskets = [["a", "b"]] * 4 + [["a"], ["b"]]
    assert (4 / 6) / (5 / 6) < 0.8
    rules = by_rule(mine_rules(baskets, cfg(min_support=0.1, min_confidence=0.8)))
    assert set(rules) == {(("a",), "b"), (("b",), "a")}
    assert rules[(("a",), "b")]["confidence"] == 0.8
    assert mine_rules(baskets, cfg(min_support=0.1, min_confidence=0.8000001)).num_rows == 0


def test_support_threshold_is_an_exact_count():
    assert min_count(0.001, 9835) == 10
    assert min_count(0.3, 10) == 3  # float: ceil(0.3 * 10) == ceil(3.0000000000000004) == 4
    assert min_count(1e-9, 10) == 1
    baskets = [["a", "b"]] * 3 + [["c"]] * 7
    assert by_rule(mine_rules(baskets, cfg(min_support=0.3, min_confidence=0.5))).keys() == {
        (("a",), "b"), (("b",), "a"),
    }
    assert mine_rules(baskets, cfg(min_support=0.30001, min_confidence=0.5)).num_rows == 0


def test_lengths_count_every_item_of_the_rule():
    baskets = [["a", "b", "c"]] * 3 + [["a", "b"], ["c"]]

    def lengths(**kw) -> Counter:
        rules = mine_rules(baskets, cfg(min_support=0.2, min_confidence=0.0, **kw))
        return Counter(rules["length"].to_pylist())

    assert lengths() == {2: 6, 3: 3}
    assert lengths(max_len=2) == {2: 6}
    assert lengths(min_len=3) == {3: 3}
    # min_len=1 adds {} => {c} for every frequent item: confidence = support of c
    assert lengths(min_len=1) == {1: 3, 2: 6, 3: 3}
    empty_lhs = by_rule(mine_rules(baskets, cfg(min_support=0.2, min_confidence=0.0, min_len=1, max_len=1)))
    assert set(empty_lhs) == {((), "a"), ((), "b"), ((), "c")}
    row = empty_lhs[((), "c")]
    assert (row["n_antecedent"], row["n_rule"], row["confidence"], row["lift"]) == (5, 4, 0.8, 1.0)
    assert row["zhangs_metric"] is None  # 0/0 when the antecedent is in every basket


def test_items_in_every_basket_are_still_found():
    # pyfim alone reports nothing here (an item set in all transactions is dropped).
    rules = by_rule(mine_rules([["a", "b"], ["b", "a"]], cfg(min_support=0.5, min_confidence=1.0, min_len=1)))
    assert set(rules) == {((), "a"), ((), "b"), (("a",), "b"), (("b",), "a")}
    assert rules[(("a",), "b")]["conviction"] is None
    itemsets = frequent_itemsets([["a"], ["a"]], 1.0)
    assert itemsets.to_pylist() == [{"itemset": ["a"], "length": 1, "count": 2, "support": 1.0}]


def test_duplicates_within_a_basket_count_once():
    rules = by_rule(mine_rules([["a", "a", "b"], ["a"], ["b", "b"]], cfg(min_support=0.1, min_confidence=0.0)))
    assert rules[(("a",), "b")]["n_antecedent"] == 2
    assert rules[(("a",), "b")]["n_rule"] == 1


@pytest.mark.parametrize(
    ("baskets", "params"),
    [
        ([], {}),
        ([[], []], dict(min_len=1)),
        (SHOP, dict(min_support=0.9)),  # nothing frequent
        (SHOP, dict(min_support=0.6, min_confidence=0.8)),  # milk & bread frequent, confidence 3/4 only
        (SHOP, dict(min_support=0.4, min_len=3)),  # no frequent triple
    ],
)
def test_empty_results_have_the_contract_schema(baskets, params):
    rules = mine_rules(baskets, cfg(**params))
    assert rules.num_rows == 0
    assert rules.schema == ASSOCIATION_RULES.schema


def test_frequent_itemsets_table():
    table = frequent_itemsets(SHOP, 0.4)
    assert table.schema == FREQUENT_ITEMSETS_SCHEMA
    # sorted by count desc, then length, then itemset
    assert [(r["itemset"], r["length"], r["count"]) for r in table.to_pylist()] == [
        (["bread"], 1, 4), (["milk"], 1, 4), (["bread", "milk"], 2, 3),
        (["butter"], 1, 2), (["bread", "butter"], 2, 2),
    ]
    assert table["support"].to_pylist() == [0.8, 0.8, 0.6, 0.4, 0.4]
    pairs = frequent_itemsets(SHOP, 0.4, min_len=2)
    assert pairs["itemset"].to_pylist() == [["bread", "milk"], ["bread", "butter"]]
    assert frequent_itemsets([], 0.5).schema == FREQUENT_ITEMSETS_SCHEMA


def test_output_does_not_depend_on_basket_or_item_order():
    params = cfg(min_support=0.2, min_confidence=0.3, min_len=1)
    shuffled = [list(reversed(b)) for b in reversed(SHOP)]
    assert mine_rules(shuffled, params).equals(mine_rules(SHOP, params))


@pytest.mark.parametrize("params", [dict(min_support=0.2, min_confidence=0.3, min_len=1),
                                    dict(min_support=0.4, min_confidence=0.5), dict(min_support=0.9)])
def test_integer_codes_give_the_rules_of_the_ids(params):
    """``items=``: baskets of codes into a vocabulary in any order mine to the very table of the ids."""
    baskets = [*SHOP, ["café", "日本茶", "a,b", "=>x", "bread"], ["日本茶", "a,b", "milk"]]
    items = sorted({i for b in baskets for i in b}, reverse=True)  # codes order unlike the ids
    index = {item: k for k, item in enumerate(items)}
    codes = [[index[i] for i in b] for b in baskets]
    assert mine_rules(codes, cfg(**params), items=items).equals(mine_rules(baskets, cfg(**params)))


def test_rule_id_is_stable_and_order_free():
    assert rule_id(["b", "a"], "c") == rule_id(["a", "b"], "c")
    assert rule_id(["a", "b"], "c") != rule_id(["a"], "b,c")
    assert rule_id(["a,b"], "c") != rule_id(["a", "b"], "c")
    # the vectorised ids in mine_rules are the same function, whatever the characters
    baskets = [["café", "日本茶", "a,b", "=>x"]] * 2 + [["café"]]
    for r in mine_rules(baskets, cfg(min_support=0.5, min_confidence=0.0, min_len=1)).to_pylist():
        assert r["rule_id"] == rule_id(r["antecedent"], r["consequent"])
    # pinned: ids must not change between runs, processes or releases
    assert rule_id([], "milk") == "d958be08ad38c009"
    assert rule_id(["soda", "Instant food products"], "hamburger meat") == "1fa04a54dc69e013"


# --- properties against a brute-force miner ---------------------------------------------


def brute_force_rules(baskets, c: MiningConfig) -> dict[tuple[tuple[str, ...], str], tuple[int, int, int]]:
    """Every rule by enumeration, thresholds on exact fractions: (A, c) -> (n_A, n_c, n_AC)."""
    sets = [frozenset(b) for b in baskets]
    n = len(sets)
    if n == 0:
        return {}
    count = lambda s: sum(1 for t in sets if s <= t)
    need = max(1, math.ceil(Fraction(str(c.min_support)) * n))
    conf = Fraction(str(c.min_confidence))
    items = sorted(set().union(*sets))
    out = {}
    for k in range(c.min_len, (c.max_len or len(items)) + 1):
        for combo in combinations(items, k):
            n_ac = count(frozenset(combo))
            if n_ac < need:
                continue
            for head in combo:
                body = frozenset(combo) - {head}
                n_a = count(body)
                if Fraction(n_ac, n_a) >= conf:
                    out[(tuple(sorted(body)), head)] = (n_a, count(frozenset([head])), n_ac)
    return out


baskets_st = st.lists(
    st.lists(st.sampled_from("abcdef"), max_size=6),  # duplicates allowed on purpose
    max_size=25,
)
config_st = st.builds(
    lambda s, c, lo, extra: MiningConfig(
        min_support=s, min_confidence=c, min_len=lo, max_len=None if extra is None else lo + extra
    ),
    st.sampled_from([0.01, 0.1, 0.15, 0.2, 0.25, 0.3, 0.5, 1.0]),
    st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.6, 0.75, 0.8, 1.0]),
    st.integers(1, 3),
    st.one_of(st.none(), st.integers(0, 2)),
)


@settings(max_examples=100, deadline=None)
@given(baskets_st, config_st)
def test_agrees_with_brute_force(baskets, c):
    rules = mine_rules(baskets, c)
    assert rules.schema == ASSOCIATION_RULES.schema
    got = {key: (r["n_antecedent"], r["n_consequent"], r["n_rule"]) for key, r in by_rule(rules).items()}
    assert got == brute_force_rules(baskets, c)
    assert rules.num_rows == len(got)  # no duplicate rules
    assert all(r["rule_id"] == rule_id(r["antecedent"], r["consequent"]) for r in rules.to_pylist())
    sort_key = [(-r["lift"], -r["confidence"], r["rule_id"]) for r in rules.to_pylist()]
    assert sort_key == sorted(sort_key)


@settings(max_examples=60, deadline=None)
@given(baskets_st, st.sampled_from([0.01, 0.1, 0.2, 0.3, 1.0]), st.integers(1, 3))
def test_itemsets_agree_with_brute_force(baskets, min_support, min_len):
    sets = [frozenset(b) for b in baskets]
    need = max(1, math.ceil(Fraction(str(min_support)) * len(sets)))
    items = sorted(set().union(*sets))
    expected = {}
    for k in range(min_len, len(items) + 1):
        for combo in combinations(items, k):
            n = sum(1 for t in sets if set(combo) <= t)
            if n >= need:
                expected[combo] = n
    table = frequent_itemsets(baskets, min_support, min_len=min_len)
    assert {tuple(r["itemset"]): r["count"] for r in table.to_pylist()} == expected


@settings(max_examples=80, deadline=None)
@given(baskets_st.filter(bool), config_st)
def test_metric_identities(baskets, c):
    rules = by_rule(mine_rules(baskets, c))
    for (antecedent, consequent), r in rules.items():
        n, n_a, n_c, n_ac = r["n_transactions"], r["n_antecedent"], r["n_consequent"], r["n_rule"]
        s_a, s_c, s_ac = n_a / n, n_c / n, n_ac / n
        assert n == len(baskets) and r["length"] == len(antecedent) + 1
        assert list(antecedent) == sorted(antecedent) and consequent not in antecedent
        assert r["support"] == pytest.approx(s_ac, rel=1e-12)
        assert r["confidence"] == pytest.approx(n_ac / n_a, rel=1e-12)
        assert r["confidence"] == pytest.approx(r["support"] / s_a, rel=1e-12)
        assert r["lift"] == pytest.approx(r["confidence"] / s_c, rel=1e-12)
        assert r["leverage"] == pytest.approx(r["support"] - s_a * s_c, rel=1e-9, abs=1e-12)
        assert 0.0 < r["jaccard"] <= 1.0
        assert (r["conviction"] is None) == (n_ac == n_a)
        if r["zhangs_metric"] is not None:
            assert -1.0 - 1e-12 <= r["zhangs_metric"] <= 1.0 + 1e-12
        else:
            assert n_a == n and n_ac == n_c
        if len(antecedent) == 1 and ((consequent,), antecedent[0]) in rules:
            reverse = rules[((consequent,), antecedent[0])]
            assert r["lift"] == reverse["lift"]  # exact: same integer products
            assert r["support"] == reverse["support"] and r["jaccard"] == reverse["jaccard"]
