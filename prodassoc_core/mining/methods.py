"""Association methods: every way prodassoc can rank associated products, behind one registry.

Each method turns the training baskets (order_id, ordered_at, items; all before
``as_of``) into a ranking (product_id, associated_product_id, rank, score, method);
``publishable`` adds the pair's counts and rule metrics so that every method publishes
the same ``product_associations`` table. The evaluation harness scores them side by
side (prodassoc_core/mining/protocol.py).

* ``popularity``: the most popular training products, the same for every product.
* ``count``, ``confidence``, ``jaccard``, ``lift``: pair statistics
  (prodassoc_core/mining/associations.py), pairs bought together at least ``min_pair_count`` times.
* ``decayed_damped``: time-decayed, basket-size-weighted co-purchase, damped by popularity.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import numpy as np
import polars as pl
import pyarrow as pa
import scipy.sparse as sp

from prodassoc_core.data import ASSOCIATED_PRODUCT_ID, ITEMS, ORDERED_AT, PRODUCT_ASSOCIATIONS, PRODUCT_ID
from prodassoc_core.mining.associations import basket_matrix, pair_counts, rank_associations
from prodassoc_core.mining.metrics import rule_metrics
from prodassoc_core.ops import ASSOCIATION_METHODS, AssociationConfig

RANK = "rank"
_RANKED_SCHEMA = {PRODUCT_ID: pl.String, ASSOCIATED_PRODUCT_ID: pl.String, RANK: pl.Int32}


def popular_products(baskets: Iterable[Sequence[str]], n: int | None = None) -> list[str]:
    """Products by number of baskets containing them, most first; ties by product id.

    An item repeated within one basket counts once. ``n`` cuts the list.
    """
    counts: dict[str, int] = {}
    for basket in baskets:
        for item in set(basket):
            counts[item] = counts.get(item, 0) + 1
    ranked = sorted(counts, key=lambda item: (-counts[item], item))
    return ranked if n is None else ranked[:n]


@dataclass(frozen=True)
class DecayedConfig:
    """Settings of ``decayed_associations``; defaults chosen on training-window validation folds.

    A training basket of size s and age d days (before ``as_of``) weighs
    0.5 ** (d / half_life_days) / max(s - 1, 1) ** size_exponent; c(a, b) is the total
    weight of baskets holding a and b, c(b) that of baskets holding b; the score of b
    for a is c(a, b) / c(b) ** popularity_exponent (0: co-purchase weight, as ``count``;
    1: a weighted ``lift``). ``half_life_days=None`` switches decay off.

    The defaults had the best mean NDCG@10 of a 48-setting grid over three validation
    folds cut from Online Retail's training window only (``benchmarks/eval_online_retail.py
    --select``); the test window played no part.
    """

    half_life_days: float | None = 120.0
    size_exponent: float = 0.5
    popularity_exponent: float = 0.25
    min_pair_count: int = 2  # unweighted co-purchase baskets needed, as in AssociationConfig
    top_k: int = 20

    def __post_init__(self) -> None:
        if self.half_life_days is not None and not self.half_life_days > 0:
            raise ValueError(f"half_life_days must be > 0 or None, got {self.half_life_days}")
        if self.size_exponent < 0 or self.popularity_exponent < 0:
            raise ValueError("size_exponent and popularity_exponent must be >= 0")
        if self.min_pair_count < 1 or self.top_k < 1:
            raise ValueError("min_pair_count and top_k must be >= 1")


def decayed_associations(baskets: pl.DataFrame, as_of: datetime, cfg: DecayedConfig = DecayedConfig()) -> pl.DataFrame:
    """Top-k associations by time-decayed, basket-size-weighted co-purchase, damped by popularity.

    ``baskets`` is a frame of training baskets (ordered_at, items), all before ``as_of``
    (ValueError otherwise: a later basket would leak). Why each part: recent baskets
    say more about what sells together next (decay); a wholesaler's 300-item order
    pairs everything with everything and says little about any one pair (size weight);
    count alone favours best-sellers that go with everything, lift alone favours rare
    items seen together once or twice, and a small exponent sits between (damping).
    Returns product_id, associated_product_id, rank (Int32, 1..top_k), score, n_rule
    (unweighted co-purchase baskets), method; ties by n_rule, then associated id;
    sorted by (product_id, rank).
    """
    return decayed_grid(baskets, as_of, [cfg])[0]


def decayed_grid(baskets: pl.DataFrame, as_of: datetime, cfgs: Sequence[DecayedConfig],
                 queries: Iterable[str] | None = None) -> list[pl.DataFrame]:
    """``decayed_associations`` for several settings, sharing the co-purchase counts (one pass
    over the baskets) and each (half-life, size exponent)'s weighted counts. All ``cfgs`` must
    share ``min_pair_count``. ``queries``: rank only these products (the rest of the rows are
    not made)."""
    if len({c.min_pair_count for c in cfgs}) > 1:
        raise ValueError("decayed_grid: every setting must share min_pair_count")
    if baskets.height == 0:
        return [_EMPTY_DECAYED.clone() for _ in cfgs]
    support = DecayedSupport.build(baskets, as_of, cfgs[0].min_pair_count)
    weighted: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
    out = []
    for cfg in cfgs:
        key = (cfg.half_life_days, cfg.size_exponent)
        if key not in weighted:
            weighted[key] = support.weighted(cfg)
        out.append(support.top_k(_damped(*weighted[key], support.b, cfg), cfg.top_k, queries=queries))
    return out


def _damped(c_ab: np.ndarray, c_b: np.ndarray, b: np.ndarray, cfg: DecayedConfig) -> np.ndarray:
    """The decayed_damped score of pairs (a, b): c(a, b) / c(b) ** popularity_exponent."""
    return c_ab / np.where(c_ab > 0, c_b[b], 1.0) ** cfg.popularity_exponent


_EMPTY_DECAYED = pl.DataFrame(
    schema={**_RANKED_SCHEMA, "score": pl.Float64, "n_rule": pl.Int64, "method": pl.String}
)


@dataclass(frozen=True)
class DecayedSupport:
    """The window's basket matrix and its co-purchased pairs (a, b, n_ab) with n_ab >=
    min_pair_count, row-major (a ascending, then b): what every decayed setting scores."""

    x: sp.csr_matrix
    items: list[str]
    age_days: np.ndarray
    sizes: np.ndarray
    a: np.ndarray
    b: np.ndarray
    n_ab: np.ndarray

    @classmethod
    def build(cls, baskets: pl.DataFrame, as_of: datetime, min_pair_count: int) -> "DecayedSupport":
        latest = baskets[ORDERED_AT].max()
        if latest >= as_of:
            raise ValueError(f"decayed_associations: a training basket at {latest} is not before as_of {as_of}")
        item_lists = baskets[ITEMS].to_list()
        sizes = np.array([len(set(b)) for b in item_lists], dtype=np.float64)
        x, items = basket_matrix(item_lists)
        x = x.astype(np.float64)
        age_days = (
            baskets.select((pl.lit(as_of) - pl.col(ORDERED_AT)).dt.total_microseconds() / 86_400e6)
            .to_series()
            .to_numpy()
        )
        counts = (x.T @ x).tocsr()
        counts.sort_indices()
        counts = counts.tocoo()  # row-major: rows ascending, columns ascending within a row
        keep = (counts.row != counts.col) & (counts.data >= min_pair_count)
        return cls(x, items, age_days, sizes, counts.row[keep], counts.col[keep], counts.data[keep].astype(np.int64))

    def basket_weights(self, cfg: DecayedConfig) -> np.ndarray:
        weight = np.ones(len(self.sizes)) if cfg.half_life_days is None else np.exp2(-self.age_days / cfg.half_life_days)
        return weight / np.maximum(self.sizes - 1.0, 1.0) ** cfg.size_exponent

    def at_least(self, min_pair_count: int) -> "DecayedSupport":
        """The same window with only the pairs bought together in ``min_pair_count`` baskets or more."""
        keep = self.n_ab >= min_pair_count
        return replace(self, a=self.a[keep], b=self.b[keep], n_ab=self.n_ab[keep])

    def weighted_counts(self, cfg: DecayedConfig) -> tuple[sp.csr_matrix, np.ndarray]:
        """(c_ab for every pair of items as a sparse matrix, c_b for every item) under ``cfg``'s
        basket weights."""
        weight = self.basket_weights(cfg)
        return (self.x.T @ sp.diags(weight) @ self.x).tocsr(), np.asarray(self.x.T @ weight).ravel()

    def weighted(self, cfg: DecayedConfig, counts: tuple[sp.csr_matrix, np.ndarray] | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """(c_ab for the support's pairs, c_b for every item) under ``cfg``'s basket weights
        (``counts``: its ``weighted_counts``, when made already)."""
        weighted, c_b = self.weighted_counts(cfg) if counts is None else counts
        c_ab = np.asarray(weighted[self.a, self.b]).ravel() if len(self.a) else np.zeros(0)
        return c_ab, c_b

    def top_k(self, score: np.ndarray, top_k: int, method: str = "decayed_damped",
              queries: Iterable[str] | None = None) -> pl.DataFrame:
        """Top k per product on integer ids (their order is the ids' sort order): score, then
        n_rule, descending, then associated id; strings are made for the kept rows only.
        ``queries``: only these products' lists."""
        a, b, n_ab = self.a, self.b, self.n_ab
        bounds = np.searchsorted(a, np.arange(len(self.items) + 1))
        picked = []
        if queries is None:
            wanted = range(len(self.items))
        else:
            position = {item: k for k, item in enumerate(self.items)}
            wanted = sorted(position[q] for q in set(queries) if q in position)
        for p in wanted:
            lo, hi = bounds[p], bounds[p + 1]
            if hi > lo:
                picked.append(lo + _top_k_order(score[lo:hi], n_ab[lo:hi], b[lo:hi], top_k))
        top = np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)
        rank = np.concatenate([np.arange(1, len(t) + 1) for t in picked]) if picked else np.zeros(0)
        a, b, n_ab, score = a[top], b[top], n_ab[top], score[top]
        names = pl.Series(self.items, dtype=pl.String)
        return pl.DataFrame(
            {
                PRODUCT_ID: names.gather(a),
                ASSOCIATED_PRODUCT_ID: names.gather(b),
                RANK: rank.astype(np.int32),
                "score": score.astype(np.float64),
                "n_rule": n_ab,
            },
            schema=_EMPTY_DECAYED.drop("method").schema,
        ).with_columns(method=pl.lit(method))


def _top_k_order(score: np.ndarray, n_ab: np.ndarray, b: np.ndarray, top_k: int) -> np.ndarray:
    """Positions of the first ``top_k`` by score, then n_ab, descending, then b: only the pairs
    scoring at least the k-th best score can be among them (ties included), so only those are
    sorted (a product of the full catalog has thousands of partners, a list has 20)."""
    if len(score) > top_k:
        kth = np.partition(score, len(score) - top_k)[len(score) - top_k]
        among = np.flatnonzero(score >= kth)
    else:
        among = np.arange(len(score))
    return among[np.lexsort((b[among], -n_ab[among], -score[among]))][:top_k]


def decayed_signals(
    baskets: pl.DataFrame, as_of: datetime, cfg: DecayedConfig, product_ids: Sequence[str]
) -> tuple[pl.DataFrame, sp.csr_matrix, np.ndarray]:
    """The hybrid's co-purchase signals of one window and setting, from one basket matrix and one
    weighted count: ``decayed_associations``' top lists (``cfg.top_k`` per product); every
    co-purchased pair's decayed score as a sparse matrix over ``product_ids`` (products outside
    the window's baskets have none: 0), nothing cut, a pair bought together once has its score;
    and c(b) per product."""
    n = len(product_ids)
    if baskets.height == 0:
        return _EMPTY_DECAYED.clone(), sp.csr_matrix((n, n)), np.zeros(n)
    support = DecayedSupport.build(baskets, as_of, 1)
    counts = support.weighted_counts(cfg)
    weighted, c_b = counts
    listed = support.at_least(cfg.min_pair_count)
    c_ab, _ = listed.weighted(cfg, counts)
    top = listed.top_k(_damped(c_ab, c_b, listed.b, cfg), cfg.top_k)
    damped = weighted @ sp.diags(1.0 / np.where(c_b > 0, c_b, 1.0) ** cfg.popularity_exponent)
    index = {p: i for i, p in enumerate(product_ids)}
    to_catalog = np.array([index.get(i, -1) for i in support.items], dtype=np.int64)
    known = np.flatnonzero(to_catalog >= 0)
    move = sp.csr_matrix((np.ones(len(known)), (known, to_catalog[known])), shape=(len(support.items), n))
    scores = (move.T @ damped.tocsr() @ move).tocsr()
    scores.setdiag(0)
    scores.eliminate_zeros()
    c_catalog = np.zeros(n)
    c_catalog[to_catalog[known]] = c_b[known]
    return top, scores, c_catalog


def popularity_associations(products: Iterable[str], popular: Sequence[str], top_k: int = 20) -> pl.DataFrame:
    """The popularity baseline: for every product, the ``top_k`` most popular other products.

    Returns product_id, associated_product_id, rank (Int32), score (1 / rank), method.
    """
    rows = []
    for p in sorted(set(products)):
        picked = [q for q in popular[: top_k + 1] if q != p][:top_k]
        rows.extend((p, q, r) for r, q in enumerate(picked, start=1))
    return pl.DataFrame(rows, schema=_RANKED_SCHEMA, orient="row").with_columns(
        score=1.0 / pl.col(RANK).cast(pl.Float64), method=pl.lit("popularity")
    )


PAIR_METHODS = ("count", "confidence", "jaccard", "lift")  # associations.rank_associations
METHODS = ASSOCIATION_METHODS


def method_associations(
    method: str,
    train: pl.DataFrame,
    as_of: datetime,
    top_k: int = 20,
    *,
    min_pair_count: int = 2,
    pairs: pl.DataFrame | None = None,
    decayed: DecayedConfig | None = None,
) -> pl.DataFrame:
    """A method's ranking from the training baskets (ordered_at, items), all before ``as_of``.

    Returns at least product_id, associated_product_id, rank and method (and score, except
    for popularity). Pair methods
    go through ``associations.rank_associations`` with ``min_pair_count`` (``pairs``, from
    ``associations.pair_counts(train items, min_pair_count)``, may be passed to share the
    work); ``popularity`` lists the same most popular training products for every training
    product; ``decayed_damped`` is ``decayed_associations`` with ``decayed`` (default
    ``DecayedConfig()``), its top_k replaced by ``top_k``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown evaluation method {method!r}; choose from {list(METHODS)}")
    if train.height and train[ORDERED_AT].max() >= as_of:
        raise ValueError(f"method_associations: training baskets must all be before as_of {as_of}")
    item_lists = train[ITEMS].to_list()
    if method == "popularity":
        return popularity_associations({i for b in item_lists for i in b}, popular_products(item_lists), top_k)
    if method in PAIR_METHODS:
        if pairs is None:
            pairs = pair_counts(item_lists, min_pair_count)
        cfg = AssociationConfig(method=method, min_pair_count=min_pair_count, top_k=top_k)
        return pl.from_arrow(rank_associations(pairs, cfg))
    cfg = decayed or DecayedConfig()
    return decayed_associations(train, as_of, replace(cfg, top_k=top_k))


def decayed_config(cfg: AssociationConfig) -> DecayedConfig:
    """``decayed_damped``'s settings as the product's AssociationConfig sets them."""
    return DecayedConfig(
        half_life_days=cfg.half_life_days,
        size_exponent=cfg.size_exponent,
        popularity_exponent=cfg.popularity_exponent,
        min_pair_count=cfg.min_pair_count,
        top_k=cfg.top_k,
    )


def config_associations(train: pl.DataFrame, as_of: datetime, cfg: AssociationConfig) -> pl.DataFrame:
    """The ranking that ``cfg`` (the product's AssociationConfig) selects."""
    return method_associations(
        cfg.method, train, as_of, cfg.top_k, min_pair_count=cfg.min_pair_count, decayed=decayed_config(cfg)
    )


def publishable(ranking: pl.DataFrame, item_lists: Sequence[Sequence[str]]) -> pa.Table:
    """A method's ranking with each pair's counts and rule metrics: a PRODUCT_ASSOCIATIONS table.

    Counts come from the same baskets the ranking was built from; a pair never bought
    together (a popularity pick) has n_rule 0.
    """
    x, items = basket_matrix(item_lists)
    index = {item: k for k, item in enumerate(items)}
    item_counts = np.asarray(x.sum(axis=0)).ravel().astype(np.int64)
    a = np.array([index[p] for p in ranking[PRODUCT_ID].to_list()], dtype=np.int64)
    b = np.array([index[q] for q in ranking[ASSOCIATED_PRODUCT_ID].to_list()], dtype=np.int64)
    co = (x.T @ x).tocsr()
    n_ab = np.asarray(co[a, b]).ravel().astype(np.int64) if len(a) else np.zeros(0, dtype=np.int64)
    counts = pl.DataFrame({
        "n_antecedent": pl.Series(item_counts[a] if len(a) else [], dtype=pl.Int64),
        "n_consequent": pl.Series(item_counts[b] if len(b) else [], dtype=pl.Int64),
        "n_rule": pl.Series(n_ab, dtype=pl.Int64),
    })
    ranked = ranking.select(PRODUCT_ID, ASSOCIATED_PRODUCT_ID, RANK, "score", "method")
    return publishable_counts(ranked.hstack(counts.get_columns()), len(item_lists))


def publishable_counts(ranking: pl.DataFrame, n_transactions: int) -> pa.Table:
    """A ranking that carries its pairs' counts (n_antecedent, n_consequent, n_rule) of
    ``n_transactions`` baskets, with the rule metrics: a PRODUCT_ASSOCIATIONS table. The one
    place the published metrics are computed (the spark engine's rankings come here too): the
    same expression gives the same bits (polars divides by the literal N as x * (1 / N))."""
    counted = ranking.select(PRODUCT_ID, ASSOCIATED_PRODUCT_ID, RANK, "score", "method",
                             "n_antecedent", "n_consequent", "n_rule").with_columns(
        n_transactions=pl.lit(n_transactions, dtype=pl.Int64))
    counted = counted.select(PRODUCT_ID, ASSOCIATED_PRODUCT_ID, RANK, "score", "method", "n_transactions",
                             "n_antecedent", "n_consequent", "n_rule")
    return PRODUCT_ASSOCIATIONS.conform(rule_metrics(counted.lazy()).sort(PRODUCT_ID, RANK).collect().to_arrow())
