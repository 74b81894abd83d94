"""Hybrid associations: co-purchase statistics, student text similarity and GNN scores in one ranking.

    candidates: the union of each signal's top ``candidates_k`` per product
    features:   cooc = decayed_damped score / the product's best candidate score (0 exactly when
                      never bought together in the window), text = cosine of the student
                      embeddings, gnn = cosine of the GNN node embeddings
    score:      w_cooc * cooc + w_text * text + w_gnn * gnn, with one weight set for warm
                products (sold in the window) and one for cold ones (never sold: cooc is 0)
    weights:    chosen on the held-out tail of the training window (``tune``), never on a test window

Signals are vectors aligned with ``product_ids``; any signal may be absent (its weight is 0).
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp

from prodassoc_core.data import ASSOCIATED_PRODUCT_ID, PRODUCT_ID
from prodassoc_core.mining import DecayedConfig, protocol

COMPONENTS = ("cooc", "text", "gnn")
WEIGHTS_FILE = "hybrid_weights.json"  # saved with the GNN model: the weights tuned with it
RANK = "rank"


@dataclass(frozen=True)
class Weights:
    cooc: float = 1.0
    text: float = 0.0
    gnn: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class Signals:
    """Everything the hybrid ranks with, for one catalog.

    ``cooc``: a co-purchase ranking (product_id, associated_product_id, score), e.g.
    methods.decayed_associations, whose top lists are candidates; ``cooc_scores``: the same
    score for every pair bought together (product_ids x product_ids, methods.decayed_signals),
    so that a candidate from another signal gets its co-purchase score too; ``vectors``: name ->
    unit embeddings aligned with ``product_ids`` ("text": the student's, "gnn": the GNN's)."""

    product_ids: list[str]
    cooc: pl.DataFrame
    vectors: Mapping[str, np.ndarray]
    cooc_scores: sp.csr_matrix | None = None


def candidates(signals: Signals, queries: Sequence[str], k: int) -> pl.DataFrame:
    """(product_id, associated_product_id) pairs: each signal's top ``k`` for every query."""
    from prodassoc_core.models.embeddings import top_k_similar  # torch: not for a classic-only nightly's bundles

    wanted = pl.Series(PRODUCT_ID, list(queries), dtype=pl.String)
    parts = [signals.cooc.filter(pl.col(PRODUCT_ID).is_in(wanted)).select(PRODUCT_ID, ASSOCIATED_PRODUCT_ID)]
    for name, vectors in signals.vectors.items():
        parts.append(top_k_similar(signals.product_ids, vectors, k, queries=list(queries), method=name)
                     .select(PRODUCT_ID, ASSOCIATED_PRODUCT_ID))
    return pl.concat(parts).unique().sort(PRODUCT_ID, ASSOCIATED_PRODUCT_ID)


def features(signals: Signals, pairs: pl.DataFrame) -> pl.DataFrame:
    """``pairs`` with one column per component (see the module docstring) and the raw cooc score."""
    index = {p: i for i, p in enumerate(signals.product_ids)}
    a = np.array([index[p] for p in pairs[PRODUCT_ID].to_list()], dtype=np.int64)
    b = np.array([index[q] for q in pairs[ASSOCIATED_PRODUCT_ID].to_list()], dtype=np.int64)
    if signals.cooc_scores is not None:
        raw = np.asarray(signals.cooc_scores[a, b]).ravel() if len(a) else np.zeros(0)
        out = pairs.with_columns(cooc_score=pl.Series(raw, dtype=pl.Float64))
    else:
        out = pairs.join(
            signals.cooc.select(PRODUCT_ID, ASSOCIATED_PRODUCT_ID, pl.col("score").alias("cooc_score")),
            on=[PRODUCT_ID, ASSOCIATED_PRODUCT_ID], how="left",
        ).with_columns(pl.col("cooc_score").fill_null(0.0))
    best = pl.col("cooc_score").max().over(PRODUCT_ID)
    out = out.with_columns(cooc=pl.when(best > 0).then(pl.col("cooc_score") / best).otherwise(0.0))
    for name in ("text", "gnn"):
        vectors = signals.vectors.get(name)
        value = np.einsum("ij,ij->i", vectors[a], vectors[b]).astype(np.float64) if vectors is not None else np.zeros(len(a))
        out = out.with_columns(pl.Series(name, value))
    return out


