import math
import random
from datetime import datetime, timedelta

import polars as pl
import pytest

from prodassoc_core.mining.methods import DecayedConfig, decayed_associations, method_associations, popular_products
from prodassoc_core.mining.protocol import (
    basket_completion,
    fill_with_popular,
    per_product_metrics,
    rank_metrics,
    relevant_sets,
    score_associations,
    split_baskets,
)

LOG3 = math.log2(3)  # the discount's denominator at position 2


def ranking(rows: list[tuple[str, str, int]]) -> pl.DataFrame:
    return pl.DataFrame(
        rows, schema={"product_id": pl.String, "associated_product_id": pl.String, "rank": pl.Int32}, orient="row"
    )


def lists(table: pl.DataFrame) -> dict[str, list[str]]:
    grouped = table.sort("product_id", "rank").group_by("product_id", maintain_order=True).agg("associated_product_id")
    return dict(grouped.iter_rows())


# --- rank_metrics ------------------------------------------------------------------------------


def test_rank_metrics_exact_values_with_fewer_than_k_predictions():
    hr, recall, ndcg = rank_metrics(["a", "x", "b"], {"a", "b"}, k=10)
    assert (hr, recall) == (1.0, 1.0)
    assert math.isclose(ndcg, (1 + 1 / 2) / (1 + 1 / LOG3))  # hits at 1 and 3; ideal: 2 hits at 1, 2


def test_rank_metrics_perfect_and_empty_lists():
    assert rank_metrics(["b", "a"], {"a", "b"}) == (1.0, 1.0, 1.0)
    assert rank_metrics([], {"a"}) == (0.0, 0.0, 0.0)
    assert rank_metrics(["x", "y"], {"a"}) == (0.0, 0.0, 0.0)


def test_duplicates_count_once_and_occupy_their_position():
    # the second "a" is a miss at position 2, so "b" earns the position-3 discount
    hr, recall, ndcg = rank_metrics(["a", "a", "b"], {"a", "b"}, k=10)
    assert (hr, recall) == (1.0, 1.0)
    assert math.isclose(ndcg, (1 + 1 / 2) / (1 + 1 / LOG3))
    # a repeated relevant item cannot push recall above 1
    assert rank_metrics(["a", "a"], {"a", "b"}, k=10)[1] == 0.5


def test_relevant_set_larger_than_k_and_predictions_beyond_k():
    # k = 2: only "x", "a" count; ideal DCG is over min(3, 2) = 2 hits
    hr, recall, ndcg = rank_metrics(["x", "a", "b"], {"a", "b", "c"}, k=2)
    assert (hr, recall) == (1.0, 0.5)
    assert math.isclose(ndcg, (1 / LOG3) / (1 + 1 / LOG3))
    assert rank_metrics(["x", "a"], {"a"}, k=1) == (0.0, 0.0, 0.0)


def test_rank_metrics_rejects_empty_relevant_and_bad_k():
    with pytest.raises(ValueError, match="non-empty"):
        rank_metrics(["a"], set())
    with pytest.raises(ValueError, match="k must be"):
        rank_metrics(["a"], {"a"}, k=0)


# --- relevant sets -----------------------------------------------------------------------------

# n: a 4, b 3, c 5, d 3, e 3, f 2 of N = 10; pairs: ab 3, ac 2, cd 3, and bc, ce, de, ef 1 each
TEN = [
    ["a", "b"], ["a", "b"], ["a", "b", "c"], ["a", "c"], ["c", "d"],
    ["c", "d"], ["c", "d", "e"], ["e"], ["e", "f"], ["f"],
]


def test_relevant_sets_by_hand():
    # lift(a,b) = 3*10/(4*3) = 2.5; lift(a,c) = 2*10/(4*5) = 1.0; lift(c,d) = 3*10/(5*3) = 2.0
    # e has 3 baskets but no pair in >= 2 of them (not scored); f has 2 baskets (< 3)
    got = relevant_sets(TEN, min_baskets=3, min_pair_baskets=2, min_lift=1.5)
    assert got == {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}}


