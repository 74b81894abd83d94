"""Offline evaluation of product associations: the temporal-holdout protocol of EVAL.md.

Baskets are split by time at ``as_of``; every statistic a method uses comes from the
training baskets (before ``as_of``), and the test baskets (from ``as_of`` on) only
define what should have been predicted:

* scored products: every p in at least ``min_baskets`` test baskets whose relevant set
  is non-empty;
* relevant set of p: every q in at least ``min_pair_baskets`` test baskets with p and
  with test-window lift(p, q) = n(p,q)·N / (n(p)·n(q)) >= ``min_lift``;
* prediction: the top-k ``associated_product_id`` of p by ``rank``, padded with the
  most popular training products where a method has fewer than k
  (``fill_with_popular``), so every method is scored on every scored product,
  cold ones (not sold before ``as_of``) included;
* metrics: HR@k, Recall@k, NDCG@k (``rank_metrics``), averaged over all, warm and
  cold scored products (``score_associations``).

A second task, basket completion (``basket_completion``), hides one item of every test
basket and ranks candidates from the rest of the basket.

Methods (``method_associations``): the baselines ``popularity``, ``count`` (=
confidence ranking), ``jaccard`` and ``lift`` from ``associations.rank_associations``,
and ``decayed_damped``, a time-decayed, basket-size-weighted co-purchase score damped
by the partner's popularity (``decayed_associations``).

Pure: frames and lists in, frames and dicts out; nothing here reads files, logs runs
or calls ``now()``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

import polars as pl

from prodassoc_core.data import ASSOCIATED_PRODUCT_ID, ORDERED_AT, PRODUCT_ID
from prodassoc_core.mining.associations import pair_counts

RANK = "rank"
FILLED = "filled"  # True for rows added by fill_with_popular
METRICS = ("hr", "recall", "ndcg")
GROUPS = ("all", "warm", "cold")

_RANKED_SCHEMA = {PRODUCT_ID: pl.String, ASSOCIATED_PRODUCT_ID: pl.String, RANK: pl.Int32}


# --- split and popularity ---------------------------------------------------------------------


def split_baskets(baskets: pl.DataFrame, as_of: datetime) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(training, test): baskets with ``ordered_at`` before ``as_of``, and from it on.

    ``baskets`` is ``baskets.baskets(...)``'s frame (order_id, ordered_at, items); row
    order is kept, so both halves stay sorted by (ordered_at, order_id).
    """
    before = pl.col(ORDERED_AT) < as_of
    return baskets.filter(before), baskets.filter(~before)


# --- relevance and metrics ----------------------------------------------------------------------


def relevant_sets(
    test_baskets: Sequence[Sequence[str]],
    min_baskets: int = 10,
    min_pair_baskets: int = 3,
    min_lift: float = 3.0,
) -> dict[str, set[str]]:
    """``{p: relevant set}`` for every p in >= ``min_baskets`` test baskets with a non-empty set.

    q is relevant to p when >= ``min_pair_baskets`` test baskets hold both and the test
    lift n(p,q)·N / (n(p)·n(q)) >= ``min_lift``. The lift test is done as
    n(p,q)·N >= min_lift·n(p)·n(q), without a division, so a lift of exactly
    ``min_lift`` is not lost to rounding. Counts are of baskets (an item repeated in a
    basket counts once). Products with an empty relevant set are absent.
    """
    if min_baskets < 1 or min_pair_baskets < 1:
        raise ValueError("min_baskets and min_pair_baskets must be >= 1")
    pairs = pair_counts(test_baskets, min_pair_count=min_pair_baskets)
    n_ab_n = (pl.col("n_rule") * pl.col("n_transactions")).cast(pl.Float64)
    n_a_n_b = (pl.col("n_antecedent") * pl.col("n_consequent")).cast(pl.Float64)
    kept = pairs.filter((pl.col("n_antecedent") >= min_baskets) & (n_ab_n >= min_lift * n_a_n_b))
    grouped = kept.group_by(PRODUCT_ID).agg(pl.col(ASSOCIATED_PRODUCT_ID)).sort(PRODUCT_ID)
    return {p: set(qs) for p, qs in grouped.iter_rows()}