def rank(frame: pl.DataFrame, warm: Weights, cold: Weights, warm_products: set[str], top_k: int) -> pl.DataFrame:
    """Each product's top ``top_k`` by hybrid score (ties: associated product id); adds
    ``is_cold_start`` (the product was never sold in the window), ``score`` and ``rank``."""
    is_warm = pl.col(PRODUCT_ID).is_in(pl.Series(sorted(warm_products), dtype=pl.String))
    score = pl.when(is_warm).then(_weighted(warm)).otherwise(_weighted(cold))
    return (
        frame.with_columns(score=score, is_cold_start=~is_warm)
        .sort([PRODUCT_ID, "score", ASSOCIATED_PRODUCT_ID], descending=[False, True, False])
        .with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.Int32).over(PRODUCT_ID).alias(RANK))
        .filter(pl.col(RANK) <= top_k)
    )


def _weighted(w: Weights) -> pl.Expr:
    return w.cooc * pl.col("cooc") + w.text * pl.col("text") + w.gnn * pl.col("gnn")


def weight_grid(step: float, available: Sequence[str]) -> list[Weights]:
    """Weights on the simplex with the given step, zero for components that are absent."""
    n = round(1 / step)
    grid = []
    for parts in itertools.product(range(n + 1), repeat=len(COMPONENTS)):
        if sum(parts) != n:
            continue
        values = dict(zip(COMPONENTS, (p / n for p in parts)))
        if any(values[c] > 0 and c not in available for c in COMPONENTS):
            continue
        grid.append(Weights(**values))
    return grid


def tune(
    frame: pl.DataFrame, relevant: Mapping[str, set[str]], warm_products: set[str], popular: Sequence[str],
    grid: Sequence[Weights], k: int = 10, min_cold: int = 10,
) -> tuple[Weights, Weights, pl.DataFrame]:
    """The best warm and cold weights by NDCG@k on ``relevant`` (held-out relevance sets).

    ``frame`` holds the features of the validation queries' candidates. Warm and cold queries
    are tuned separately; with fewer than ``min_cold`` cold queries the cold weights keep the
    warm weights' text : gnn ratio (cooc is 0 for a cold product anyway). Returns the weights
    and the grid's scores (weights, ndcg_warm, ndcg_cold)."""
    rows = []
    for w in grid:
        ranked = rank(frame, w, w, warm_products, k)
        filled = protocol.fill_with_popular(ranked, relevant, popular, k)
        s = protocol.score_associations(filled, relevant, warm_products, k)
        rows.append({**w.as_dict(), "ndcg_warm": s["ndcg_warm"], "ndcg_cold": s["ndcg_cold"], "n_cold": s["n_cold"]})
    table = pl.DataFrame(rows)
    # ties: the earliest grid point (deterministic)
    best_warm = table.with_row_index().sort(["ndcg_warm", "index"], descending=[True, False], nulls_last=True).row(0, named=True)
    warm = Weights(best_warm["cooc"], best_warm["text"], best_warm["gnn"])
    if table["n_cold"][0] >= min_cold:
        best_cold = table.with_row_index().sort(["ndcg_cold", "index"], descending=[True, False], nulls_last=True).row(0, named=True)
        cold = Weights(0.0, best_cold["text"], best_cold["gnn"])
    else:
        rest = warm.text + warm.gnn
        cold = Weights(0.0, warm.text / rest, warm.gnn / rest) if rest > 0 else Weights(0.0, 0.5, 0.5)
    return warm, cold, table


# --- evidence and explanations ----------------------------------------------------------------