def test_relevant_set_thresholds_are_inclusive():
    assert relevant_sets(TEN, min_baskets=3, min_pair_baskets=2, min_lift=2.5) == {"a": {"b"}, "b": {"a"}}
    assert relevant_sets(TEN, min_baskets=4, min_pair_baskets=2, min_lift=2.0) == {"a": {"b"}, "c": {"d"}}
    assert relevant_sets(TEN, min_baskets=3, min_pair_baskets=3, min_lift=1.0) == {
        "a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}
    }
    assert relevant_sets(TEN, min_baskets=3, min_pair_baskets=2, min_lift=1.0)["a"] == {"b", "c"}


def test_relevant_sets_empty_with_protocol_defaults_and_repeats_count_once():
    assert relevant_sets(TEN) == {}  # no product in 10 test baskets
    assert relevant_sets([]) == {}
    repeated = [["a", "a", "b"], ["a", "b"], ["c"]]
    assert relevant_sets(repeated, min_baskets=2, min_pair_baskets=2, min_lift=1.5) == {"a": {"b"}, "b": {"a"}}


# --- popularity and fill -----------------------------------------------------------------------


def test_popular_products_ties_by_id():
    assert popular_products([["b", "a"], ["c", "c"], ["b"], ["a", "c"]]) == ["a", "b", "c"]
    assert popular_products([["b", "a"], ["b"]], n=1) == ["b"]


def test_fill_with_popular_pads_without_self_or_repeats():
    method = ranking([("p1", "x", 1), ("p1", "p1", 2), ("p1", "x", 3), ("p1", "y", 4), ("other", "x", 1)])
    popular = ["p1", "x", "z", "w", "y", "v"]
    table = fill_with_popular(method, ["p1", "p2", "p3"], popular, k=4)
    assert lists(table) == {
        "p1": ["x", "y", "z", "w"],  # its own x, y (self and the repeated x dropped), then popular
        "p2": ["p1", "x", "z", "w"],  # nothing of its own (cold or no co-purchase): all popular
        "p3": ["p1", "x", "z", "w"],
    }
    assert table.filter(pl.col("product_id") == "p1")["filled"].to_list() == [False, False, True, True]
    assert table["rank"].dtype == pl.Int32


def test_fill_cuts_long_lists_and_stops_when_popular_runs_out():
    method = ranking([("p", "a", 1), ("p", "b", 2), ("p", "c", 3)])
    assert lists(fill_with_popular(method, ["p"], ["z"], k=2)) == {"p": ["a", "b"]}
    assert lists(fill_with_popular(method.head(0), ["p"], ["p", "z"], k=3)) == {"p": ["z"]}


def test_repeated_rank_is_rejected():
    with pytest.raises(ValueError, match="rank 1 given twice"):
        fill_with_popular(ranking([("p", "a", 1), ("p", "b", 1)]), ["p"], [], k=2)


# --- score_associations ------------------------------------------------------------------------


def test_score_associations_groups_and_unscored_products():
    relevant = {"a": {"b", "c"}, "n": {"a"}}
    table = ranking([("a", "b", 1), ("a", "x", 2), ("a", "c", 12), ("z", "q", 1)])  # "c" is beyond k
    s = score_associations(table, relevant, warm_products={"a", "z"}, k=10)
    ndcg_a = 1 / (1 + 1 / LOG3)
    assert (s["n_all"], s["n_warm"], s["n_cold"]) == (2, 1, 1)  # z has no relevant set: not scored
    assert (s["hr_warm"], s["recall_warm"]) == (1.0, 0.5) and math.isclose(s["ndcg_warm"], ndcg_a)
    assert (s["hr_cold"], s["recall_cold"], s["ndcg_cold"]) == (0.0, 0.0, 0.0)  # "n" has no list
    assert math.isclose(s["ndcg_all"], ndcg_a / 2) and s["hr_all"] == 0.5


