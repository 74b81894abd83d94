"""Importers: bring a real source into the canonical landing layout.

Three kinds of source:

* ``online_retail`` - the UCI Online Retail / Online Retail II Parquet files, with
  built-in column mappings (detected from the file's columns);
* ``basket_csv`` - one basket per line, items comma-separated (like Groceries);
* ``canonical`` - a transactions file and a catalog file (Parquet or CSV) already in
  the canonical schema, or brought to it by a column mapping
  ``"order_id=InvoiceNo,product_id=StockCode"``.

Every source is read into a ``pl.LazyFrame`` in the ``contracts.TRANSACTIONS`` schema
and a catalog ``pl.DataFrame`` in the ``contracts.CATALOG`` schema; ``write_landing``
writes both into the landing layout::

    <landing>/transactions/dt=YYYY-MM-DD/part-0.parquet
    <landing>/catalog/catalog-<date of the last transaction>.parquet

Importers keep every real line: cancellations, returns (negative quantities) and
non-product codes (POST, DOT, ...) are the validation and basket steps' business.
Values that cannot be cast to the contract, and missing values in a required column,
raise ValueError at the boundary (naming file, column, count and an example), because
the landing schema cannot hold them and they must not vanish silently.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Literal

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from prodassoc_core.data.contracts import (
    CATALOG,
    CATEGORY,
    CUSTOMER_ID,
    DESCRIPTION,
    ORDER_ID,
    ORDERED_AT,
    PRODUCT_ID,
    QUANTITY,
    TIME_ZONE_SUFFIX,
    TITLE,
    TRANSACTIONS,
    UNIT_PRICE,
    TableContract,
)

log = logging.getLogger(__name__)

SourceKind = Literal["online_retail", "basket_csv", "canonical"]

# Descriptions that mean "no description" (compared stripped and case-insensitively):
# the 2010-2011 copy filled gaps with "Unknown", the 2009-2010 copy has the string "nan".
MISSING_DESCRIPTIONS = frozenset({"", "nan", "unknown"})

_ROW = "__row"  # 0-based source row, used for error examples only


# --- column mappings ---------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnMapping:
    """Which source column feeds each canonical column of ``contract``.

    ``columns`` is ``{canonical_name: source_name}``; canonical columns it does not name
    are read from a source column of the same name. Targets are checked against the
    contract's column names (the allow-list): an unknown one raises ValueError.
    Stored as sorted ``(canonical, source)`` pairs so the mapping is hashable.
    """

    contract: TableContract
    columns: Mapping[str, str] | tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        pairs = dict(self.columns.items() if isinstance(self.columns, Mapping) else self.columns)
        allowed = self.contract.schema.names
        unknown = [c for c in pairs if c not in allowed]
        if unknown:
            raise ValueError(
                f"unknown {self.contract.name} column(s) {unknown} in column mapping; allowed: {allowed}"
            )
        empty = [c for c, s in pairs.items() if not isinstance(s, str) or not s]
        if empty:
            raise ValueError(f"column mapping gives no source column for {empty}")
        object.__setattr__(self, "columns", tuple(sorted(pairs.items())))

    def as_dict(self) -> dict[str, str]:
        return dict(self.columns)

    def source(self, canonical: str) -> str:
        return self.as_dict().get(canonical, canonical)

    def resolve(self, available: Sequence[str], where: str | Path) -> dict[str, str | None]:
        """``{canonical: source column, or None for an absent optional column}``.

        Raises ValueError naming ``where`` and the missing source columns: a required
        column, or one the mapping names explicitly, must exist.
        """
        explicit = self.as_dict()
        resolved: dict[str, str | None] = {}
        missing = []
        for name in self.contract.schema.names:
            src = explicit.get(name, name)
            if src in available:
                resolved[name] = src
            elif name in explicit or name not in self.contract.optional:
                missing.append(f"{src!r} (for {name})" if src != name else repr(src))
            else:
                resolved[name] = None
        if missing:
            raise ValueError(
                f"{where}: missing source column(s) {', '.join(missing)}; the file has {list(available)}"
            )
        return resolved


MappingLike = ColumnMapping | Mapping[str, str] | str | None


def parse_mapping(text: str, contract: TableContract = TRANSACTIONS) -> ColumnMapping:
    """Parse ``"canon=source,canon=source"`` into a ColumnMapping for ``contract``.

    Whitespace around names is ignored, so ``customer_id = Customer ID`` works; source
    names cannot contain ',' or '='. Unknown or repeated canonical names raise ValueError.
    """
    pairs: dict[str, str] = {}
    for piece in text.split(","):
        if not piece.strip():
            continue
        canon, sep, source = piece.partition("=")
        canon, source = canon.strip(), source.strip()
        if not sep or not canon or not source:
            raise ValueError(f"bad column mapping entry {piece.strip()!r}: expected canonical=source")
        if canon in pairs:
            raise ValueError(f"column mapping names {canon!r} twice")
        pairs[canon] = source
    return ColumnMapping(contract, pairs)


def _as_mapping(mapping: MappingLike, contract: TableContract) -> ColumnMapping:
    if mapping is None:
        return ColumnMapping(contract)
    if isinstance(mapping, ColumnMapping):
        if mapping.contract.name != contract.name:
            raise ValueError(f"a {mapping.contract.name} mapping was given for {contract.name}")
        return mapping
    if isinstance(mapping, str):
        return parse_mapping(mapping, contract)
    return ColumnMapping(contract, mapping)


# --- casting to a contract ---------------------------------------------------------------


@dataclass(frozen=True)
class _Check:
    """A cast that can fail, or a required column that must not be null."""

    column: str
    source: str
    failed: pl.Expr  # true on a bad row
    shown: pl.Expr  # the source value, as text, for the error message
    message: str


def _float_to_id(x: pl.Expr) -> pl.Expr:
    # 17850.0 -> "17850": ids stored as floats (pandas' NaN-able ints) lose the ".0".
    return (
        pl.when(x.is_nan()).then(None)
        .when(x == x.floor()).then(x.cast(pl.Int64, strict=False).cast(pl.String))
        .otherwise(x.cast(pl.String))
    )


def _cast_column(
    src: str, dtype: pl.DataType, target: pl.DataType, where: str, datetime_format: str | None
) -> tuple[pl.Expr, pl.Expr | None]:
    """(expression in the target type, "value present in the source" expression or None).

    The second item is given only for casts that can fail: a row fails when its value is
    present in the source and the cast gives null. Empty or blank text and NaN are missing.
    """
    x = pl.col(src)
    if isinstance(dtype, pl.Null):  # an all-null column
        return pl.lit(None, dtype=target), None
    if isinstance(dtype, pl.Decimal):
        x, dtype = x.cast(pl.Float64), pl.Float64()
    if isinstance(dtype, (pl.String, pl.Categorical, pl.Enum)):
        s = x.cast(pl.String).str.strip_chars()
        present = s.is_not_null() & (s.str.len_chars() > 0)
        s = pl.when(present).then(s)  # empty text is a missing value
    else:
        s = None
        present = x.is_not_null() & (~x.is_nan() if dtype.is_float() else pl.lit(True))

    if isinstance(target, pl.String):
        if s is not None:
            return s, None
        if dtype.is_float():
            return _float_to_id(x), None
        if dtype.is_integer():  # booleans, dates and nested values are not ids (contracts.py rules)
            return x.cast(pl.String), None
    elif target == pl.Int64:
        if s is not None:
            f = s.cast(pl.Float64, strict=False)  # "3.0" is a whole number too
            whole = pl.when(f == f.floor()).then(f.cast(pl.Int64, strict=False))
            return pl.coalesce(s.cast(pl.Int64, strict=False), whole), present
        if dtype.is_float():
            return pl.when(x == x.floor()).then(x.cast(pl.Int64, strict=False)), present
        if dtype.is_integer():
            safe = dtype in (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32)
            return x.cast(pl.Int64, strict=False), None if safe else present
    elif target == pl.Float64:
        if s is not None:
            return s.cast(pl.Float64, strict=False), present
        if dtype.is_integer() or dtype.is_float():
            return pl.when(present).then(x.cast(pl.Float64)), None  # NaN price = missing
    elif isinstance(target, pl.Datetime):
        if s is not None:
            # local time as written (contracts.py): a trailing Z or offset is dropped, not applied
            s = s.str.replace(TIME_ZONE_SUFFIX, "${1}")
            fmt = None if datetime_format is None else re.sub(r"\s*(?:%z|%:z|%#z|Z)$", "", datetime_format)
            return s.str.to_datetime(fmt, time_unit="us", strict=False), present
        if isinstance(dtype, (pl.Datetime, pl.Date)):
            return x, None
    raise ValueError(
        f"{where}: column {src!r} of type {dtype} cannot be read as {target} "
        f"(the conversion rules are in prodassoc_core/data/contracts.py)"
    )


def _to_naive_us(lf: pl.LazyFrame, name: str) -> pl.LazyFrame:
    """Datetimes become naive microseconds; time-zone-aware ones keep their wall-clock time in
    their zone (the zone is dropped, not applied: contracts.py's one time-zone rule)."""
    dtype = lf.collect_schema()[name]
    expr = pl.col(name)
    if isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:
        expr = expr.dt.replace_time_zone(None)
    return lf.with_columns(expr.cast(pl.Datetime("us")))


def _conform(
    lf: pl.LazyFrame,
    mapping: ColumnMapping,
    where: str,
    *,
    datetime_format: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> pl.LazyFrame:
    """Select ``mapping``'s source columns as the contract's columns, typed, in order.

    ``extra`` carries further source columns along (``{output_name: source_name}``),
    as text. One aggregate pass over the source checks every fallible cast and every
    required column; a failure raises ValueError naming ``where``, the column, the count
    and an example value and row.
    """
    contract = mapping.contract
    schema = lf.collect_schema()
    resolved = mapping.resolve(schema.names(), where)
    exprs, checks = [], []
    for name, target in contract.polars_schema.items():
        src = resolved[name]
        if src is None:
            exprs.append(pl.lit(None, dtype=target).alias(name))
            continue
        expr, present = _cast_column(src, schema[src], target, where, datetime_format)
        exprs.append(expr.alias(name))
        shown = pl.col(src).cast(pl.String)
        if present is not None:
            checks.append(_Check(name, src, present & expr.is_null(), shown, f"value(s) cannot be read as {target}"))
        if not contract.schema.field(name).nullable:
            missing = expr.is_null() if present is None else ~present  # cast failures are counted above
            checks.append(_Check(name, src, missing, shown, "missing value(s) in a required column"))
    for name, src in (extra or {}).items():
        if src not in schema.names():
            raise ValueError(f"{where}: missing source column {src!r}; the file has {schema.names()}")
        exprs.append(pl.col(src).cast(pl.String).alias(name))

    if checks:
        _raise_on_failed_checks(lf, checks, where)
    out = lf.select(exprs)
    if ORDERED_AT in contract.schema.names:
        out = _to_naive_us(out, ORDERED_AT)
    return out


def _raise_on_failed_checks(lf: pl.LazyFrame, checks: list[_Check], where: str) -> None:
    aggs = []
    for i, c in enumerate(checks):
        aggs += [
            c.failed.sum().alias(f"n{i}"),
            c.shown.filter(c.failed).first().alias(f"v{i}"),
            pl.col(_ROW).filter(c.failed).first().alias(f"r{i}"),
        ]
    found = lf.with_row_index(_ROW).select(aggs).collect().row(0, named=True)
    problems = [
        f"column {c.column!r} (source {c.source!r}): {found[f'n{i}']:,} {c.message}, "
        f"e.g. {found[f'v{i}']!r} at data row {found[f'r{i}'] + 1}"
        for i, c in enumerate(checks)
        if found[f"n{i}"]
    ]
    if problems:
        raise ValueError(f"{where}: " + "; ".join(problems))


def _scan_table(path: Path) -> pl.LazyFrame:
    """Parquet, or CSV read as text (no type inference: ids like "00123" stay intact)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pl.scan_parquet(path, glob=False)
    if suffix in (".csv", ".txt"):
        return pl.scan_csv(path, infer_schema=False)
    raise ValueError(f"{path}: unsupported file type {path.suffix!r} (expected .parquet or .csv)")


# --- UCI Online Retail ---------------------------------------------------------------------


@dataclass(frozen=True)
class OnlineRetailFormat:
    """A known Online Retail layout: its transactions mapping and its description column."""

    name: str
    transactions: ColumnMapping
    description: str

    @property
    def source_columns(self) -> list[str]:
        return [s for _, s in self.transactions.columns] + [self.description]


ONLINE_RETAIL = OnlineRetailFormat(
    name="UCI Online Retail (2010-2011)",
    transactions=ColumnMapping(
        TRANSACTIONS,
        {ORDER_ID: "InvoiceNo", PRODUCT_ID: "StockCode", QUANTITY: "Quantity", UNIT_PRICE: "UnitPrice",
         CUSTOMER_ID: "CustomerID", ORDERED_AT: "InvoiceDate"},
    ),
    description="Description",
)
ONLINE_RETAIL_II = OnlineRetailFormat(
    name="UCI Online Retail II",
    transactions=ColumnMapping(
        TRANSACTIONS,
        {ORDER_ID: "Invoice", PRODUCT_ID: "StockCode", QUANTITY: "Quantity", UNIT_PRICE: "Price",
         CUSTOMER_ID: "Customer ID", ORDERED_AT: "InvoiceDate"},
    ),
    description="Description",
)
ONLINE_RETAIL_FORMATS = (ONLINE_RETAIL, ONLINE_RETAIL_II)


def detect_online_retail_format(path: Path) -> OnlineRetailFormat:
    """The built-in format whose source columns the file has; ValueError naming what is missing."""
    if Path(path).suffix.lower() not in (".parquet", ".pq"):
        raise ValueError(
            f"{path}: the Online Retail importer reads the UCI Parquet files, not {Path(path).suffix or 'this'} "
            "files; for a CSV use 'import canonical' with --map (e.g. --map order_id=InvoiceNo,product_id=StockCode,"
            "quantity=Quantity,unit_price=UnitPrice,customer_id=CustomerID,ordered_at=InvoiceDate)"
        )
    columns = pl.scan_parquet(path, glob=False).collect_schema().names()
    for fmt in ONLINE_RETAIL_FORMATS:
        if all(c in columns for c in fmt.source_columns):
            return fmt
    missing = "; ".join(
        f"{fmt.name} needs {[c for c in fmt.source_columns if c not in columns]}" for fmt in ONLINE_RETAIL_FORMATS
    )
    raise ValueError(f"{path}: not an Online Retail file ({missing}); it has {columns}")


def online_retail_lines(paths: Sequence[Path] | Path) -> pl.LazyFrame:
    """Online Retail Parquet file(s) as canonical transactions plus a ``description`` column.

    Values: order_id is the invoice number as-is (cancellations keep their 'C' prefix),
    product_id the stock code stripped and upper-cased (the source spells some codes
    both ways, e.g. 85123a and 85123A, for one product), quantity
    int64 (negative for returns), unit_price float64, customer_id the customer number as
    text ("17850", null stays null), ordered_at the invoice timestamp in microseconds.

    Overlap rule (the two UCI files share 2010-12-01..2010-12-09): files are ordered by
    their first timestamp (ties: the order given), and each file owns the time range
    ``[its first timestamp, the next file's first timestamp)``; the last file owns
    everything from its first timestamp on. So where files overlap the later-starting
    file wins, and each instant's lines come from exactly one file. Within a file, rows
    keep their source order; files are concatenated in that order.
    """
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    if not paths:
        raise ValueError("online_retail_lines: no input files")
    frames = []
    for i, path in enumerate(paths):
        fmt = detect_online_retail_format(path)
        lf = _conform(pl.scan_parquet(path, glob=False), fmt.transactions, str(path), extra={DESCRIPTION: fmt.description})
        # Parquet copies store CustomerID as float; a text copy may read "17850.0".
        lf = lf.with_columns(
            pl.col(CUSTOMER_ID).str.replace(r"^(\d+)\.0+$", "${1}"), pl.col(PRODUCT_ID).str.to_uppercase()
        )
        first = lf.select(pl.col(ORDERED_AT).min()).collect().item()
        log.info("%s: %s, first line at %s", path, fmt.name, first)
        if first is not None:  # an empty file owns nothing
            frames.append((first, i, lf))
    frames.sort(key=lambda t: (t[0], t[1]))
    owned = []
    for k, (first, _, lf) in enumerate(frames):
        keep = pl.col(ORDERED_AT) >= first
        if k + 1 < len(frames):
            keep &= pl.col(ORDERED_AT) < frames[k + 1][0]
        owned.append(lf.filter(keep))
    if not owned:
        return _empty(TRANSACTIONS).with_columns(pl.lit(None, dtype=pl.String).alias(DESCRIPTION))
    return pl.concat(owned, how="vertical")


def online_retail_transactions(paths: Sequence[Path] | Path) -> pl.LazyFrame:
    """Online Retail file(s) as canonical transactions (see ``online_retail_lines`` for the rules)."""
    return online_retail_lines(paths).select(TRANSACTIONS.schema.names)


def derive_catalog(lines: pl.LazyFrame, description: str | None = DESCRIPTION) -> pl.DataFrame:
    """Catalog derived from transaction lines: one row per product_id, sorted by it.

    title = the product's most frequent non-missing description (stripped; missing means
    null, empty, "nan" or "Unknown", case-insensitively); ties go to the lexicographically
    smallest. A product never described gets its product_id as title. description,
    category and brand are null. ``description=None`` (or a frame without that column)
    titles every product by its id.
    """
    products = lines.select(pl.col(PRODUCT_ID)).unique()
    if description is not None and description in lines.collect_schema().names():
        text = pl.col(description).cast(pl.String).str.strip_chars()
        best = (
            lines.select(PRODUCT_ID, text.alias(TITLE))
            .filter(pl.col(TITLE).is_not_null() & ~pl.col(TITLE).str.to_lowercase().is_in(list(MISSING_DESCRIPTIONS)))
            .group_by(PRODUCT_ID, TITLE)
            .agg(pl.len().alias("n"))
            .sort([PRODUCT_ID, "n", TITLE], descending=[False, True, False])
            .unique(subset=PRODUCT_ID, keep="first", maintain_order=True)
            .select(PRODUCT_ID, TITLE)
        )
        products = products.join(best, on=PRODUCT_ID, how="left")
    else:
        products = products.with_columns(pl.lit(None, dtype=pl.String).alias(TITLE))
    return _catalog_frame(products.with_columns(pl.coalesce(TITLE, PRODUCT_ID).alias(TITLE)).collect())


# --- basket CSV ------------------------------------------------------------------------------


def _basket_lines(path: Path) -> list[tuple[int, list[str]]]:
    """(1-based line number, distinct stripped items in first-seen order) per non-blank line."""
    out = []
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory, expected a basket CSV file")
    with path.open("rb") as f:  # text is decoded line by line so that an error can name its line
        for number, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(
                    f"{path}: line {number} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                    "re-encode the file as UTF-8"
                ) from None
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        for row in reader:
            items = list(dict.fromkeys(i.strip() for i in row if i.strip()))
            if items:
                out.append((reader.line_num, items))
    return out


def read_basket_csv(path: Path) -> list[list[str]]:
    """Baskets of a one-basket-per-line CSV: items stripped, empty items skipped.

    Lines with no item are skipped; an item repeated on a line counts once (a basket is
    a set). CSV quoting is honoured, so an item may contain a quoted comma.
    """
    return [items for _, items in _basket_lines(path)]


def basket_csv_transactions(
    path: Path, start: date | datetime, interval: timedelta = timedelta(0), spread: timedelta | None = None,
) -> pl.LazyFrame:
    """A basket CSV as canonical transactions: one line per (basket, distinct item).

    order_id is the basket's 1-based line number in the file (plain text, "1", "2", ...),
    product_id the item text, quantity 1, unit_price/customer_id/store_id null. Baskets
    have no time: basket k (0-based, in file order) is given ``start + k * interval``,
    so by default all sit at midnight of ``start``; pass e.g. ``interval=timedelta(minutes=1)``
    to spread them out, or ``spread`` (the interval is then spread / number of baskets) to lay
    them evenly over that span. Deterministic: same file and arguments, same frame.
    """
    t0 = start if isinstance(start, datetime) else datetime.combine(start, time())
    rows: dict[str, list] = {ORDER_ID: [], PRODUCT_ID: [], ORDERED_AT: []}
    baskets = list(_basket_lines(path))
    if spread is not None:
        interval = spread / max(len(baskets), 1)
    for k, (line, items) in enumerate(baskets):
        at = t0 + k * interval
        for item in items:
            rows[ORDER_ID].append(str(line))
            rows[PRODUCT_ID].append(item)
            rows[ORDERED_AT].append(at)
    log.info("%s: %d baskets, %d lines", path, len(set(rows[ORDER_ID])), len(rows[ORDER_ID]))
    n = len(rows[ORDER_ID])
    frame = pl.DataFrame(
        {**rows, QUANTITY: [1] * n},
        schema={ORDER_ID: pl.String, PRODUCT_ID: pl.String, ORDERED_AT: pl.Datetime("us"), QUANTITY: pl.Int64},
    )
    absent = [pl.lit(None, dtype=t).alias(c) for c, t in TRANSACTIONS.polars_schema.items() if c not in frame.columns]
    return frame.lazy().with_columns(absent).select(TRANSACTIONS.schema.names)


def basket_csv_catalog(
    transactions: pl.LazyFrame, item_info: Path | None = None, category_level: str = "level2"
) -> pl.DataFrame:
    """Catalog for basket-CSV items: product_id = title = item.

    ``item_info`` is an optional CSV with a ``labels`` column and category columns (the
    arules Groceries ``itemInfo``: labels, level2, level1). category comes from
    ``category_level``, by default level2 (55 fine categories such as "sausage", rather
    than level1's 10 departments such as "meat and sausage"), since finer categories
    separate products better. Items absent from item_info get a null category.
    """
    products = transactions.select(pl.col(PRODUCT_ID)).unique().with_columns(pl.col(PRODUCT_ID).alias(TITLE))
    if item_info is not None:
        info = pl.scan_csv(item_info, infer_schema=False)
        columns = info.collect_schema().names()
        missing = [c for c in ("labels", category_level) if c not in columns]
        if missing:
            raise ValueError(f"{item_info}: missing column(s) {missing}; the file has {columns}")
        info = info.select(
            pl.col("labels").str.strip_chars().alias(PRODUCT_ID),
            pl.col(category_level).str.strip_chars().alias(CATEGORY),
        ).collect()
        dup = info.filter(pl.col(PRODUCT_ID).is_duplicated())
        if dup.height:
            raise ValueError(f"{item_info}: label(s) listed more than once, e.g. {dup[PRODUCT_ID][0]!r}")
        products = products.join(info.lazy(), on=PRODUCT_ID, how="left")
    return _catalog_frame(products.collect())


# --- canonical files -------------------------------------------------------------------------


def canonical_transactions(
    paths: Sequence[Path] | Path, mapping: MappingLike = None, *, datetime_format: str | None = None
) -> pl.LazyFrame:
    """Transactions file(s) (Parquet, or CSV read as text) cast to the canonical schema.

    ``mapping`` (a ColumnMapping, ``{canonical: source}`` or ``"canon=source,..."``) names
    source columns; unnamed canonical columns are read from same-named columns; unit_price,
    customer_id and store_id may be absent. Text is stripped and empty text is missing. Text
    timestamps are parsed with ``datetime_format`` (default: inferred from the first value);
    time-zone-aware timestamps keep their wall-clock time (``_to_naive_us``). A value that cannot be cast, or a missing value in
    a required column, raises ValueError naming the file, column, count and an example.
    Files are concatenated in the order given; overlaps are not resolved.
    """
    mapping = _as_mapping(mapping, TRANSACTIONS)
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    if not paths:
        raise ValueError("canonical_transactions: no input files")
    frames = [_conform(_scan_table(p), mapping, str(p), datetime_format=datetime_format) for p in paths]
    return pl.concat(frames, how="vertical")


def canonical_catalog(path: Path, mapping: MappingLike = None) -> pl.DataFrame:
    """A catalog file (Parquet or CSV) cast to the canonical catalog, sorted by product_id.

    Same mapping and casting rules as ``canonical_transactions``; a product_id listed
    twice raises ValueError.
    """
    mapping = _as_mapping(mapping, CATALOG)
    return _catalog_frame(_conform(_scan_table(path), mapping, str(path)).collect(), where=str(path))


# --- landing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportSummary:
    """What ``write_landing`` wrote."""

    rows: int
    partitions: int
    products: int
    paths: tuple[Path, ...]  # transaction partition files, in date order
    catalog_path: Path
    first_date: date
    last_date: date
    partition_rows: dict[str, int] = field(default_factory=dict, compare=False)  # dt -> rows


def write_landing(transactions: pl.LazyFrame, catalog: pl.DataFrame, landing_dir: Path) -> ImportSummary:
    """Write transactions (one file per order date) and a catalog snapshot into the landing layout.

    Rows are sorted by (ordered_at, order_id, product_id), ties kept in their incoming
    order (a stable sort), then written to ``transactions/dt=YYYY-MM-DD/part-0.parquet``;
    the catalog goes to ``catalog/catalog-<last transaction date>.parquet``. Every file is
    written to a temporary name in its directory and moved into place with
    ``os.replace``; a rerun replaces the partitions it writes (other Parquet files in
    those partition directories are removed) and leaves other partitions alone.
    """
    landing_dir = Path(landing_dir)
    frame = (
        transactions.select(TRANSACTIONS.schema.names)
        .cast(dict(TRANSACTIONS.polars_schema))
        .sort([ORDERED_AT, ORDER_ID, PRODUCT_ID], maintain_order=True, nulls_last=True)
        .collect()
    )
    if frame.height == 0:
        raise ValueError("write_landing: no transaction rows to write")
    nulls = {c: n for c, n in frame.select(TRANSACTIONS.non_nullable).null_count().row(0, named=True).items() if n}
    if nulls:
        raise ValueError(f"write_landing: missing values in required transaction column(s) {nulls}")
    catalog = _catalog_frame(catalog)

    day = "__dt"
    parts = frame.with_columns(pl.col(ORDERED_AT).dt.date().alias(day)).partition_by(
        day, maintain_order=True, as_dict=True
    )
    paths, partition_rows = [], {}
    for (d,), part in sorted(parts.items(), key=lambda kv: kv[0]):
        directory = landing_dir / "transactions" / f"dt={d.isoformat()}"
        target = directory / "part-0.parquet"
        _atomic_write(TRANSACTIONS.conform(part.drop(day).to_arrow()), target)
        for stale in directory.glob("*.parquet"):
            if stale != target:
                stale.unlink()
        paths.append(target)
        partition_rows[d.isoformat()] = part.height
    first_date, last_date = min(k[0] for k in parts), max(k[0] for k in parts)
    catalog_path = landing_dir / "catalog" / f"catalog-{last_date.isoformat()}.parquet"
    _atomic_write(CATALOG.conform(catalog.to_arrow()), catalog_path)
    summary = ImportSummary(
        rows=frame.height, partitions=len(paths), products=catalog.height, paths=tuple(paths),
        catalog_path=catalog_path, first_date=first_date, last_date=last_date, partition_rows=partition_rows,
    )
    log.info(
        "landed %d rows in %d partitions (%s..%s) and %d products under %s",
        summary.rows, summary.partitions, first_date, last_date, summary.products, landing_dir,
    )
    return summary


def import_source(
    kind: SourceKind | str,
    inputs: Sequence[Path],
    landing_dir: Path,
    *,
    catalog: Path | None = None,
    mapping: MappingLike = None,
    catalog_mapping: MappingLike = None,
    item_info: Path | None = None,
    start: date | None = None,
    interval: timedelta = timedelta(0),
    spread: timedelta | None = None,
    datetime_format: str | None = None,
) -> ImportSummary:
    """Import a source into the landing layout; the CLI's ``import`` command.

    kind (``-`` or ``_`` both accepted):
      * ``online_retail``: inputs = Online Retail Parquet file(s); catalog derived from
        the descriptions.
      * ``basket_csv``: inputs = one basket CSV; ``start`` (required) and ``interval`` or
        ``spread`` time the baskets; ``item_info`` optionally gives categories.
      * ``canonical``: inputs = transactions file(s) with optional ``mapping``;
        ``catalog`` file with optional ``catalog_mapping``; without a catalog file,
        every product is titled by its id.
    Options that do not apply to ``kind`` raise ValueError (except ``start``, ignored).
    """
    kind = kind.replace("-", "_")
    inputs = [Path(p) for p in inputs]
    given = {"catalog": catalog, "mapping": mapping, "catalog_mapping": catalog_mapping, "item_info": item_info}
    allowed = {
        "online_retail": set(), "basket_csv": {"item_info"}, "canonical": {"catalog", "mapping", "catalog_mapping"},
    }
    if kind not in allowed:
        raise ValueError(f"unknown source kind {kind!r}; expected one of {sorted(allowed)}")
    extra = sorted(k for k, v in given.items() if v is not None and k not in allowed[kind])
    if extra:
        raise ValueError(f"{kind} import does not take {extra}")
    if not inputs:
        raise ValueError(f"{kind} import: no input files")

    if kind == "online_retail":
        lines = online_retail_lines(inputs).collect().lazy()  # read the files once for both outputs
        return write_landing(lines.select(TRANSACTIONS.schema.names), derive_catalog(lines), landing_dir)
    if kind == "basket_csv":
        if len(inputs) != 1:
            raise ValueError(f"basket_csv import takes one file, got {len(inputs)}")
        if start is None:
            raise ValueError("basket_csv import needs a start date for the baskets")
        tx = basket_csv_transactions(inputs[0], start, interval, spread).collect().lazy()  # parse once
        return write_landing(tx, basket_csv_catalog(tx, item_info), landing_dir)
    tx = canonical_transactions(inputs, mapping, datetime_format=datetime_format)
    cat = canonical_catalog(catalog, catalog_mapping) if catalog is not None else derive_catalog(tx, None)
    return write_landing(tx, cat, landing_dir)


# --- helpers ---------------------------------------------------------------------------------


def _empty(contract: TableContract) -> pl.LazyFrame:
    return pl.DataFrame(schema=contract.polars_schema).lazy()


def _catalog_frame(frame: pl.DataFrame, where: str = "catalog") -> pl.DataFrame:
    """Contract columns (absent optional ones null), typed, unique product_id, sorted by it."""
    schema = CATALOG.polars_schema
    missing = [c for c in CATALOG.required if c not in frame.columns]
    if missing:
        raise ValueError(f"{where}: missing catalog column(s) {missing}")
    frame = frame.select(
        pl.col(c).cast(t) if c in frame.columns else pl.lit(None, dtype=t).alias(c) for c, t in schema.items()
    ).sort(PRODUCT_ID)
    dup = frame.filter(pl.col(PRODUCT_ID).is_duplicated())
    if dup.height:
        raise ValueError(
            f"{where}: {dup[PRODUCT_ID].n_unique():,} product_id(s) listed more than once, e.g. {dup[PRODUCT_ID][0]!r}"
        )
    nulls = {c: n for c, n in frame.select(CATALOG.non_nullable).null_count().row(0, named=True).items() if n}
    if nulls:
        raise ValueError(f"{where}: missing values in required catalog column(s) {nulls}")
    return frame


def _atomic_write(table: pa.Table, target: Path) -> None:
    """Write Parquet next to ``target`` under a temporary name, then move it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