def with_evidence(ranked: pl.DataFrame, item_lists: Sequence[Sequence[str]]) -> pl.DataFrame:
    """Add the pair's counts in the window (n_transactions, n_antecedent, n_consequent, n_rule;
    0 for products never sold) and the rule metrics (null where a count is 0)."""
    from prodassoc_core.mining import basket_matrix, rule_metrics

    x, items = basket_matrix(item_lists)
    index = {item: k for k, item in enumerate(items)}
    item_counts = np.asarray(x.sum(axis=0)).ravel().astype(np.int64)
    co = (x.T @ x).tocsr()
    a = np.array([index.get(p, -1) for p in ranked[PRODUCT_ID].to_list()], dtype=np.int64)
    b = np.array([index.get(q, -1) for q in ranked[ASSOCIATED_PRODUCT_ID].to_list()], dtype=np.int64)
    both = (a >= 0) & (b >= 0)
    n_ab = np.zeros(len(a), dtype=np.int64)
    if both.any():
        n_ab[both] = np.asarray(co[a[both], b[both]]).ravel()
    counted = ranked.with_columns(
        n_transactions=pl.lit(len(item_lists), dtype=pl.Int64),
        n_antecedent=pl.Series(np.where(a >= 0, item_counts[np.maximum(a, 0)], 0), dtype=pl.Int64),
        n_consequent=pl.Series(np.where(b >= 0, item_counts[np.maximum(b, 0)], 0), dtype=pl.Int64),
        n_rule=pl.Series(n_ab, dtype=pl.Int64),
    )
    undefined = (pl.col("n_antecedent") == 0) | (pl.col("n_consequent") == 0)
    metrics = ["support", "confidence", "lift", "leverage", "conviction", "zhangs_metric", "jaccard"]
    return rule_metrics(counted.lazy()).with_columns(
        [pl.when(undefined).then(None).otherwise(pl.col(m)).alias(m) for m in metrics]
    ).collect()


def linked_through(ranked: pl.DataFrame, item_lists: Sequence[Sequence[str]], min_count: int = 2,
                   chunk: int = 512, max_entries: int = 2_000_000) -> list[str | None]:
    """Per row, the product r that links p and q most strongly in the window's co-purchases
    (largest min(n(p,r), n(r,q)), at least ``min_count``; ties by id), or None.

    Sparse and chunked: the element-wise minimum of p's and q's rows of the co-purchase matrix
    (counts below ``min_count`` dropped first: they cannot make a link), its row max and
    argmax (the first, lowest id, of equal maxima), ``chunk`` rows at a time and fewer where
    their two rows hold more than ``max_entries`` co-purchases (a large catalog's best-sellers
    have tens of thousands of partners: memory stays bounded). Against
    intersecting the two rows pair by pair, on a nightly's product_associations: 2.9 s -> 0.7 s
    on the shipped sample (47k rows), 8.3 s -> 2.4 s on full Online Retail (83k rows)."""
    from prodassoc_core.mining import basket_matrix

    x, items = basket_matrix(item_lists)
    index = {item: k for k, item in enumerate(items)}
    co = (x.T @ x).tocsr()
    co.setdiag(0)
    co.data[co.data < min_count] = 0
    co.eliminate_zeros()
    co.sort_indices()
    pairs = ranked.select(PRODUCT_ID, ASSOCIATED_PRODUCT_ID)
    a = np.fromiter((index.get(p, -1) for p in pairs[PRODUCT_ID].to_list()), np.int64, pairs.height)
    b = np.fromiter((index.get(q, -1) for q in pairs[ASSOCIATED_PRODUCT_ID].to_list()), np.int64, pairs.height)
    rows = np.flatnonzero((a >= 0) & (b >= 0))
    out: list[str | None] = [None] * pairs.height
    degree = np.diff(co.indptr)
    entries = np.concatenate([[0], np.cumsum(degree[a[rows]] + degree[b[rows]])])
    lo = 0
    while lo < len(rows):
        hi = min(lo + chunk, int(np.searchsorted(entries, entries[lo] + max_entries, side="right")) - 1)
        part = rows[lo:max(hi, lo + 1)]
        lo += len(part)
        both = co[a[part]].minimum(co[b[part]]).tocsr()  # 0 at r = p and r = q: no diagonal
        best = np.asarray(both.max(axis=1).todense()).ravel()
        via = np.asarray(both.argmax(axis=1)).ravel()
        for i in np.flatnonzero(best >= max(min_count, 1)):
            out[part[i]] = items[via[i]]
    return out