def test_rank_is_the_position_and_a_skipped_rank_is_a_miss():
    s = score_associations(ranking([("g", "q", 2)]), {"g": {"q"}}, warm_products={"g"})
    assert math.isclose(s["ndcg_all"], 1 / LOG3)
    with pytest.raises(ValueError, match="ranks start at 1"):
        score_associations(ranking([("g", "q", 0)]), {"g": {"q"}}, warm_products=set())


def test_score_associations_empty_group_is_nan():
    s = score_associations(ranking([("a", "b", 1)]), {"a": {"b"}}, warm_products={"a"})
    assert s["n_cold"] == 0 and math.isnan(s["ndcg_cold"]) and s["ndcg_all"] == 1.0


# --- the table functions against the one-list definitions -------------------------------------------


def _reference_fill(rows, products, popular, k):
    """fill_with_popular's docstring, one product at a time: {p: (its own list, the popular padding)}."""
    pool = list(dict.fromkeys(popular))
    out = {}
    for p in sorted(set(products)):
        own = [q for _, q in sorted((r, q) for pp, q, r in rows if pp == p)]
        chosen = [q for q in dict.fromkeys(own) if q != p][:k]
        out[p] = chosen, [q for q in pool if q != p and q not in chosen][: k - len(chosen)]
    return out


def _random_case(rng: random.Random):
    items = [f"i{n}" for n in range(rng.randint(1, 12))]
    rows = []
    for p in rng.sample(items, rng.randint(0, len(items))):
        ranks = rng.sample(range(1, 15), rng.randint(0, 8))  # gaps, beyond k, repeats of one product, itself
        rows += [(p, rng.choice(items), r) for r in ranks]
    popular = [rng.choice(items) for _ in range(rng.randint(0, 10))]  # repeats: the first counts
    relevant = {p: set(rng.sample(items, rng.randint(1, len(items)))) for p in rng.sample(items, rng.randint(0, len(items)))}
    return rows, popular, relevant, rng.randint(1, 6)


@pytest.mark.parametrize("seed", range(300))
def test_fill_and_per_product_metrics_match_the_one_list_definitions(seed):
    """Random tables with repeats, self-references, skipped ranks and ranks beyond k: the table
    functions give, product by product, what ``rank_metrics`` and the fill's rule give for one list."""
    rows, popular, relevant, k = _random_case(random.Random(seed))
    table = ranking(rows)
    filled = fill_with_popular(table, relevant, popular, k)
    want = _reference_fill(rows, relevant, popular, k)
    assert lists(filled) == {p: own + pad for p, (own, pad) in want.items() if own + pad}
    assert filled["rank"].to_list() == [r for own, pad in want.values() for r in range(1, len(own + pad) + 1)]
    assert filled["filled"].to_list() == [f for own, pad in want.values() for f in [False] * len(own) + [True] * len(pad)]
    warm = set(list(relevant)[::2])
    metrics = per_product_metrics(table, relevant, warm, k)
    assert metrics["product_id"].to_list() == sorted(relevant)
    for row in metrics.iter_rows(named=True):
        p = row["product_id"]
        slots = [None] * max([r for pp, _, r in rows if pp == p and r <= k], default=0)
        for pp, q, r in rows:
            if pp == p and r <= k:
                slots[r - 1] = q
        assert (row["hr"], row["recall"], row["ndcg"]) == rank_metrics(slots, relevant[p], k), p
        assert row["warm"] == (p in warm)


# --- basket completion -------------------------------------------------------------------------


def seed_hiding(items: list[str], wanted: str) -> int:
    """A seed whose first draw hides ``wanted`` (the hidden item is sorted(items)[randrange(n)])."""
    ordered = sorted(items)
    return next(s for s in range(1000) if ordered[random.Random(s).randrange(len(ordered))] == wanted)