def rank_metrics(predicted: Sequence[str | None], relevant: set[str], k: int = 10) -> tuple[float, float, float]:
    """(HR@k, Recall@k, NDCG@k) of one ranked list against a non-empty relevant set.

    Only the first k positions count. HR@k is 1.0 when any of them is relevant; Recall@k
    is hits / min(|relevant|, k); NDCG@k uses binary gains, the discount
    1 / log2(position + 1) (position 1-based) and the ideal DCG of min(|relevant|, k)
    hits. A product repeated in the list earns its gain once, at its first position;
    its later copies occupy their positions as misses. Fewer than k predictions are
    scored as they are (the missing positions are misses); None marks an empty position.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not relevant:
        raise ValueError("rank_metrics needs a non-empty relevant set")
    seen: set[str] = set()
    hits, dcg = 0, 0.0
    for position, item in enumerate(predicted[:k], start=1):
        if item in relevant and item not in seen:
            hits += 1
            dcg += 1.0 / math.log2(position + 1)
        seen.add(item)
    ideal = min(len(relevant), k)
    idcg = sum(1.0 / math.log2(position + 1) for position in range(1, ideal + 1))
    return float(hits > 0), hits / ideal, dcg / idcg


def _ranked(associations: pl.DataFrame) -> pl.DataFrame:
    """product_id, associated_product_id, rank (Int64) of a method's table, checked.

    ValueError on missing columns, a null, a rank below 1 or a repeated (product, rank).
    """
    missing = [c for c in (PRODUCT_ID, ASSOCIATED_PRODUCT_ID, RANK) if c not in associations.columns]
    if missing:
        raise ValueError(f"associations: missing column(s) {missing}")
    frame = associations.select(PRODUCT_ID, ASSOCIATED_PRODUCT_ID, pl.col(RANK).cast(pl.Int64))
    nulls = {c: n for c, n in frame.null_count().row(0, named=True).items() if n}
    if nulls:
        raise ValueError(f"associations: null values in {nulls}")
    if frame.height and frame[RANK].min() < 1:
        raise ValueError("associations: ranks start at 1")
    dup = frame.filter(pl.struct(PRODUCT_ID, RANK).is_duplicated())
    if dup.height:
        row = dup.row(0, named=True)
        raise ValueError(f"associations: rank {row[RANK]} given twice for product {row[PRODUCT_ID]!r}")
    return frame


def _ranked_lists(associations: pl.DataFrame) -> dict[str, list[tuple[int, str]]]:
    """``{product_id: [(rank, associated id), ...] by rank}`` (checked as ``_ranked``)."""
    grouped = (
        _ranked(associations).sort(PRODUCT_ID, RANK)
        .group_by(PRODUCT_ID, maintain_order=True)
        .agg(pl.struct(RANK, ASSOCIATED_PRODUCT_ID).alias("ranked"))
    )
    return {p: [(r[RANK], r[ASSOCIATED_PRODUCT_ID]) for r in ranked] for p, ranked in grouped.iter_rows()}


def _products(products: Iterable[str]) -> pl.DataFrame:
    return pl.DataFrame({PRODUCT_ID: sorted(set(products))}, schema={PRODUCT_ID: pl.String})


def per_product_metrics(
    associations: pl.DataFrame, relevant: Mapping[str, set[str]], warm_products: set[str], k: int = 10
) -> pl.DataFrame:
    """One row per scored product: product_id, warm, hr, recall, ndcg; sorted by product_id.

    ``associations`` needs product_id, associated_product_id and rank; the rows with
    rank <= k are the prediction, each at position = rank (a rank the table skips is a
    miss). A scored product without rows scores zero, so fill lists first
    (``fill_with_popular``) to give every method the same fallback.
    """
    scored = sorted(relevant)
    predicted = _ranked(associations).filter(pl.col(RANK) <= k).join(_products(scored), on=PRODUCT_ID, how="semi")
    slots: dict[str, list[str | None]] = {}
    for p, q, r in predicted.iter_rows():  # each list at positions 1..k: a rank the table skips stays empty
        row = slots.setdefault(p, [])
        row.extend([None] * (r - len(row)))
        row[r - 1] = q
    rows = [(p, p in warm_products, *rank_metrics(slots.get(p, []), relevant[p], k)) for p in scored]
    return pl.DataFrame(
        rows,
        schema={PRODUCT_ID: pl.String, "warm": pl.Boolean, "hr": pl.Float64, "recall": pl.Float64, "ndcg": pl.Float64},
        orient="row",
    )


def score_associations(
    associations: pl.DataFrame, relevant: Mapping[str, set[str]], warm_products: set[str], k: int = 10
) -> dict[str, float | int]:
    """Mean HR@k, Recall@k, NDCG@k over all, warm and cold scored products, and their counts.

    Keys ``{metric}_{group}`` for metric in hr, recall, ndcg and group in all, warm, cold
    (NaN for a group with no product), and ``n_all``, ``n_warm``, ``n_cold``. Scored
    products are the keys of ``relevant``; warm ones are in ``warm_products`` (sold
    before ``as_of``), the rest are cold.
    """
    table = per_product_metrics(associations, relevant, warm_products, k)
    out: dict[str, float | int] = {}
    frames = {"all": table, "warm": table.filter(pl.col("warm")), "cold": table.filter(~pl.col("warm"))}
    for group in GROUPS:
        frame = frames[group]
        out[f"n_{group}"] = frame.height
        for metric in METRICS:
            out[f"{metric}_{group}"] = float(frame[metric].mean()) if frame.height else math.nan
    return out


# --- popularity fill ----------------------------------------------------------------------------


def fill_with_popular(
    associations: pl.DataFrame, products: Iterable[str], popular: Sequence[str], k: int = 10
) -> pl.DataFrame:
    """Each product's top-k list, padded with the most popular products up to k.

    For every product p in ``products`` (others in ``associations`` are dropped): the
    method's associated products in rank order, without p itself and without repeats,
    cut to k, then the products of ``popular`` (most popular first) that are not p and
    not already listed, until the list holds k (fewer when ``popular`` runs out).
    Returns product_id, associated_product_id, rank (1..k, Int32) and filled (True for
    padded rows), sorted by (product_id, rank).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    wanted = _products(products)
    own: dict[str, list[str]] = {}
    lists = _ranked(associations).join(wanted, on=PRODUCT_ID, how="semi").sort(PRODUCT_ID, RANK)
    for p, q in lists.select(PRODUCT_ID, ASSOCIATED_PRODUCT_ID).iter_rows():  # the rows read once
        own.setdefault(p, []).append(q)
    # a list excludes its product and at most k of its own: the first 2k + 1 popular ones always suffice
    pool = list(dict.fromkeys(popular))[: 2 * k + 1]
    rows: list[tuple[str, str, int, bool]] = []
    for p in wanted[PRODUCT_ID].to_list():
        chosen = [q for q in dict.fromkeys(own.get(p, ())) if q != p][:k]
        padding = [q for q in pool if q != p and q not in chosen][: k - len(chosen)]
        rows += [(p, q, r, False) for r, q in enumerate(chosen, start=1)]
        rows += [(p, q, r, True) for r, q in enumerate(padding, start=len(chosen) + 1)]
    return pl.DataFrame(rows, schema={**_RANKED_SCHEMA, FILLED: pl.Boolean}, orient="row")