def explain(frame: pl.DataFrame, titles: Mapping[str, str], via: Sequence[str | None],
            min_similarity: float = 0.5) -> pl.Series:
    """A short human-readable reason per row, from the evidence columns (with_evidence), the
    text cosine and the linking product ``via``."""
    out = []
    for row, through in zip(frame.select("n_rule", "lift", "text", "is_cold_start").iter_rows(), via):
        n_rule, lift, text, cold = row
        parts = ["new product, no sales yet"] if cold else []
        if n_rule:
            parts.append(f"bought together in {n_rule} order{'s' if n_rule != 1 else ''}, lift {lift:.1f}")
        if text is not None and text >= min_similarity:
            parts.append(f"similar titles ({text:.2f})")
        if through is not None:
            parts.append(f"linked through {titles.get(through, through)}")
        if len(parts) == int(bool(cold)):
            parts.append("related in the product graph")
        out.append("; ".join(parts))
    return pl.Series("explanation", out, dtype=pl.String)


# --- bundles ----------------------------------------------------------------------------------


def bundles(
    item_lists: Sequence[Sequence[str]], associated: pl.DataFrame, *, min_support: float, min_size: int = 2,
    max_size: int = 4, top_n: int = 200, min_baskets: int = 10, min_item_baskets: int = 20, min_lift: float = 2.0,
) -> pl.DataFrame:
    """Small groups of mutually associated products for promotions, ranked by the orders they
    add beyond chance, with their figures and a one-line explanation each.

    A bundle is a frequent item set of the window (``min_support``, ``min_size..max_size``
    products) every pair of which is associated in ``associated`` (either direction of the
    published top lists), bought together in at least ``min_baskets`` orders, each product in
    at least ``min_item_baskets`` orders, and at least ``min_lift`` times as often as chance.

    Ranked by ``extra_baskets`` = orders holding the whole set - the orders expected if its
    products sold independently (``expected_baskets``): a support-weighted lift, so a set seen
    in 14 orders with a lift of 270,000 ranks below one seen in 120 orders with a lift of 8 (raw
    lift favours sets of rare products, which a merchandiser cannot sell in volume). Ties: more
    orders, then the product ids. ``attach_rate``: the share of the orders of the bundle's
    least-sold product (``min_item_baskets``) that hold the whole bundle. The top ``top_n``
    are kept."""
    from prodassoc_core.mining import frequent_itemset_counts

    counts: dict[str, int] = {}
    for basket in item_lists:
        for item in set(basket):
            counts[item] = counts.get(item, 0) + 1
    sets = frequent_itemset_counts(item_lists, min_support, min_len=min_size, max_len=max_size)
    return bundles_of(sets, counts, len(item_lists), associated, top_n=top_n, min_baskets=min_baskets,
                      min_item_baskets=min_item_baskets, min_lift=min_lift)


def bundles_of(
    sets: Iterable[tuple[Sequence[str], int]], counts: Mapping[str, int], n: int, associated: pl.DataFrame, *,
    top_n: int = 200, min_baskets: int = 10, min_item_baskets: int = 20, min_lift: float = 2.0,
) -> pl.DataFrame:
    """``bundles`` from the window's frequent item sets (``sets``: (item set in any order,
    count) pairs, as either engine counted them), the basket count of each of their products
    (``counts``) and the number of baskets ``n``. Only the kept ``top_n`` become rows: a
    window can have hundreds of thousands of frequent sets (the shipped sample 166k), most
    failing the pair check."""
    linked = {
        (min(p, q), max(p, q)) for p, q in associated.select(PRODUCT_ID, ASSOCIATED_PRODUCT_ID).iter_rows()
    }
    found = []  # (-extra_baskets, -count, itemset, expected, lift, least): the ranking's sort key first
    for itemset, count in sets:
        least = min(counts[i] for i in itemset)
        if count < min_baskets or least < min_item_baskets:
            continue
        itemset = tuple(sorted(itemset))  # pairs as (lower, higher) id; one order for the float product
        if not all(pair in linked for pair in itertools.combinations(itemset, 2)):
            continue
        expected = n * math.prod(counts[i] / n for i in itemset)
        lift = count / expected
        if lift >= min_lift:
            found.append((expected - count, -count, itemset, expected, lift, least))
    rows = [
        (hashlib.sha256("\x1f".join(itemset).encode()).hexdigest()[:16], list(itemset), len(itemset), -neg_count,
         -neg_count / n, lift, expected, -neg_extra, least, -neg_count / least)
        for neg_extra, neg_count, itemset, expected, lift, least in heapq.nsmallest(top_n, found)
    ]
    columns = ("bundle_id", "products", "size", "n_baskets", "support", "lift", "expected_baskets", "extra_baskets",
               "min_item_baskets", "attach_rate")
    ranked = pl.DataFrame(rows, schema={k: BUNDLE_SCHEMA[k] for k in columns}, orient="row").with_columns(
        bundle_rank=pl.int_range(1, pl.len() + 1, dtype=pl.Int32)
    )
    return ranked.with_columns(explanation=explain_bundles(ranked)).select(list(BUNDLE_SCHEMA))