def test_basket_completion_by_hand_with_ties_broken_by_popularity():
    basket = ["h", "b", "a"]
    table = ranking([("a", "h", 1), ("b", "z", 1)])
    popular = ["z", "h"]
    # hidden h: rest a, b give h and z one point each; z is more popular, so h is 2nd
    seed = seed_hiding(basket, "h")
    got = basket_completion([basket], table, popular, seed=seed, k=10)
    assert got["n"] == 1 and got["hr"] == 1.0 and math.isclose(got["ndcg"], 1 / LOG3)
    assert basket_completion([basket], table, popular, seed=seed, k=1)["hr"] == 0.0
    # hidden a: only z is proposed (h is in the basket), a is never found
    assert basket_completion([basket], table, popular, seed=seed_hiding(basket, "a"))["hr"] == 0.0


def test_basket_completion_skips_single_items_and_is_deterministic():
    table = ranking([("a", "x", 1), ("a", "b", 2), ("b", "y", 1), ("b", "a", 2)])
    got = basket_completion([["a", "b"], ["a"], []], table, ["x", "y"], seed=0)
    assert got == {"hr": 1.0, "ndcg": pytest.approx(1 / LOG3), "n": 1}  # either hidden item ranks 2nd

    rng = random.Random(7)
    items = [f"i{j}" for j in range(12)]
    baskets = [rng.sample(items, rng.randint(1, 6)) for _ in range(50)]
    pairs = ranking([(p, q, r) for p in items for r, q in enumerate(sorted(set(items) - {p}), start=1)][:80])
    first = basket_completion(baskets, pairs, items, seed=3)
    assert basket_completion(baskets, pairs, items, seed=3) == first
    assert basket_completion([sorted(b, reverse=True) for b in baskets], pairs, items, seed=3) == first
    assert first["n"] == sum(len(set(b)) >= 2 for b in baskets)
    assert math.isnan(basket_completion([["a"]], table, [], seed=0)["hr"])


# --- methods -----------------------------------------------------------------------------------

AS_OF = datetime(2020, 1, 31)


def basket_frame(rows: list[tuple[float, list[str]]]) -> pl.DataFrame:
    """(age in days before AS_OF, items) -> a baskets frame."""
    return pl.DataFrame(
        {
            "order_id": [str(i) for i in range(len(rows))],
            "ordered_at": [AS_OF - timedelta(days=age) for age, _ in rows],
            "items": [items for _, items in rows],
        },
        schema={"order_id": pl.String, "ordered_at": pl.Datetime("us"), "items": pl.List(pl.String)},
    )


def test_split_baskets_at_as_of():
    frame = basket_frame([(1, ["a"]), (0, ["b"])])
    train, test = split_baskets(frame, AS_OF)
    assert train["items"].to_list() == [["a"]] and test["items"].to_list() == [["b"]]


def test_decay_changes_the_order_by_hand():
    frame = basket_frame([(10, ["a", "b"]), (5, ["a", "c"]), (20, ["a", "b"])])
    plain = dict(size_exponent=0.0, popularity_exponent=0.0, min_pair_count=1)
    # half-life 10 days: b = 0.5 + 0.25 = 0.75 beats c = 2 ** -0.5
    slow = decayed_associations(frame, AS_OF, DecayedConfig(half_life_days=10, **plain)).filter(pl.col("product_id") == "a")
    assert slow["associated_product_id"].to_list() == ["b", "c"]
    assert slow["score"].to_list() == pytest.approx([0.75, 2**-0.5])
    assert slow["n_rule"].to_list() == [2, 1]
    # half-life 5 days: b = 0.25 + 0.0625 loses to c = 0.5
    fast = decayed_associations(frame, AS_OF, DecayedConfig(half_life_days=5, **plain)).filter(pl.col("product_id") == "a")
    assert fast["associated_product_id"].to_list() == ["c", "b"]
    assert fast["score"].to_list() == pytest.approx([0.5, 0.3125])


