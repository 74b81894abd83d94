"""Canonical data contracts: every table's schema, declared once.

Each table has a pyarrow schema (what is written to and read from Parquet) and
the matching polars schema. Column names are module constants so that other
modules never spell them as free strings.

Landing layout (what a retailer drops):
    <landing>/transactions/dt=YYYY-MM-DD/*.parquet   Hive partitions by order date
    <landing>/catalog/*.parquet                      snapshots; the file whose name
                                                     sorts last is the current one
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import pyarrow as pa

# --- column names -----------------------------------------------------------
ORDER_ID = "order_id"
PRODUCT_ID = "product_id"
QUANTITY = "quantity"
UNIT_PRICE = "unit_price"
CUSTOMER_ID = "customer_id"
ORDERED_AT = "ordered_at"
STORE_ID = "store_id"

TITLE = "title"
DESCRIPTION = "description"
CATEGORY = "category"
BRAND = "brand"

ASSOCIATED_PRODUCT_ID = "associated_product_id"

# Lineage columns added at ingestion; they travel with accepted and quarantined rows.
SOURCE_FILE = "_source_file"
SOURCE_ROW = "_source_row"
PARTITION = "_partition"
REASON = "_reason"

TIMESTAMP = pa.timestamp("us")


@dataclass(frozen=True)
class TableContract:
    """A named table: its Arrow schema, which columns may be null, and which are optional."""

    name: str
    schema: pa.Schema
    optional: frozenset[str] = frozenset()

    @property
    def required(self) -> list[str]:
        return [f.name for f in self.schema if f.name not in self.optional]

    @property
    def non_nullable(self) -> list[str]:
        return [f.name for f in self.schema if not f.nullable]

    @property
    def polars_schema(self) -> pl.Schema:
        return pl.Schema(pl.from_arrow(self.empty_table()).schema)

    def empty_table(self) -> pa.Table:
        """A table of the contract's schema with no rows.

        Built from no record batches: ``pa.Schema.empty_table()`` imports pandas (~0.25 s of CPU).
        """
        return pa.Table.from_batches([], schema=self.schema)

    def conform(self, table: pa.Table) -> pa.Table:
        """Select and order the contract's columns (adding absent optional ones as nulls) and cast.

        Raises ValueError naming the table and the missing columns.
        """
        self._check_required(table.column_names)
        columns = []
        for field in self.schema:
            if field.name in table.column_names:
                columns.append(table.column(field.name).cast(field.type))
            else:
                columns.append(pa.nulls(table.num_rows, field.type))
        return pa.Table.from_arrays(columns, schema=self.schema)

    def conform_frame(self, frame: pl.DataFrame) -> pl.DataFrame:
        """``conform`` in polars: a column that has its type already is not copied (``conform`` of
        a polars frame's Arrow copies every string column), so frames can be aligned, appended
        and sorted before the one ``conform`` that writing needs."""
        self._check_required(frame.columns)
        return frame.select([pl.col(name).cast(dtype) if name in frame.columns else pl.lit(None, dtype).alias(name)
                             for name, dtype in self.polars_schema.items()])

    def _check_required(self, columns: list[str]) -> None:
        missing = [c for c in self.required if c not in columns]
        if missing:
            raise ValueError(f"{self.name}: missing required column(s) {missing}")


def in_rank_order(table: pl.DataFrame) -> bool:
    """Whether the rows are sorted by product, then strictly increasing rank (the published order
    of product_associations): a sort of a table already in order is a copy of it for nothing."""
    product, rank = pl.col(PRODUCT_ID), pl.col("rank")
    after = (product > product.shift()) | ((product == product.shift()) & (rank > rank.shift()))
    return table.is_empty() or table.select(after.fill_null(True).all()).item()


def _field(name: str, type_: pa.DataType, nullable: bool = True) -> pa.Field:
    return pa.field(name, type_, nullable=nullable)


TRANSACTIONS = TableContract(
    name="transactions",
    schema=pa.schema(
        [
            _field(ORDER_ID, pa.string(), nullable=False),
            _field(PRODUCT_ID, pa.string(), nullable=False),
            _field(QUANTITY, pa.int64(), nullable=False),
            _field(UNIT_PRICE, pa.float64()),
            _field(CUSTOMER_ID, pa.string()),
            _field(ORDERED_AT, TIMESTAMP, nullable=False),
            _field(STORE_ID, pa.string()),
        ]
    ),
    # a price and a customer are not needed for baskets (a missing price passes the price rule):
    # a file without those columns lands with them missing
    optional=frozenset({UNIT_PRICE, CUSTOMER_ID, STORE_ID}),
)

CATALOG = TableContract(
    name="catalog",
    schema=pa.schema(
        [
            _field(PRODUCT_ID, pa.string(), nullable=False),
            _field(TITLE, pa.string(), nullable=False),
            _field(DESCRIPTION, pa.string()),
            _field(CATEGORY, pa.string()),
            _field(BRAND, pa.string()),
        ]
    ),
    optional=frozenset({DESCRIPTION, CATEGORY, BRAND}),
)

# --- source types: how landed (and imported) columns convert to the contract ------------------
#
# contract type    source types converted (value by value; a value that does not convert fails type:<c>)
# string           string, categorical/enum, binary (UTF-8 only), integer, float and decimal (whole
#                  values only: 17850.0 -> "17850")
# int64            integer, float and decimal (whole values only: 2.5 is never truncated), string
#                  (an integer, or a whole number such as "3.0")
# float64          integer, float, decimal, string (a number)
# timestamp        timestamp (any unit, with or without a time zone), date (midnight), string (ISO
#                  8601: YYYY-MM-DD[ T]HH:MM[:SS[.f]] or YYYY-MM-DD, optionally followed by Z or an
#                  offset such as +01:00)
#
# Any other source type (boolean, nested list/struct/array, time, duration, ...) cannot carry the
# column's meaning: the whole file is quarantined with unsupported_type:<column>(<type>) and
# marked failed; the run's other files are ingested as usual.
#
# Time zones, one rule for landing and `import canonical`: ordered_at is the local time of the
# order as the source wrote it. A timestamp with a zone keeps its wall-clock time in that zone
# and drops the zone; text with an offset (or Z) keeps the time as written and drops the offset.
# Nothing is converted to UTC: partitions are local order dates, and so is ordered_at's date.


# A zone suffix after a time of day in text (Z, +01, +0100, +01:00); replacing a match with ${1}
# keeps the time as written (polars regex; "2024-01-01" has no time of day and is left alone).
TIME_ZONE_SUFFIX = r"^(.*\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)\s*(?:Z|[+-]\d{2}(?::?\d{2})?)$"


def source_type_problem(source: pl.DataType, target: pl.DataType) -> str | None:
    """None when a column of type ``source`` converts to contract type ``target`` (rules above);
    otherwise why not, naming both types."""
    if source == target or source == pl.Null:
        return None
    text = source in (pl.String, pl.Binary) or isinstance(source, (pl.Categorical, pl.Enum))
    number = source.is_integer() or source.is_float() or isinstance(source, pl.Decimal)
    if target == pl.String:
        ok = text or number
    elif target.is_integer() or target.is_float():
        ok = (text and source != pl.Binary) or number
    elif isinstance(target, pl.Datetime):
        ok = (text and source != pl.Binary) or isinstance(source, (pl.Datetime, pl.Date))
    else:
        ok = False
    return None if ok else f"{source} cannot be converted to {target}"


# --- ingestion bookkeeping -----------------------------------------------------
LINEAGE_FIELDS = [
    _field(SOURCE_FILE, pa.string(), nullable=False),
    _field(SOURCE_ROW, pa.int64(), nullable=False),
    _field(PARTITION, pa.string(), nullable=False),
]



def quarantine_schema(contract: TableContract) -> pa.Schema:
    """What a quarantined row of ``contract`` has at least: its columns as landed (a column whose
    type did not convert is kept as text), the lineage and the reason (``_reason``)."""
    return pa.schema([*contract.schema, *LINEAGE_FIELDS, _field(REASON, pa.string(), nullable=False)])


MANIFEST = TableContract(
    name="manifest",
    schema=pa.schema(
        [
            _field("table", pa.string(), nullable=False),
            _field("file", pa.string(), nullable=False),
            _field("partition", pa.string(), nullable=False),
            _field("sha256", pa.string(), nullable=False),
            _field("rows_read", pa.int64(), nullable=False),
            _field("rows_accepted", pa.int64(), nullable=False),
            _field("rows_quarantined", pa.int64(), nullable=False),
            _field("status", pa.string(), nullable=False),
            _field("detail", pa.string()),
            _field("run_as_of", pa.date32(), nullable=False),
        ]
    ),
)

# --- published tables --------------------------------------------------------
_RULE_METRICS = [
    _field("n_transactions", pa.int64(), nullable=False),
    _field("n_antecedent", pa.int64(), nullable=False),
    _field("n_consequent", pa.int64(), nullable=False),
    _field("n_rule", pa.int64(), nullable=False),
    _field("support", pa.float64(), nullable=False),
    _field("confidence", pa.float64(), nullable=False),
    _field("lift", pa.float64(), nullable=False),
    _field("leverage", pa.float64(), nullable=False),
    _field("conviction", pa.float64()),  # null where confidence == 1 (infinite)
    _field("zhangs_metric", pa.float64()),  # null where undefined (0/0)
    _field("jaccard", pa.float64(), nullable=False),
]

ASSOCIATION_RULES = TableContract(
    name="association_rules",
    schema=pa.schema(
        [
            _field("rule_id", pa.string(), nullable=False),
            _field("antecedent", pa.list_(pa.string()), nullable=False),
            _field("consequent", pa.string(), nullable=False),
            _field("length", pa.int32(), nullable=False),
            *_RULE_METRICS,
        ]
    ),
)

# Pair counts are always there (0 where the pair or product was never bought in the window);
# ratios are null where undefined (a cold-start product, never sold: n_antecedent = 0).
# The hybrid method adds is_cold_start, its component scores and an explanation per row.
_HYBRID_COLUMNS = ("is_cold_start", "cooc_score", "text_score", "gnn_score", "explanation")
# Provenance of each row (prodassoc_core/models/serving.py): ``source`` classic or hybrid; the registered
# student and GNN versions behind a hybrid row and the date their training data ends before.
_PROVENANCE_COLUMNS = ("source", "student_model", "gnn_model", "model_as_of")
PRODUCT_ASSOCIATIONS = TableContract(
    name="product_associations",
    schema=pa.schema(
        [
            _field(PRODUCT_ID, pa.string(), nullable=False),
            _field(ASSOCIATED_PRODUCT_ID, pa.string(), nullable=False),
            _field("rank", pa.int32(), nullable=False),
            _field("score", pa.float64(), nullable=False),
            _field("method", pa.string(), nullable=False),
            *[f if f.name.startswith("n_") else f.with_nullable(True) for f in _RULE_METRICS],
            _field("is_cold_start", pa.bool_()),
            _field("cooc_score", pa.float64()),
            _field("text_score", pa.float64()),
            _field("gnn_score", pa.float64()),
            _field("explanation", pa.string()),
            _field("source", pa.string()),
            _field("student_model", pa.string()),
            _field("gnn_model", pa.string()),
            _field("model_as_of", pa.date32()),
        ]
    ),
    optional=frozenset(_HYBRID_COLUMNS + _PROVENANCE_COLUMNS),
)

# Promotion bundles: small groups of mutually associated products (prodassoc_core/models/hybrid.py).
BUNDLES = TableContract(
    name="bundles",
    schema=pa.schema(
        [
            _field("bundle_id", pa.string(), nullable=False),  # sha256 of the sorted product ids (16 hex)
            _field("bundle_rank", pa.int32(), nullable=False),
            _field("products", pa.list_(pa.string()), nullable=False),
            _field("titles", pa.list_(pa.string()), nullable=False),
            _field("size", pa.int32(), nullable=False),
            _field("n_baskets", pa.int64(), nullable=False),
            _field("support", pa.float64(), nullable=False),
            _field("lift", pa.float64(), nullable=False),
            _field("expected_baskets", pa.float64()),  # orders expected if the products sold independently
            _field("extra_baskets", pa.float64()),  # n_baskets - expected_baskets: the ranking measure
            _field("min_item_baskets", pa.int64()),  # orders of the bundle's least-sold product
            _field("attach_rate", pa.float64()),  # n_baskets / min_item_baskets
            _field("explanation", pa.string()),  # one line from the figures above
        ]
    ),
    optional=frozenset({"expected_baskets", "extra_baskets", "min_item_baskets", "attach_rate", "explanation"}),
)

# One unit vector per catalog product (sold or not) from the champion student encoder;
# cosine similarity = dot product. model_uri names the registered model version used.
PRODUCT_EMBEDDINGS = TableContract(
    name="product_embeddings",
    schema=pa.schema(
        [
            _field(PRODUCT_ID, pa.string(), nullable=False),
            _field("embedding", pa.list_(pa.float32()), nullable=False),
            _field("dim", pa.int32(), nullable=False),
            _field("model_uri", pa.string(), nullable=False),
        ]
    ),
)

PUBLISHED_TABLES = {t.name: t for t in (ASSOCIATION_RULES, PRODUCT_ASSOCIATIONS)}

# Published only while a student holds the champion alias; a run date counts as published
# (pipeline.is_published, backfills) when every table of PUBLISHED_TABLES is there.
OPTIONAL_TABLES = {t.name: t for t in (PRODUCT_EMBEDDINGS, BUNDLES)}
ALL_TABLES = PUBLISHED_TABLES | OPTIONAL_TABLES  # what publish accepts and the views cover