def explain_bundles(frame: pl.DataFrame) -> pl.Series:
    """One line per bundle from its figures (n_baskets, support, lift, extra_baskets, attach_rate, size)."""
    out = []
    for n, support, lift, extra, attach, size in frame.select(
        "n_baskets", "support", "lift", "extra_baskets", "attach_rate", "size"
    ).iter_rows():
        all_of = "both" if size == 2 else f"all {size}"
        out.append(
            f"{all_of} bought together in {n:,} orders ({support:.1%} of orders), {lift:,.1f}x as often as "
            f"chance ({extra:,.0f} more orders); {attach:.0%} of the orders of its least-sold product hold {all_of}"
        )
    return pl.Series("explanation", out, dtype=pl.String)


BUNDLE_SCHEMA = {
    "bundle_id": pl.String, "bundle_rank": pl.Int32, "products": pl.List(pl.String), "size": pl.Int32,
    "n_baskets": pl.Int64, "support": pl.Float64, "lift": pl.Float64, "expected_baskets": pl.Float64,
    "extra_baskets": pl.Float64, "min_item_baskets": pl.Int64, "attach_rate": pl.Float64, "explanation": pl.String,
}


# --- the hybrid table -------------------------------------------------------------------------


@dataclass(frozen=True)
class HybridModel:
    """What the nightly run needs besides the baskets: the embeddings and the tuned weights."""

    text: np.ndarray | None  # student embeddings, aligned with the catalog
    gnn: np.ndarray | None  # GNN node embeddings, aligned with the catalog
    warm: Weights
    cold: Weights

    def vectors(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in (("text", self.text), ("gnn", self.gnn)) if v is not None}


def signals_for(catalog: pl.DataFrame, train: pl.DataFrame, as_of, model: HybridModel, candidates_k: int,
                decayed) -> Signals:
    from dataclasses import replace

    from prodassoc_core.mining import decayed_signals

    ids = catalog[PRODUCT_ID].to_list()
    cooc, scores, _ = decayed_signals(train, as_of, replace(decayed, top_k=candidates_k), ids)
    return Signals(ids, cooc, model.vectors(), scores)


QUERY_CHUNK = 10_000  # products ranked at a time: their candidate pairs (up to 3 x candidates_k each) in memory


def hybrid_associations(
    catalog: pl.DataFrame, train: pl.DataFrame, as_of, model: HybridModel, *, top_k: int, candidates_k: int,
    decayed, queries: Sequence[str] | None = None, signals: Signals | None = None, chunk: int = QUERY_CHUNK,
) -> pl.DataFrame:
    """The hybrid ranking of every catalog product (or ``queries``) from the window's baskets
    ``train`` (all before ``as_of``): features, score, rank, is_cold_start; no evidence yet.
    ``signals``: ``signals_for`` these arguments, when the caller has them already. Products are
    ranked ``chunk`` at a time (each product's ranking is its own): at 50,000 products the pooled
    candidates of all at once were the nightly's peak memory."""
    if signals is None:
        signals = signals_for(catalog, train, as_of, model, candidates_k, decayed)
    queries = list(queries) if queries is not None else signals.product_ids
    sold = {i for b in train["items"].to_list() for i in b}
    parts = [rank(features(signals, candidates(signals, queries[i:i + chunk], candidates_k)),
                  model.warm, model.cold, sold, top_k) for i in range(0, max(len(queries), 1), chunk)]
    return pl.concat(parts).sort(PRODUCT_ID, RANK).with_columns(method=pl.lit("hybrid"))


