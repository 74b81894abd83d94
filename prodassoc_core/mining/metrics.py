"""Interestingness measures of a rule A => B, from its integer counts.

Input columns: n_transactions (N), n_antecedent (n_A), n_consequent (n_B),
n_rule (n_AB, baskets with A and B). With s_X = n_X / N:

    support     = s_AB
    confidence  = n_AB / n_A
    lift        = n_AB * N / (n_A * n_B)
    leverage    = s_AB - s_A * s_B
    conviction  = (1 - s_B) / (1 - confidence)        null when confidence == 1
    zhang       = leverage / max(s_AB * (1 - s_A), s_A * (s_B - s_AB))   null when 0/0
    jaccard     = n_AB / (n_A + n_B - n_AB)

Definitions as in arules and mlxtend. Thresholds are never applied to these
floats: mining compares integer counts (see prodassoc_core.mining.rules).
"""

from __future__ import annotations

import polars as pl

METRIC_COLUMNS = ["support", "confidence", "lift", "leverage", "conviction", "zhangs_metric", "jaccard"]


def rule_metrics(counts: pl.LazyFrame) -> pl.LazyFrame:
    """Add the metric columns to a frame of rule counts."""
    n = pl.col("n_transactions").cast(pl.Float64)
    n_a = pl.col("n_antecedent").cast(pl.Float64)
    n_b = pl.col("n_consequent").cast(pl.Float64)
    n_ab = pl.col("n_rule").cast(pl.Float64)
    s_a, s_b, s_ab = n_a / n, n_b / n, n_ab / n
    confidence = n_ab / n_a
    zhang_den = pl.max_horizontal(s_ab * (1 - s_a), s_a * (s_b - s_ab))
    return counts.with_columns(
        support=s_ab,
        confidence=confidence,
        lift=n_ab * n / (n_a * n_b),
        leverage=s_ab - s_a * s_b,
        conviction=pl.when(pl.col("n_rule") < pl.col("n_antecedent")).then((1 - s_b) / (1 - confidence)),
        zhangs_metric=pl.when(zhang_den != 0).then((s_ab - s_a * s_b) / zhang_den),
        jaccard=n_ab / (n_a + n_b - n_ab),
    )
