"""From validated transaction lines to baskets: one basket per order.

Basket rules (explicit, in this order; each is a BasketConfig setting):
1. Cancelled orders are not baskets: every line of an order whose id starts with
   ``cancellation_prefix`` ("C", as in Online Retail's ``C536379``) is dropped.
2. Returns are not purchases: lines with quantity <= 0 are dropped.
3. Lines with a known price <= 0 (free samples, write-offs) are dropped when
   ``require_positive_price``; a missing price (basket files carry none) is kept.
4. Non-product lines (postage, fees, adjustments, vouchers) are dropped: codes in
   ``non_product_codes`` or matching ``non_product_pattern``.
5. A product bought on several lines of one order counts once in that basket.
Orders left with no product line are not baskets.
"""

from __future__ import annotations

import polars as pl

from prodassoc_core.data.contracts import ORDER_ID, ORDERED_AT, PRODUCT_ID, QUANTITY, UNIT_PRICE
from prodassoc_core.ops import BasketConfig

ITEMS = "items"


def is_non_product(cfg: BasketConfig) -> pl.Expr:
    """True for lines whose product_id is a non-product code."""
    expr = pl.col(PRODUCT_ID).is_in(list(cfg.non_product_codes))
    if cfg.non_product_pattern:
        expr = expr | pl.col(PRODUCT_ID).str.contains(cfg.non_product_pattern)
    return expr


def product_lines(lines: pl.LazyFrame, cfg: BasketConfig) -> pl.LazyFrame:
    """Apply basket rules 1-4 to canonical transaction lines."""
    keep = (pl.col(QUANTITY) > 0) & ~is_non_product(cfg)
    if cfg.drop_cancellations:
        keep = keep & ~pl.col(ORDER_ID).str.starts_with(cfg.cancellation_prefix)
    if cfg.require_positive_price:
        keep = keep & (pl.col(UNIT_PRICE).is_null() | (pl.col(UNIT_PRICE) > 0))
    return lines.filter(keep)


def baskets(lines: pl.LazyFrame, cfg: BasketConfig) -> pl.LazyFrame:
    """One row per order: ``order_id``, ``ordered_at`` (first line), ``items`` (sorted, unique).

    Sorted by (ordered_at, order_id) so that everything built from it is deterministic.
    """
    return (
        product_lines(lines, cfg)
        .group_by(ORDER_ID)
        .agg(
            pl.col(ORDERED_AT).min(),
            pl.col(PRODUCT_ID).unique().sort().alias(ITEMS),
        )
        .sort(ORDERED_AT, ORDER_ID)
    )
