"""From validated transaction lines to baskets: one basket per order.

Basket rules (explicit, in this order; each is a BasketConfig setting):
1. Cancelled orders are not baskets: with ``drop_cancellations`` (off by default: a
   retailer's order ids are its own), every line of an order whose id starts with
   ``cancellation_prefix`` ("C", as in Online Retail's ``C536379``) is dropped. Online
   Retail needs no such rule: its cancellations hold only negative lines (rule 2).
2. Returns are not purchases: lines with quantity <= 0 are dropped.
3. Lines with a known price <= 0 (free samples, write-offs) are dropped when
   ``require_positive_price``; a missing price (basket files carry none) is kept.
4. Non-product lines (postage, fees, adjustments, vouchers) are dropped: codes in
   ``non_product_codes`` or matching ``non_product_pattern``.
5. A product bought on several lines of one order counts once in that basket.
Orders left with no product line are not baskets.

``load_baskets_file`` and ``load_basket_codes`` read a basket file (a basket CSV, or canonical
transactions Parquet through these rules) for ad-hoc mining (``prodassoc rules``). They read
with polars' own Parquet reader and build nothing with ``pa.array``: pyarrow's dataset reader
and ``pa.array`` import pandas, which would cost more than reading.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from prodassoc_core.data.contracts import (
    ORDER_ID,
    ORDERED_AT,
    PRODUCT_ID,
    QUANTITY,
    STORE_ID,
    TRANSACTIONS,
    UNIT_PRICE,
)
from prodassoc_core.ops import BasketRules

if TYPE_CHECKING:
    from prodassoc_core.ops import BasketConfig

ITEMS = "items"
# The transactions columns the basket rules read.
BASKET_COLUMNS = (ORDER_ID, PRODUCT_ID, QUANTITY, UNIT_PRICE, ORDERED_AT)


def is_non_product(cfg: BasketConfig | BasketRules) -> pl.Expr:
    """True for lines whose product_id is a non-product code."""
    expr = pl.col(PRODUCT_ID).is_in(list(cfg.non_product_codes))
    if cfg.non_product_pattern:
        expr = expr | pl.col(PRODUCT_ID).str.contains(cfg.non_product_pattern)
    return expr


# The rules that drop lines, in order (the names ``dropped_by`` gives and the accounting counts).
CANCELLED = "cancelled order"
RETURN = "return (quantity <= 0)"
FREE = "price <= 0"
NON_PRODUCT = "non-product code"
KEPT = "kept"
RULE = "rule"
LINES = "lines"


def dropped_by(cfg: BasketConfig | BasketRules) -> pl.Expr:
    """The first basket rule (1-4) a line fails, by name; null for a line that is kept."""
    checks = [(pl.col(ORDER_ID).str.starts_with(cfg.cancellation_prefix), CANCELLED)] if cfg.drop_cancellations else []
    checks.append((pl.col(QUANTITY).fill_null(0) <= 0, RETURN))
    if cfg.require_positive_price:
        checks.append((pl.col(UNIT_PRICE) <= 0, FREE))  # a missing price is kept
    checks.append((is_non_product(cfg), NON_PRODUCT))
    (first, name), rest = checks[0], checks[1:]
    rule = pl.when(first).then(pl.lit(name))
    for check, name in rest:
        rule = rule.when(check).then(pl.lit(name))
    return rule.otherwise(pl.lit(None, pl.String))


def product_lines(lines: pl.LazyFrame, cfg: BasketConfig | BasketRules) -> pl.LazyFrame:
    """Apply basket rules 1-4 to canonical transaction lines."""
    return lines.filter(dropped_by(cfg).is_null())


def line_account(lines: pl.LazyFrame, cfg: BasketConfig | BasketRules) -> pl.LazyFrame:
    """Every line counted once: ``rule`` (the first basket rule that drops it, or ``kept``),
    ``product_id`` (for non-product codes only, else null) and ``lines``; the lines sum to
    the input's. Sorted by rule order, then most lines first."""
    rule = dropped_by(cfg).fill_null(KEPT)
    counted = (
        lines.select(rule.alias(RULE), pl.when(rule == NON_PRODUCT).then(pl.col(PRODUCT_ID)).alias(PRODUCT_ID))
        .group_by(RULE, PRODUCT_ID)
        .agg(pl.len().cast(pl.Int64).alias(LINES))
    )
    return sort_account(counted)


