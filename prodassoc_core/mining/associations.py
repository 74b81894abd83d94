"""Product-to-product associations from co-purchase statistics.

For every ordered pair (a, b) bought together in at least ``min_pair_count``
baskets, the pair's rule statistics (a => b) are computed from a sparse
basket-by-product matrix, ranked per product by the configured method and cut to
the top K. The result is the ``product_associations`` table.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl
import pyarrow as pa
import scipy.sparse as sp

from prodassoc_core.data import ASSOCIATED_PRODUCT_ID, PRODUCT_ASSOCIATIONS, PRODUCT_ID
from prodassoc_core.mining.metrics import rule_metrics
from prodassoc_core.ops import AssociationConfig

# Ranking statistic per method; ties fall back to lift, then to the co-purchase count,
# then to the associated product id, so rankings are total and deterministic.
SCORES: dict[str, pl.Expr] = {
    "confidence": pl.col("confidence"),
    "count": pl.col("n_rule").cast(pl.Float64),
    "lift": pl.col("lift"),
    "jaccard": pl.col("jaccard"),
}


def basket_matrix(baskets: Sequence[Sequence[str]]) -> tuple[sp.csr_matrix, list[str]]:
    """(X, items): X[i, j] = 1 when basket i holds items[j] (int32, baskets x items); items sorted.

    A product repeated in one basket counts once.
    """
    items = sorted({i for b in baskets for i in b})
    index = {item: k for k, item in enumerate(items)}
    rows = np.repeat(np.arange(len(baskets)), [len(b) for b in baskets])
    cols = np.fromiter((index[i] for b in baskets for i in b), dtype=np.int64, count=len(rows))
    x = sp.csr_matrix((np.ones(len(rows), dtype=np.int32), (rows, cols)), shape=(len(baskets), len(items)))
    x.data[:] = 1
    return x, items


def pair_counts(baskets: Sequence[Sequence[str]], min_pair_count: int) -> pl.DataFrame:
    """Co-purchase counts for ordered pairs.

    Returns columns product_id, associated_product_id, n_rule (baskets with both),
    n_antecedent (baskets with product_id), n_consequent (baskets with the other)
    and n_transactions, for pairs with n_rule >= min_pair_count, in both directions.
    """
    x, items = basket_matrix(baskets)
    co = (x.T @ x).tocoo()
    item_counts = np.asarray(x.sum(axis=0)).ravel()
    keep = (co.row != co.col) & (co.data >= min_pair_count)
    a, b, n_ab = co.row[keep], co.col[keep], co.data[keep]
    names = pl.Series(items, dtype=pl.String)  # ids by gather: no Python string per pair
    return pl.DataFrame(
        {
            PRODUCT_ID: names.gather(a),
            ASSOCIATED_PRODUCT_ID: names.gather(b),
            "n_rule": n_ab.astype(np.int64),
            "n_antecedent": item_counts[a].astype(np.int64),
            "n_consequent": item_counts[b].astype(np.int64),
        },
        schema={
            PRODUCT_ID: pl.String,
            ASSOCIATED_PRODUCT_ID: pl.String,
            "n_rule": pl.Int64,
            "n_antecedent": pl.Int64,
            "n_consequent": pl.Int64,
        },
    ).with_columns(n_transactions=pl.lit(len(baskets), dtype=pl.Int64))


def rank_associations(pairs: pl.DataFrame, cfg: AssociationConfig) -> pa.Table:
    """Score, rank and cut pairs to the top K per product; returns a PRODUCT_ASSOCIATIONS table."""
    if cfg.method not in SCORES:
        raise ValueError(f"unknown association method {cfg.method!r}; choose from {sorted(SCORES)}")
    ranked = (
        rule_metrics(pairs.lazy())
        .with_columns(score=SCORES[cfg.method], method=pl.lit(cfg.method))
        .sort(
            [PRODUCT_ID, "score", "lift", "n_rule", ASSOCIATED_PRODUCT_ID],
            descending=[False, True, True, True, False],
        )
        .with_columns(rank=(pl.int_range(pl.len()).over(PRODUCT_ID) + 1).cast(pl.Int32))
        .filter(pl.col("rank") <= cfg.top_k)
        .collect()
    )
    return PRODUCT_ASSOCIATIONS.conform(ranked.to_arrow())


def product_associations(baskets: Sequence[Sequence[str]], cfg: AssociationConfig) -> pa.Table:
    """Top-K associated products for every product with any association."""
    return rank_associations(pair_counts(baskets, cfg.min_pair_count), cfg)