# --- basket completion --------------------------------------------------------------------------


def basket_completion(
    test_baskets: Sequence[Sequence[str]],
    associations: pl.DataFrame,
    popular: Sequence[str],
    seed: int,
    k: int = 10,
) -> dict[str, float | int]:
    """Hide one item per test basket and rank it back from the rest: ``{"hr", "ndcg", "n"}``.

    Every basket with >= 2 distinct items takes part, in the order given; one
    ``random.Random(seed)`` draws the hidden item of each from its sorted distinct items,
    so a seed fixes the task. A candidate c scores the sum, over the remaining items r,
    of 1 / rank of c in r's list in ``associations`` (reciprocal rank rather than the
    method's own score, so that methods with scores on different scales - counts,
    lifts - combine a basket's items the same way). Items still in the basket are
    excluded; candidates rank by score, then popularity, then id, and the list is padded
    with ``popular`` up to k. HR@k and NDCG@k with the hidden item as the one relevant
    item, averaged over baskets (NaN when none takes part).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    lists = _ranked_lists(associations)
    pool = list(dict.fromkeys(popular))
    popularity = {q: i for i, q in enumerate(pool)}
    rng = random.Random(seed)
    hits, ndcg_sum, n = 0, 0.0, 0
    for basket in test_baskets:
        items = sorted(set(basket))
        if len(items) < 2:
            continue
        hidden = items[rng.randrange(len(items))]
        rest = [i for i in items if i != hidden]
        in_basket = set(rest)
        scores: dict[str, float] = {}
        for r in rest:
            for rank, c in lists.get(r, ()):
                if c not in in_basket:
                    scores[c] = scores.get(c, 0.0) + 1.0 / rank
        top = sorted(scores, key=lambda c: (-scores[c], popularity.get(c, len(pool)), c))[:k]
        if len(top) < k:
            chosen = set(top)
            for q in pool:
                if len(top) >= k:
                    break
                if q not in in_basket and q not in chosen:
                    top.append(q)
        n += 1
        if hidden in top:
            hits += 1
            ndcg_sum += 1.0 / math.log2(top.index(hidden) + 2)
    if n == 0:
        return {"hr": math.nan, "ndcg": math.nan, "n": 0}
    return {"hr": hits / n, "ndcg": ndcg_sum / n, "n": n}