def publishable_hybrid(ranked: pl.DataFrame, train: pl.DataFrame, catalog: pl.DataFrame) -> pl.DataFrame:
    """The ``product_associations`` rows of a hybrid ranking (evidence, explanation, components),
    in the contract's columns and types, still in polars: the nightly appends them to the other
    segment's and converts the whole table to Arrow once (each conversion copies its strings)."""
    from prodassoc_core.data import PRODUCT_ASSOCIATIONS

    item_lists = train["items"].to_list()
    evidence = with_evidence(ranked, item_lists)
    titles = dict(zip(catalog[PRODUCT_ID].to_list(), catalog["title"].to_list()))
    evidence = evidence.with_columns(explain(evidence, titles, linked_through(evidence, item_lists)))
    table = evidence.with_columns(
        cooc_score=pl.col("cooc"), text_score=pl.col("text"), gnn_score=pl.col("gnn")
    ).sort(PRODUCT_ID, RANK)
    return PRODUCT_ASSOCIATIONS.conform_frame(table)


def tune_weights(
    catalog: pl.DataFrame, train: pl.DataFrame, as_of, model: HybridModel, pair_cfg, *, candidates_k: int, decayed,
    step: float = 0.1, k: int = 10, queries: Sequence[str] | None = None, signals: Signals | None = None,
) -> tuple[Weights, Weights, pl.DataFrame]:
    """Weights chosen on the held-out tail of the training window: co-purchase signals from the
    baskets before the tail, relevance from the tail (pairs.validation_anchors), over ``queries``
    when given (the serving gate tunes on one half of the tail's products and judges on the other:
    selection.split_queries). ``signals``: those co-purchase signals, when the caller has them."""
    from datetime import timedelta

    from prodassoc_core.mining import popular_products
    from prodassoc_core.models import pairs

    if train.height and train["ordered_at"].max() >= as_of:
        raise ValueError(f"tune_weights: training baskets must all be before as_of {as_of}")
    fit, held = pairs.split_fit_validation(train, as_of, pair_cfg.validation_days)
    index = {p: i for i, p in enumerate(catalog[PRODUCT_ID].to_list())}
    relevant = pairs.validation_anchors(pairs.items_of(held), pair_cfg, index)
    if queries is not None:
        wanted = set(queries)
        relevant = {p: qs for p, qs in relevant.items() if p in wanted}
    if not relevant:
        raise ValueError("no held-out relevance to tune the hybrid weights on; widen pairs.validation_days")
    cut = as_of - timedelta(days=pair_cfg.validation_days)
    if signals is None:
        signals = signals_for(catalog, fit, cut, model, candidates_k, decayed)
    frame = features(signals, candidates(signals, sorted(relevant), candidates_k))
    fit_items = pairs.items_of(fit)
    sold = {i for b in fit_items for i in b}
    grid = weight_grid(step, ["cooc", *model.vectors()])
    return tune(frame, relevant, sold, popular_products(fit_items), grid, k)


# --- the weights file saved with the GNN ---------------------------------------------------------


def write_weights(model_dir: Path, warm: Weights, cold: Weights, cooc: DecayedConfig | None = None) -> Path:
    path = model_dir / WEIGHTS_FILE
    data = {"warm": warm.as_dict(), "cold": cold.as_dict()}
    if cooc is not None:
        data["cooc"] = asdict(cooc)
    path.write_text(json.dumps(data, indent=2, sort_keys=True))
    return path


def read_cooc(model_dir: Path) -> DecayedConfig | None:
    """The co-purchase settings the hybrid weights were tuned with (None: the weights predate them)."""
    path = model_dir / WEIGHTS_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text()).get("cooc")
    return DecayedConfig(**data) if data else None


def read_weights(model_dir: Path) -> tuple[Weights, Weights] | None:
    path = model_dir / WEIGHTS_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return Weights(**data["warm"]), Weights(**data["cold"])