def sort_account(counted: pl.LazyFrame) -> pl.LazyFrame:
    """``line_account``'s rows in its order (rule order, then most lines, then product id)."""
    order = [CANCELLED, RETURN, FREE, NON_PRODUCT, KEPT]
    rank = pl.col(RULE).replace_strict(order, list(range(len(order))))
    return counted.sort(rank, pl.col(LINES), pl.col(PRODUCT_ID), descending=[False, True, False], nulls_last=True)


def describe_account(account: pl.DataFrame, n_baskets: int, top_codes: int = 5) -> str:
    """One line for the log: the window's lines, the baskets, and what each rule dropped (the
    non-product codes that dropped most by name, so a real product among them shows)."""
    totals = dict(account.group_by(RULE, maintain_order=True).agg(pl.col(LINES).sum()).iter_rows())
    dropped = [f"{n:,} {rule}" for rule, n in totals.items() if rule != KEPT]
    codes = account.filter(pl.col(RULE) == NON_PRODUCT)
    if codes.height:
        shown = ", ".join(f"{p} {n:,}" for p, n in codes.head(top_codes).select(PRODUCT_ID, LINES).iter_rows())
        more = f", {codes.height - top_codes:,} more" if codes.height > top_codes else ""
        dropped[-1] += f" ({shown}{more})"
    return (f"{sum(totals.values()):,} lines, {totals.get(KEPT, 0):,} kept in {n_baskets:,} baskets; dropped: "
            f"{'; '.join(dropped) or 'none'}")


def split_orders(lines: pl.LazyFrame) -> pl.LazyFrame:
    """Orders whose lines fall on more than one day or in more than one store: ``order_id``,
    ``days``, ``stores``, most days first. An order is one visit; receipt numbers that restart each
    day or store would merge several visits into one basket."""
    return (
        lines.group_by(ORDER_ID)
        .agg(days=pl.col(ORDERED_AT).dt.date().n_unique().cast(pl.Int64),
             stores=pl.col(STORE_ID).drop_nulls().n_unique().cast(pl.Int64))
        .filter((pl.col("days") > 1) | (pl.col("stores") > 1))
        .sort(["days", "stores", ORDER_ID], descending=[True, True, False])
    )


def describe_split(split: pl.DataFrame, n_orders: int, examples: int = 3) -> str:
    """One line for the log about ``split_orders``' rows, with the first few as examples."""
    def plural(n: int, word: str) -> str:
        return f"{n} {word}{'' if n == 1 else 's'}"

    shown = "; ".join(f"order {o}: {plural(d, 'day')}, {plural(s, 'store')}"
                      for o, d, s in split.head(examples).select(ORDER_ID, "days", "stores").iter_rows())
    return (f"{split.height:,} of {n_orders:,} orders have lines on more than one day or in more than one store "
            f"({shown}{'; ...' if split.height > examples else ''}): if order ids restart each day or store, "
            "several visits became one basket; make them unique before landing (prefix the store and the date)")


def baskets(lines: pl.LazyFrame, cfg: BasketConfig | BasketRules) -> pl.LazyFrame:
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