def test_size_weight_popularity_damping_ties_and_min_pair_count():
    frame = basket_frame([(1, ["a", "b"]), (1, ["a", "c"]), (1, ["a", "c", "d"]), (1, ["d"])])
    cfg = DecayedConfig(half_life_days=None, size_exponent=1.0, popularity_exponent=0.5, min_pair_count=1)
    a = decayed_associations(frame, AS_OF, cfg).filter(pl.col("product_id") == "a")
    # weights 1, 1, 1/2, 1; c(a,c) = 1.5 and c(c) = 1.5; c(a,b) = 1 = c(b); c(a,d) = 0.5, c(d) = 1.5
    assert a["associated_product_id"].to_list() == ["c", "b", "d"]
    assert a["score"].to_list() == pytest.approx([1.5 / 1.5**0.5, 1.0, 0.5 / 1.5**0.5])
    assert a["rank"].to_list() == [1, 2, 3]
    # equal scores and counts: ties go to the associated product id
    tie = decayed_associations(basket_frame([(1, ["a", "c"]), (1, ["a", "b"])]), AS_OF, DecayedConfig(min_pair_count=1))
    assert tie.filter(pl.col("product_id") == "a")["associated_product_id"].to_list() == ["b", "c"]
    assert decayed_associations(frame, AS_OF, DecayedConfig(min_pair_count=2))["associated_product_id"].to_list() == [
        "c", "a"
    ]


def test_methods_refuse_baskets_from_as_of_on():
    frame = basket_frame([(0, ["a", "b"])])
    with pytest.raises(ValueError, match="not before as_of"):
        decayed_associations(frame, AS_OF)
    with pytest.raises(ValueError, match="before as_of"):
        method_associations("count", frame, AS_OF)
    with pytest.raises(ValueError, match="unknown evaluation method"):
        method_associations("magic", frame, AS_OF)


def test_popularity_and_pair_methods():
    frame = basket_frame([(3, ["a", "b"]), (2, ["a", "b", "c"]), (1, ["a", "c"]), (1, ["d"])])
    pop = lists(method_associations("popularity", frame, AS_OF, top_k=2))
    assert pop == {"a": ["b", "c"], "b": ["a", "c"], "c": ["a", "b"], "d": ["a", "b"]}
    count = method_associations("count", frame, AS_OF)
    assert lists(count) == {"a": ["b", "c"], "b": ["a"], "c": ["a"]}  # pairs in >= 2 baskets
    assert set(count["method"].to_list()) == {"count"}
    # without decay, size weight or damping, decayed_damped ranks like count
    flat = DecayedConfig(half_life_days=None, size_exponent=0.0, popularity_exponent=0.0)
    assert lists(method_associations("decayed_damped", frame, AS_OF, decayed=flat)) == lists(count)
    # with them (defaults), c's more recent co-purchases put it first
    assert lists(method_associations("decayed_damped", frame, AS_OF))["a"] == ["c", "b"]


@pytest.mark.parametrize("seed", range(50))
def test_top_k_of_a_long_partner_list_is_the_full_sorts_first_k(seed):
    """The decayed top k sorts only the partners scoring at least the k-th best: the same k, in the
    same order, as sorting them all, ties at the threshold (score, then n_rule, then id) included."""
    import numpy as np

    from prodassoc_core.mining.methods import _top_k_order

    rng = np.random.default_rng(seed)
    m = int(rng.integers(1, 200))
    score = rng.integers(0, 6, m).astype(float) / 4  # few distinct values: ties everywhere
    n_ab = rng.integers(2, 5, m)
    b = rng.permutation(m)
    for k in (1, 5, 20, 250):
        assert _top_k_order(score, n_ab, b, k).tolist() == np.lexsort((b, -n_ab, -score))[:k].tolist()