def read_transactions_file(path: Path) -> pl.LazyFrame:
    """The columns the basket rules read (``BASKET_COLUMNS``) of a canonical transactions Parquet file.

    As ``TRANSACTIONS.conform``: ValueError naming the missing required columns, an absent optional
    one (the price) read as missing; a column stored with
    another type is cast to the contract's with Arrow's (safe) cast. Only these columns are read.
    """
    import pyarrow as pa

    try:
        stored = pl.read_parquet_schema(path)
        missing = [c for c in TRANSACTIONS.required if c not in stored]
        if missing:
            raise ValueError(f"{TRANSACTIONS.name}: missing required column(s) {missing}")
        frame = pl.read_parquet(path, columns=[c for c in BASKET_COLUMNS if c in stored])
    except pl.exceptions.PolarsError as exc:  # not Parquet, or unreadable: bad input, like Arrow's errors
        raise ValueError(f"{path}: not a readable transactions Parquet file: {exc}") from exc
    absent = [c for c in BASKET_COLUMNS if c not in stored]  # optional ones (a price): missing
    frame = frame.with_columns(pl.lit(None, TRANSACTIONS.polars_schema[c]).alias(c) for c in absent)
    frame = frame.select(BASKET_COLUMNS)
    missing_values = [c for c in BASKET_COLUMNS if c in TRANSACTIONS.non_nullable and frame[c].null_count()]
    if missing_values:
        raise ValueError(f"{path}: {TRANSACTIONS.name} column(s) {missing_values} have missing values")
    wanted = TRANSACTIONS.polars_schema
    other = [c for c in BASKET_COLUMNS if frame.schema[c] != wanted[c]]
    if other:
        table = frame.select(other).to_arrow()
        cast = pl.from_arrow(pa.table({c: table[c].cast(TRANSACTIONS.schema.field(c).type) for c in other}))
        frame = frame.with_columns(cast)
    return frame.lazy()


def _check_input(path: Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such input: {path}")
    return path


def load_baskets_file(path: Path, cfg: BasketConfig | BasketRules | None = None) -> list[list[str]]:
    """Baskets from a basket CSV (one basket per line) or a canonical transactions Parquet.

    Transactions go through the same basket rules as the nightly flow (``baskets``; by default
    ``BasketRules()``, the defaults of ``BasketConfig`` without pydantic); each basket is its
    sorted, distinct product ids.
    """
    path = _check_input(path)
    if path.suffix.lower() == ".parquet":
        lines = read_transactions_file(path)
        return baskets(lines, cfg or BasketRules()).collect()[ITEMS].to_list()
    from prodassoc_core.data.importers import read_basket_csv

    return read_basket_csv(path)


def load_basket_codes(
    path: Path, cfg: BasketConfig | BasketRules | None = None
) -> tuple[list[list[int]], list[str]]:
    """``load_baskets_file`` as integer codes: (baskets of codes, items), code k standing for ``items[k]``.

    The same baskets as sets: for Parquet input, in no particular order and each basket's distinct
    codes in no particular order (mining does not depend on either; sorting them cost a third of
    reading). ``items`` lists each id once (sorted for Parquet input, in order of appearance for a
    CSV). Python ints are built and hashed faster than strings: this is the input
    ``mine_rules(..., items=items)`` mines fastest.
    """
    path = _check_input(path)
    if path.suffix.lower() != ".parquet":
        from prodassoc_core.data.importers import read_basket_csv

        index: dict[str, int] = {}
        coded = [[index.setdefault(item, len(index)) for item in basket] for basket in read_basket_csv(path)]
        return coded, list(index)
    lines = product_lines(read_transactions_file(path), cfg or BasketRules()).select(ORDER_ID, PRODUCT_ID).collect()
    items = lines[PRODUCT_ID].unique().sort()
    # an Enum's physical value is the index of its category: code k is items[k]
    code = pl.col(PRODUCT_ID).cast(pl.Enum(items)).to_physical().cast(pl.Int64)
    coded = lines.lazy().group_by(ORDER_ID).agg(code.unique().alias(ITEMS)).collect()
    return coded[ITEMS].to_list(), items.to_list()
