"""Data-quality rules for landed tables, run with Great Expectations 1.x through pandas.

Why pandas: GE 1.x has no polars datasource (handing it a polars frame raises), and its
SQL route (DuckDB through SQLAlchemy / duckdb-engine) is broken as shipped: the
connection is closed before results are fetched. The pandas datasource works, takes
about a second per 100k rows, and with ``result_format="COMPLETE"`` returns every failing
expectation's ``unexpected_index_list``, which maps straight back to rows. So frames stay
in polars and are converted with ``to_pandas()`` only at the GE boundary.

How a table is checked:

1. ``conform`` casts landed columns to the contract type with polars (``strict=False``).
   A non-null value that does not survive the cast fails rule ``type:<column>`` (its
   ``not_null:<column>`` is then not reported twice). Blank strings in non-string
   columns and float NaN count as null; a float must be integral to become an int
   or an id string (``17850.0`` -> ``"17850"``); timestamp strings must be ISO
   (``YYYY-MM-DD[ T]HH:MM[:SS[.f]]`` or ``YYYY-MM-DD``); tz-aware timestamps keep
   their wall-clock time (partitions are local order dates).
2. Many files/partitions are validated in ONE checkpoint run (chunked above
   ``chunk_rows``): a GE run has a fixed cost of ~0.1-0.3 s plus the Data Docs rebuild,
   which would dominate ~600 per-partition runs. Lineage columns
   (``_source_file``, ``_source_row``, ``_partition``) say where each row came from.
3. Each failed expectation's row indices become rule names; ``_reason`` lists every
   rule a row failed, in suite order, joined by ``"; "``.

Rules (the names that appear in ``_reason``)::

    transactions
    missing_column:<c>  (whole file; see ingest)
    type:<c>
    not_null:{order_id,product_id,ordered_at,quantity}
    not_empty:{order_id,product_id}  (has a non-blank character)
    nonzero:quantity
    range:quantity      (|quantity| <= cfg.max_quantity)
    range:unit_price    (0 <= price <= cfg.max_unit_price; null price passes)
    in_partition:ordered_at  (order date == partition date)
    not_future:ordered_at    (ordered_at < midnight of as_of)
    in_catalog:product_id    (id of an accepted catalog row)
    max_length:{order_id,product_id,customer_id,store_id}  (<= cfg.max_text_length characters)

    catalog
    missing_column:<c>, type:<c>
    not_null:{product_id,title}
    not_empty:{product_id,title}
    printable:title     (no control characters)
    unique:product_id
    max_length:{product_id,title,description,category,brand}

Column-value expectations skip nulls, so a null key reports only ``not_null``; an empty
string fails ``not_empty`` and ``in_catalog``. ``unique:product_id`` flags every row of
a duplicated id: with two different rows for one id it is ambiguous which one is right,
so none is accepted, and transactions of that id then fail ``in_catalog``.

``not_future:ordered_at`` is checked only when ``as_of`` is given (ingestion always gives
it). Partitions dated on or after ``as_of`` are deferred whole, so a future timestamp
only occurs inside an earlier partition, where it also fails ``in_partition``: both rules
are reported. ``printable:title`` rejects C0/C1 control characters and DEL (a tab or a
newline in a title breaks CSV exports and reports): such rows are quarantined, not
cleaned, so the retailer sees and fixes the source. Text longer than
``cfg.max_text_length`` fails ``max_length:<c>``. Text arrives as Parquet strings, which
are UTF-8 by specification: a file whose string column holds invalid UTF-8 cannot be
read and is rejected whole as unreadable; a binary column where the contract has a
string is decoded value by value, and a value that is not UTF-8 fails ``type:<c>``.

The suites are defined here in code and written into the context on start-up; the limits
and the catalog ids are passed per run as expectation parameters, so the stored suites
do not change when the config or the catalog does.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, TypeVar

import polars as pl

from prodassoc_core.data import contracts as c
from prodassoc_core.data.contracts import TableContract
from prodassoc_core.data.warehouse import storage_errors, write_json
from prodassoc_core.ops import ValidationConfig

if TYPE_CHECKING:  # GE costs ~4 s to import: only when a context is built.
    import pandas as pd

logger = logging.getLogger("prodassoc.validation")

LINEAGE = [c.SOURCE_FILE, c.SOURCE_ROW, c.PARTITION]
DEFAULT_CHUNK_ROWS = 1_000_000

_DATASOURCE = "prodassoc"
_SPARK_DATASOURCE = "prodassoc_spark"  # engine: spark (data/spark_ingest.py)
_SPARK_SUFFIX = "_spark"
SOURCE_KEY_FILE, SOURCE_KEY_ROW = c.SOURCE_FILE, c.SOURCE_ROW  # how GE names a failing Spark row
_BATCH_DEFINITION = "whole_frame"
_ORDER_DATE = "_order_date"  # derived: ordered_at as YYYY-MM-DD, compared with _partition
_ORDERED_AT_US = "_ordered_at_us"  # derived: ordered_at as epoch microseconds, compared with as_of
# derived: product_id is an accepted catalog id (null where product_id is). Not GE's value_set of
# the catalog's ids: GE copies an expectation's arguments on each of the thousands of times it
# reads its configuration in a run: with a 50k-id set, validating 1,000 rows took 6.3 s, against
# 0.19 s this way (benchmarks/bench_validation_catalog.py)
_IN_CATALOG = "_in_catalog"
_NO_AS_OF_US = 2**62  # "no as_of": a bound no timestamp reaches
_CONTROL_CHARS = r"[\x00-\x1f\x7f-\x9f]"
_TRANSACTION_TEXT = (c.ORDER_ID, c.PRODUCT_ID, c.CUSTOMER_ID, c.STORE_ID)
_CATALOG_TEXT = (c.PRODUCT_ID, c.TITLE, c.DESCRIPTION, c.CATEGORY, c.BRAND)
_ROW = "__row"
_ISO_FORMATS = (
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d",
)


def quiet_pyspark_pandas_warning() -> None:
    """pyspark 4.3 warns on import that pandas >= 3 is "not fully supported"; prodassoc moves data
    between them through Arrow, and GE imports pyspark whenever it is installed, so every local
    run printed it: filtered for the process."""
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)


class ValidationError(RuntimeError):
    """GE could not evaluate an expectation (as opposed to data failing it)."""


@dataclass(frozen=True)
class ValidationOutcome:
    """Result of validating one batch of rows.

    accepted:     rows that passed every rule; contract columns (contract types) + lineage.
    quarantined:  rows that failed >= 1 rule; contract columns (values that failed their
                  cast are null here) + lineage + ``_reason`` ("rule; rule; ...").
    stats:        one row per (_partition, _source_file): rows_read, rows_accepted,
                  rows_quarantined; rows_read == rows_accepted + rows_quarantined.
    rule_counts:  failing rows per rule, most frequent first.
    ge_success:   GE's verdict over all chunks (False as soon as one row failed).
    """

    accepted: pl.DataFrame
    quarantined: pl.DataFrame
    stats: pl.DataFrame
    rule_counts: dict[str, int] = field(default_factory=dict)
    ge_success: bool = True

    @property
    def rows_read(self) -> int:
        return self.accepted.height + self.quarantined.height


# --- paths ----------------------------------------------------------------------------


def data_docs_index(gx_dir: Path) -> Path:
    """Where the file context under ``gx_dir`` keeps its Data Docs front page.

    ``get_context(mode="file", context_root_dir=gx_dir)`` makes ``gx_dir`` the context
    root (no extra ``gx/`` level, unlike ``project_root_dir``), and the default
    ``local_site`` writes to ``uncommitted/data_docs/local_site/`` below it.
    """
    return Path(gx_dir) / "uncommitted" / "data_docs" / "local_site" / "index.html"


def stored_results(gx_dir: Path) -> bool:
    """Whether the results store under ``gx_dir`` (the file context's ``uncommitted/validations``)
    holds a validation result."""
    root = Path(gx_dir) / "uncommitted" / "validations"
    return root.is_dir() and next(root.rglob("*.json"), None) is not None


def _unrendered(site: Path, identifiers: Iterable[Any]) -> list[Any]:
    """The validation results among ``identifiers`` without a page in the Data Docs ``site`` (a
    result's page mirrors its path in the results store: suite/run name/run time/batch)."""
    from great_expectations.data_context.types.resource_identifiers import ValidationResultIdentifier

    def page(key: tuple[str, ...]) -> Path:
        return Path(site, "validations", *key[:-1], f"{key[-1]}.html")

    return [i for i in dict.fromkeys(identifiers)
            if isinstance(i, ValidationResultIdentifier) and not page(i.to_fixed_length_tuple()).exists()]


def skipped_docs_path(gx_dir: Path) -> Path:
    """The validation results stored while ``validation.data_docs`` was off, and not yet rendered
    (``GxSuites.skip_docs``): the first build after the Data Docs are turned back on renders them."""
    return Path(gx_dir) / "uncommitted" / "skipped_data_docs.json"


# --- Data Docs readable offline ---------------------------------------------------------------
#
# GE's pages load bootstrap, jQuery, bootstrap-table and Font Awesome from CDNs, and the index
# page builds its lists of validations and suites in JavaScript from data embedded in the page:
# on a machine without internet it shows two buttons and no list. After every build the site is
# post-processed (``make_data_docs_offline``): CDN tags are dropped, a local stylesheet replaces
# them, the index's lists become plain HTML tables with links (readable with JavaScript off),
# and the derived columns the suites need internally get readable labels.

OFFLINE_MARK = "<!-- prodassoc: offline -->"
OFFLINE_CSS = "static/styles/prodassoc_offline.css"
# derived columns (see validate_transactions) -> what a reader of the Data Docs sees
INTERNAL_COLUMN_LABELS = {
    _ORDERED_AT_US: "ordered_at (before the run date)",
    _IN_CATALOG: "product_id in the accepted catalog",
    _ORDER_DATE: "order date of ordered_at",
    c.PARTITION: "partition date (dt=)",
}
_CSS = """/* prodassoc: local styles for Data Docs read offline (no CDN) */
body { font-family: system-ui, sans-serif; margin: 0 1.5em 2em; color: #222; }
table { border-collapse: collapse; margin: .5em 0 1.5em; }
td, th { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
.alert { background: #eef1f4; padding: .4em .8em; margin: 1em 0 .4em; }
.badge { background: #e6e6e6; border-radius: 3px; padding: 0 4px; font-family: monospace; }
.cooltip .top, .hide, .d-none, .modal, .btn, .ge-index-page-table-validation-links-item i { display: none; }
.tab-pane { display: block !important; opacity: 1 !important; }
.nav, .nav-tabs { list-style: none; padding: 0; }
.nav-item { display: inline-block; margin-right: 1em; }
.pd-status-success { color: #137333; font-weight: bold; }
.pd-status-failed { color: #b3261e; font-weight: bold; }
img { max-height: 50px; }
/* Font Awesome's status icons, as words */
.fa-check-circle::before, .fa-check::before { content: "passed"; color: #137333; font-style: normal; font-weight: bold; }
.fa-times::before, .fa-times-circle::before, .fa-exclamation-triangle::before {
  content: "failed"; color: #b3261e; font-style: normal; font-weight: bold; }
"""
_CDN_TAG = re.compile(
    r"<link\b[^>]*href=[\"']https?://[^>]*>|<script\b[^>]*src=[\"']https?://[^>]*>\s*</script>", re.IGNORECASE
)
_REMOTE_LOGO = re.compile(r"src=\"https://great-expectations-web-assets[^\"]*/(logo-long\.png)[^\"]*\"")
_TABLE_SCRIPT = re.compile(
    r"<script>\s*\$\('#(?P<id>[\w-]+)'\)\.bootstrapTable\(\s*Object\.assign\(\s*\{\s*columns:\s*(?P<columns>\[.*?\]),"
    r"\s*data:\s*(?P<data>\[.*?\]),\s*toolbar:.*?</script>",
    re.DOTALL,
)
_SECTION = re.compile(r'<div id="section-\d+"')
_PARAMETER = re.compile(r"\{'\$PARAMETER': '(\w+)'\}")
# expectation parameters (set per run, shown on the suite pages) -> what they are
PARAMETER_LABELS = {
    "as_of_us": "midnight of the run date (as_of)",
    "min_quantity": "-validation.max_quantity",
    "max_quantity": "validation.max_quantity",
    "max_unit_price": "validation.max_unit_price",
    "max_text_length": "validation.max_text_length",
}
_EPOCH_US = re.compile(r"(?<![\d.])(\d{15,17})(?:\.0)?(?![\d.])")


def make_data_docs_offline(site_dir: Path) -> int:
    """Post-process a built Data Docs site so that it reads without internet; returns pages changed.

    Pages already processed (they carry OFFLINE_MARK) are skipped, so the cost of a build is the
    pages GE just wrote. Raises nothing for a page GE laid out differently: its CDN tags still go,
    and an index whose lists cannot be parsed is logged and left with its script."""
    site_dir = Path(site_dir)
    if not site_dir.is_dir():
        return 0
    css = site_dir / OFFLINE_CSS
    if not css.exists() or css.read_text() != _CSS:
        css.parent.mkdir(parents=True, exist_ok=True)
        css.write_text(_CSS)
    changed = 0
    for page in sorted(site_dir.rglob("*.html")):
        with open(page, "rb") as f:  # the mark sits right after <head>: read no further for done pages
            if OFFLINE_MARK.encode() in f.read(4096):
                continue
        text = page.read_text(encoding="utf-8")
        prefix = "../" * (len(page.relative_to(site_dir).parts) - 1)
        page.write_text(_offline_page(text, prefix, page), encoding="utf-8")
        changed += 1
    return changed


def _offline_page(text: str, prefix: str, page: Path) -> str:
    text = _CDN_TAG.sub("", text)
    text = _REMOTE_LOGO.sub(lambda m: f'src="{prefix}static/images/{m.group(1)}"', text)
    text = text.replace("<head>", f'<head>\n{OFFLINE_MARK}\n<link rel="stylesheet" href="{prefix}{OFFLINE_CSS}"/>', 1)
    text = _TABLE_SCRIPT.sub(lambda m: _static_table(m, page), text)
    return _relabel_internal_columns(text)


def _static_table(match: re.Match, page: Path) -> str:
    """The index's bootstrap-table script -> the same list as a static table, where the script was."""
    import ast
    import html as html_lib

    try:
        columns = ast.literal_eval(match.group("columns"))
        rows = ast.literal_eval(match.group("data"))
    except (ValueError, SyntaxError) as exc:
        logger.warning("Data Docs %s: could not render the list of %s offline (%s)", page, match.group("id"), exc)
        return match.group(0)
    if rows and "_run_time_sort" in rows[0]:
        rows = sorted(rows, key=lambda r: r.get("_run_time_sort") or 0, reverse=True)
    head = "".join(f"<th>{html_lib.escape(str(col.get('title', col['field'])))}</th>" for col in columns)
    body = []
    for row in rows:
        link = row.get("_table_row_link_path")
        cells = []
        for k, col in enumerate(columns):
            field = col["field"]
            if field == "validation_success" and "_validation_success_text" in row:
                status = str(row["_validation_success_text"])
                cell = f'<span class="pd-status-{status.lower()}">{html_lib.escape(status)}</span>'
            else:
                cell = str(row.get(field, ""))  # GE's own rendered HTML, as its script would insert it
            if k == 0 and link:
                cell = f'<a class="pd-row-link" href="{html_lib.escape(link, quote=True)}">{cell}</a>'
            cells.append(f"<td>{cell}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    table_id = html_lib.escape(match.group("id"), quote=True)
    return (f'<table class="pd-offline-table" data-for="{table_id}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def _relabel_internal_columns(text: str) -> str:
    """Readable labels for the derived columns, and epoch microseconds shown as timestamps."""
    header = re.search(rf"<h5[^>]*>\s*{_ORDERED_AT_US}\s*</h5>", text)
    if header:  # the section of the not_future rule: its bound and values are epoch microseconds
        following = _SECTION.search(text, header.end())
        end = following.start() if following else len(text)
        section = _EPOCH_US.sub(lambda m: _us_to_text(int(m.group(1))), text[header.end():end])
        text = text[: header.end()] + section + text[end:]
    text = _PARAMETER.sub(lambda m: PARAMETER_LABELS.get(m.group(1), f"{m.group(1)} (set per run)"), text)
    for name, label in INTERNAL_COLUMN_LABELS.items():
        text = re.sub(rf">(\s*){re.escape(name)}(\s*)<", rf">\g<1>{label}\g<2><", text)
    return text


def _us_to_text(us: int) -> str:
    return (datetime(1970, 1, 1) + timedelta(microseconds=us)).strftime("%Y-%m-%d %H:%M:%S")


# --- casting to the contract ------------------------------------------------------------


def missing_columns(columns: Iterable[str], contract: TableContract) -> list[str]:
    """Required contract columns absent from ``columns``, in contract order."""
    present = set(columns)
    return [name for name in contract.required if name not in present]


def unsupported_types(schema: pl.Schema, contract: TableContract) -> list[tuple[str, str]]:
    """(rule, why) for each contract column whose landed type the contract does not convert
    (``contracts.source_type_problem``): the rule is ``unsupported_type:<column>(<type>)``."""
    target = contract.polars_schema
    out = []
    for name, dtype in schema.items():
        if name in target and (why := c.source_type_problem(dtype, target[name])) is not None:
            out.append((f"unsupported_type:{name}({dtype})", f"column {name}: {why}"))
    return out


def _is_stringish(dtype: pl.DataType) -> bool:
    return dtype == pl.String or isinstance(dtype, (pl.Categorical, pl.Enum))


def _cast(name: str, src: pl.DataType, dst: pl.DataType) -> tuple[pl.Expr, pl.Expr]:
    """(value cast to ``dst`` or null, whether the source held a value) for one column."""
    col = pl.col(name)
    if src == dst or src == pl.Null:
        same = col.cast(dst).fill_nan(None) if dst.is_float() else col.cast(dst)  # NaN: missing, as below
        return same, col.is_not_null()
    if src.is_float():
        col = col.fill_nan(None)
    if _is_stringish(src):
        col = col.cast(pl.String)
        if dst != pl.String:
            col = col.str.strip_chars()
            col = pl.when(col == "").then(None).otherwise(col)
    present = col.is_not_null()
    null = pl.lit(None, dtype=dst)

    decimal = isinstance(src, pl.Decimal)
    if dst == pl.String:
        if src == pl.Binary:  # polars' cast raises on the first invalid byte; decode per value
            out = col.map_batches(_decode_utf8, return_dtype=pl.String)
        elif src.is_float():  # ids stored as floats (NaN-able columns): only integral ones
            out = pl.when(col == col.floor()).then(col.cast(pl.Int64, strict=False).cast(pl.String))
        elif decimal:  # Decimal(10,0) or Decimal(12,2) ids: whole values only, as integers
            out = _whole(col, src).cast(pl.String)
        else:
            out = col.cast(pl.String, strict=False)
    elif dst.is_integer():
        if src.is_float():  # never truncate 2.5 to 2
            out = pl.when(col.is_finite() & (col == col.floor())).then(col.cast(dst, strict=False))
        elif decimal:
            out = _whole(col, src).cast(dst, strict=False)
        elif src.is_integer():
            out = col.cast(dst, strict=False)
        elif _is_stringish(src):  # "3" or a whole number written "3.0"
            f = col.cast(pl.Float64, strict=False)
            out = pl.coalesce(col.cast(dst, strict=False), pl.when(f == f.floor()).then(f.cast(dst, strict=False)))
        else:
            out = null
    elif dst.is_float():
        out = col.cast(dst, strict=False) if (src.is_numeric() or _is_stringish(src)) else null
        out = out.fill_nan(None)
    elif isinstance(dst, pl.Datetime):
        if isinstance(src, pl.Datetime):
            out = (col.dt.replace_time_zone(None) if src.time_zone else col).cast(dst)
        elif src == pl.Date:
            out = col.cast(dst)
        elif _is_stringish(src):  # local time as written: a trailing Z or offset is dropped
            col = col.str.replace(c.TIME_ZONE_SUFFIX, "${1}")
            out = pl.coalesce(
                [col.str.to_datetime(f, time_unit=dst.time_unit, strict=False) for f in _ISO_FORMATS]
            )
        else:
            out = null
    else:
        out = col.cast(dst, strict=False)
    return out.cast(dst), present


def _whole(col: pl.Expr, src: pl.Decimal) -> pl.Expr:
    """Decimal values that are whole numbers, as Int64; null for fractions (never truncated)."""
    if not src.scale:
        return col.cast(pl.Int64, strict=False)
    as_int = col.cast(pl.Int64, strict=False)
    return pl.when(as_int.cast(src, strict=False) == col).then(as_int)


def _decode_utf8(values: pl.Series) -> pl.Series:
    """Binary values as UTF-8 strings; null where the bytes are not UTF-8."""

    def decode(b: bytes | None) -> str | None:
        try:
            return None if b is None else b.decode("utf-8")
        except UnicodeDecodeError:
            return None

    return pl.Series(values.name, [decode(b) for b in values.to_list()], dtype=pl.String)


def _json_values(values: pl.Series) -> pl.Series:
    """Nested values (lists, structs) as JSON text, for quarantine files."""
    import json

    return pl.Series(
        values.name, [None if v is None else json.dumps(v, default=str) for v in values.to_list()], dtype=pl.String
    )


def _escape_utf8(values: pl.Series) -> pl.Series:
    """Binary values as strings, bytes that are not UTF-8 as ``\\xNN`` (for quarantine files)."""
    return pl.Series(
        values.name,
        [None if b is None else b.decode("utf-8", errors="backslashreplace") for b in values.to_list()],
        dtype=pl.String,
    )


F = TypeVar("F", pl.DataFrame, pl.LazyFrame)


def conform(frame: F, contract: TableContract) -> F:
    """Cast a landed frame to ``contract``'s columns and types; record cast failures.

    Input: contract columns (required ones must be present; absent optional ones are
    added as nulls), optionally lineage columns and a ``_reason`` column from an earlier
    step; other columns are dropped. Output: contract columns in contract order + the
    lineage columns present + ``_reason`` (null when clean), where each value that was
    present but failed its cast adds ``type:<column>``. Idempotent.
    """
    lf = frame.lazy()
    schema = lf.collect_schema()
    missing = missing_columns(schema.names(), contract)
    if missing:
        raise ValueError(f"{contract.name}: missing required column(s) {missing}")
    target = contract.polars_schema
    values: list[pl.Expr] = []
    type_rules: list[pl.Expr] = []
    for name, dst in target.items():
        if name not in schema:
            values.append(pl.lit(None, dtype=dst).alias(name))
            continue
        cast, present = _cast(name, schema[name], dst)
        values.append(cast.alias(name))
        if schema[name] != dst and schema[name] != pl.Null:
            type_rules.append(pl.when(present & cast.is_null()).then(pl.lit(f"type:{name}")))
    reasons = ([pl.col(c.REASON).cast(pl.String)] if c.REASON in schema else []) + type_rules
    reason = (
        pl.concat_str(reasons, separator="; ", ignore_nulls=True) if reasons else pl.lit(None, pl.String)
    )
    reason = pl.when(reason == "").then(None).otherwise(reason).cast(pl.String).alias(c.REASON)
    lineage = [pl.col(n) for n in LINEAGE if n in schema]
    out = lf.select(*values, *lineage, reason)
    return out if isinstance(frame, pl.LazyFrame) else out.collect()


def stringify_mismatched(frame: F, contract: TableContract) -> F:
    """Cast contract columns whose landed type differs from the contract to strings.

    Used for quarantine files: they keep the landed values, readable even where the
    type was wrong; columns of the right type and non-contract columns are kept as-is.
    Binary values that are not UTF-8 keep their bytes as ``\\xNN`` escapes.
    """
    schema = frame.lazy().collect_schema()
    target = contract.polars_schema
    exprs = [
        pl.col(n).map_batches(_escape_utf8, return_dtype=pl.String)
        if dtype == pl.Binary
        else pl.col(n).map_batches(_json_values, return_dtype=pl.String)
        if dtype.is_nested() or isinstance(dtype, pl.Object)
        else pl.col(n).cast(pl.String, strict=False)
        for n, dtype in schema.items()
        if n in target and dtype != target[n] and dtype != pl.String
    ]
    return frame.with_columns(exprs) if exprs else frame


# --- GE context, suites and checkpoints ----------------------------------------------------


def rule(expectation: Any, name: str) -> Any:
    """Tag an expectation with the rule name that goes into ``_reason``."""
    expectation.meta = {"rule": name}
    return expectation


def _transactions_expectations(gxe: Any) -> list[Any]:
    out = [
        rule(gxe.ExpectColumnToExist(column=col), f"missing_column:{col}")
        for col in c.TRANSACTIONS.required
    ]
    for col in (c.ORDER_ID, c.PRODUCT_ID, c.ORDERED_AT, c.QUANTITY):
        out.append(rule(gxe.ExpectColumnValuesToNotBeNull(column=col), f"not_null:{col}"))
    for col in (c.ORDER_ID, c.PRODUCT_ID):
        out.append(rule(gxe.ExpectColumnValuesToMatchRegex(column=col, regex=r"\S"), f"not_empty:{col}"))
    out += [
        rule(gxe.ExpectColumnValuesToNotBeInSet(column=c.QUANTITY, value_set=[0]), f"nonzero:{c.QUANTITY}"),
        rule(
            gxe.ExpectColumnValuesToBeBetween(
                column=c.QUANTITY,
                min_value={"$PARAMETER": "min_quantity"},
                max_value={"$PARAMETER": "max_quantity"},
            ),
            f"range:{c.QUANTITY}",
        ),
        rule(
            gxe.ExpectColumnValuesToBeBetween(
                column=c.UNIT_PRICE, min_value=0, max_value={"$PARAMETER": "max_unit_price"}
            ),
            f"range:{c.UNIT_PRICE}",
        ),
        rule(
            gxe.ExpectColumnPairValuesToBeEqual(
                column_A=_ORDER_DATE, column_B=c.PARTITION, ignore_row_if="either_value_is_missing"
            ),
            f"in_partition:{c.ORDERED_AT}",
        ),
        rule(
            gxe.ExpectColumnValuesToBeBetween(
                column=_ORDERED_AT_US, max_value={"$PARAMETER": "as_of_us"}, strict_max=True
            ),
            f"not_future:{c.ORDERED_AT}",
        ),
        rule(
            gxe.ExpectColumnValuesToBeInSet(column=_IN_CATALOG, value_set=[True]),
            f"in_catalog:{c.PRODUCT_ID}",
        ),
    ]
    out += _max_length(gxe, _TRANSACTION_TEXT)
    return out


def _max_length(gxe: Any, columns: Iterable[str]) -> list[Any]:
    return [
        rule(
            gxe.ExpectColumnValueLengthsToBeBetween(column=col, max_value={"$PARAMETER": "max_text_length"}),
            f"max_length:{col}",
        )
        for col in columns
    ]


def _catalog_expectations(gxe: Any) -> list[Any]:
    out = [
        rule(gxe.ExpectColumnToExist(column=col), f"missing_column:{col}") for col in c.CATALOG.required
    ]
    for col in (c.PRODUCT_ID, c.TITLE):
        out.append(rule(gxe.ExpectColumnValuesToNotBeNull(column=col), f"not_null:{col}"))
    for col in (c.PRODUCT_ID, c.TITLE):
        out.append(rule(gxe.ExpectColumnValuesToMatchRegex(column=col, regex=r"\S"), f"not_empty:{col}"))
    out.append(
        rule(gxe.ExpectColumnValuesToNotMatchRegex(column=c.TITLE, regex=_CONTROL_CHARS), f"printable:{c.TITLE}")
    )
    out.append(rule(gxe.ExpectColumnValuesToBeUnique(column=c.PRODUCT_ID), f"unique:{c.PRODUCT_ID}"))
    out += _max_length(gxe, _CATALOG_TEXT)
    return out


_SUITES = {c.TRANSACTIONS.name: _transactions_expectations, c.CATALOG.name: _catalog_expectations}
_RULE_ORDER: dict[str, list[str]] = {}


def _failing_rows(result, label: str) -> dict[str, list]:
    """{rule: GE's unexpected_index_list} for each failed expectation of a checkpoint result.

    Raises ValidationError when GE could not evaluate an expectation (it records such errors as a
    failed result rather than raising) or failed one without naming rows."""
    failures: dict[str, list] = {}
    for suite_result in result.run_results.values():
        for r in suite_result.results:
            rule = (r.expectation_config.meta or {}).get("rule", r.expectation_config.type)
            message = _raised(r.exception_info)
            if message:
                raise ValidationError(f"{label}: GE could not evaluate {rule}: {message}")
            if r.success:
                continue
            index = r.result.get("unexpected_index_list")
            if index is None:
                raise ValidationError(f"{label}: {rule} failed for the whole batch: {r.result}")
            failures[rule] = index
    return failures


class GxSuites:
    """A GE context holding prodassoc's suites, one pandas asset and one checkpoint per table.

    ``gx_dir`` given: a file context rooted there; each checkpoint run stores its
    validation result under ``uncommitted/validations``, and ``build_docs`` renders the
    results run since its last call into the Data Docs at ``data_docs_index(gx_dir)`` (once
    per ingestion: a site build costs about half a second whatever it holds, so one build per
    checkpoint run, as GE's ``UpdateDataDocsAction`` does, doubles a small ingestion's
    validation time). ``gx_dir=None``: an in-memory context, no Data Docs. Not safe for two
    processes on one ``gx_dir``.
    """

    def __init__(self, gx_dir: Path | None = None, docs_index_results: int | None = None) -> None:
        ge_logger = logging.getLogger("great_expectations")
        if ge_logger.level == logging.NOTSET:  # its INFO lines (from import on) would drown a run log
            ge_logger.setLevel(logging.WARNING)
        quiet_pyspark_pandas_warning()
        import great_expectations as gx
        import great_expectations.expectations as gxe
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.gx_dir = None if gx_dir is None else Path(gx_dir)
        if self.gx_dir is None:
            ctx = gx.get_context(mode="ephemeral")
        else:
            self.gx_dir.mkdir(parents=True, exist_ok=True)
            ctx = _file_context(self.gx_dir)
        pb = ctx.variables.progress_bars
        if isinstance(pb, dict):  # as read back from great_expectations.yml by a later process
            pb = ProgressBarsConfig(**pb)
        if pb is None or pb.globally or pb.metric_calculations:  # tqdm bars on every run otherwise
            ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
            if self.gx_dir is not None:
                ctx.variables.save()
        self._ctx = ctx
        if self.gx_dir is not None:
            self.limit_docs_index(DOCS_INDEX_RESULTS if docs_index_results is None else docs_index_results)
        try:
            source = ctx.data_sources.get(_DATASOURCE)
        except KeyError:
            source = ctx.data_sources.add_pandas(_DATASOURCE)
        self._lock = threading.Lock()  # one checkpoint run at a time on this context
        self._checkpoints: dict[str, Any] = {}
        self._undocumented: list[Any] = []  # identifiers of results and suites not yet in the Data Docs
        self._index_limit: int | None = None  # limit_docs_index's: how many results the index lists
        for table, build in _SUITES.items():
            expectations = build(gxe)
            _RULE_ORDER[table] = [e.meta["rule"] for e in expectations]
            suite = ctx.suites.add_or_update(gx.ExpectationSuite(name=table, expectations=expectations))
            self._checkpoints[table] = self._add_checkpoint(source, table, table, suite, {"result_format": "COMPLETE"})

    def limit_docs_index(self, results: int | None) -> None:
        """List only the newest ``results`` validation results on the Data Docs index (GE's
        ``site_index_builder.validation_results_limit``; older results and their pages stay on
        disk; None: every result, GE's default). A build reads every result it lists, so an
        unbounded index makes each night's build slower than the last
        (benchmarks/bench_gx_growth.py: 0.23 s with 10 stored results, 1.33 s with 300 to 600)."""
        self._index_limit = results
        sites = self._ctx.variables.data_docs_sites or {}
        changed = False
        for site in sites.values():
            index = site.setdefault("site_index_builder", {"class_name": "DefaultSiteIndexBuilder"})
            if index.get("validation_results_limit") != results:
                if results is None:
                    index.pop("validation_results_limit", None)
                else:
                    index["validation_results_limit"] = results
                changed = True
        if changed:
            self._ctx.variables.data_docs_sites = sites
            self._ctx.variables.save()

    def _add_checkpoint(self, source: Any, table: str, name: str, suite: Any, result_format: dict) -> Any:
        """Checkpoint ``name``: ``suite`` on ``table``'s whole-dataframe asset of ``source`` (the
        asset and its batch definition made if missing); no actions (``build_docs`` renders)."""
        import great_expectations as gx

        try:
            asset = source.get_asset(table)
        except LookupError:
            asset = source.add_dataframe_asset(table)
        try:
            batch = asset.get_batch_definition(_BATCH_DEFINITION)
        except KeyError:
            batch = asset.add_batch_definition_whole_dataframe(_BATCH_DEFINITION)
        definition = self._ctx.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=name, data=batch, suite=suite)
        )
        return self._ctx.checkpoints.add_or_update(gx.Checkpoint(
            name=name, validation_definitions=[definition], actions=[], result_format=result_format,
        ))

    def _run_checkpoint(self, name: str, frame: Any, parameters: dict[str, Any], run_name: str | None) -> Any:
        """Checkpoint ``name`` on ``frame``; its result is kept for the next ``build_docs``."""
        from great_expectations.core.run_identifier import RunIdentifier
        from great_expectations.data_context.types.resource_identifiers import ExpectationSuiteIdentifier

        stored = storage_errors(self.gx_dir) if self.gx_dir is not None else nullcontext()  # the results store
        with self._lock, stored:
            result = self._checkpoints[name].run(
                batch_parameters={"dataframe": frame},
                expectation_parameters=parameters,
                run_id=RunIdentifier(run_name=run_name) if run_name else None,
            )
            if self.gx_dir is not None:
                for identifier, suite_result in result.run_results.items():
                    self._undocumented += [identifier, ExpectationSuiteIdentifier(name=suite_result.suite_name)]
            self._forget_batches()
        return result

    def _forget_batches(self) -> None:
        """Drop the batches GE's execution engines keep after a run (each asset's last validated
        frame, until that asset's next run): a nightly would otherwise carry the last validated
        rows through every later stage (850k lines: 104 MB of pandas)."""
        for name in (_DATASOURCE, _SPARK_DATASOURCE):
            try:
                engine = self._ctx.data_sources.get(name).execution_engine  # None: never used (none is made)
            except KeyError:
                continue
            if engine is not None:
                engine.batch_manager.batch_data_cache.clear()
                engine.batch_manager.reset_batch_cache()

    def skip_docs(self) -> None:
        """Leave the results run since the last ``build_docs`` unrendered (``validation.data_docs``
        off; they are stored all the same). They are recorded in ``skipped_docs_path``, the newest
        as many as the index lists, for the first ``build_docs`` after the Data Docs are turned
        back on, so that no page the index links to is missing."""
        with self._lock:
            self._record_skipped()

    def _record_skipped(self) -> None:
        """``skip_docs`` with the lock held."""
        from great_expectations.data_context.types.resource_identifiers import ValidationResultIdentifier

        results = [list(i.to_fixed_length_tuple()) for i in dict.fromkeys(self._undocumented)
                   if isinstance(i, ValidationResultIdentifier)]
        self._undocumented = []
        if self.gx_dir is None or not results:
            return
        skipped = [*self._read_skipped(), *results]
        if self._index_limit is not None:
            skipped = skipped[-self._index_limit:]
        path = skipped_docs_path(self.gx_dir)
        try:  # a hint for later pages: never what fails (or hides why) a run, e.g. on a full disk
            write_json(path, skipped)
        except OSError as exc:
            logger.warning("Data Docs: could not record the skipped results in %s (%s); their pages will not "
                           "be rendered by the next build", path, exc)

    def _read_skipped(self) -> list[list[str]]:
        """The skipped results on record (an unreadable record is logged and counts as none)."""
        path = skipped_docs_path(self.gx_dir)
        if not path.is_file():
            return []
        try:
            skipped = [list(t) for t in json.loads(path.read_text())]
            if not all(len(t) == 4 and all(isinstance(v, str) for v in t) for t in skipped):
                raise ValueError("not a list of [suite, run name, run time, batch] entries")
            return skipped
        except (ValueError, TypeError) as exc:
            logger.warning("Data Docs: %s unreadable (%s); results validated while they were off stay unrendered",
                           path, exc)
            return []

    def _skipped_identifiers(self) -> list[Any]:
        """The skipped results still stored, each followed by its suite (pages to render)."""
        from great_expectations.data_context.types.resource_identifiers import (
            ExpectationSuiteIdentifier,
            ValidationResultIdentifier,
        )

        out: list[Any] = []
        for t in self._read_skipped():
            identifier = ValidationResultIdentifier.from_fixed_length_tuple(t)
            if self._ctx.validation_results_store.has_key(identifier):
                out += [identifier, ExpectationSuiteIdentifier(name=t[0])]
        return out

    def build_docs(self) -> Path | None:
        """Render the results run since the last call, and any skipped while the Data Docs were
        off or by a build that failed (``skip_docs``), into the Data Docs (the index lists the
        newest stored results), readable offline; without an index page, every stored result.
        Returns the index page (None without a ``gx_dir``)."""
        if self.gx_dir is None:
            return None
        index = data_docs_index(self.gx_dir)
        with self._lock:
            pending = [*self._skipped_identifiers(), *self._undocumented]
            if pending or not index.exists():
                try:
                    with storage_errors(index.parent):
                        # no index (never built, removed, or a build that failed part way): every stored result
                        self._ctx.build_data_docs(
                            resource_identifiers=list(dict.fromkeys(pending)) if index.exists() else None)
                except Exception:
                    self._record_skipped()  # for the next build, if the disk lets the record be written
                    raise
                skipped_docs_path(self.gx_dir).unlink(missing_ok=True)
                self._undocumented = _unrendered(index.parent, pending)
                if self._undocumented:  # GE logs a page it could not write (a full disk) and goes on
                    logger.warning("Data Docs: %d result page(s) not rendered (Great Expectations logged why); "
                                   "the next build renders them", len(self._undocumented))
                    self._record_skipped()
                make_data_docs_offline(index.parent)
        return self.data_docs

    @property
    def context(self) -> Any:
        """The underlying GE data context."""
        return self._ctx

    def _spark_checkpoint(self, table: str) -> str:
        """The name of ``table``'s suite on a Spark dataframe asset (``<table>_spark``), made on
        first use: the same expectations; failing rows named by the lineage columns (file, row)."""
        name = f"{table}{_SPARK_SUFFIX}"
        if name in self._checkpoints:
            return name
        ctx = self._ctx
        try:
            source = ctx.data_sources.get(_SPARK_DATASOURCE)
        except KeyError:
            source = ctx.data_sources.add_spark(_SPARK_DATASOURCE)
        self._checkpoints[name] = self._add_checkpoint(
            source, table, name, ctx.suites.get(table),
            {"result_format": "COMPLETE", "unexpected_index_column_names": [SOURCE_KEY_FILE, SOURCE_KEY_ROW]},
        )
        return name

    def run_spark(
        self, table: str, frame: Any, parameters: dict[str, Any], run_name: str | None
    ) -> tuple[bool, dict[str, list[tuple[str, int]]]]:
        """``run`` on a Spark DataFrame (GE's Spark datasource) holding the lineage columns
        ``_source_file`` and ``_source_row``: (GE success, {rule: failing (file, row) pairs})."""
        with self._lock:
            name = self._spark_checkpoint(table)
        result = self._run_checkpoint(name, frame, parameters, run_name)
        failures = _failing_rows(result, f"{table} (spark)")
        return bool(result.success), {
            rule: [(str(i[SOURCE_KEY_FILE]), int(i[SOURCE_KEY_ROW])) for i in index] for rule, index in failures.items()
        }

    @property
    def data_docs(self) -> Path | None:
        return None if self.gx_dir is None else data_docs_index(self.gx_dir)

    def run(
        self, table: str, frame: "pd.DataFrame", parameters: dict[str, Any], run_name: str | None
    ) -> tuple[bool, dict[str, list[int]]]:
        """Run ``table``'s checkpoint on a pandas frame with a RangeIndex.

        Returns (GE success, {rule: failing row positions}). Raises ValidationError when
        GE could not evaluate an expectation (it records such errors as a failed result
        rather than raising, which would otherwise look like "no failing rows").
        """
        result = self._run_checkpoint(table, frame, parameters, run_name)
        failures = _failing_rows(result, table)
        return bool(result.success), {rule: [int(i) for i in index] for rule, index in failures.items()}


def _file_context(gx_dir: Path) -> Any:
    """GE's file context in ``gx_dir``, without its config-variables file: prodassoc's config has
    no ``${...}`` to substitute from it (environment variables still substitute), and GE re-reads
    and re-parses that YAML file on every access to the context's config (about a hundred times an
    ingestion: about 0.08 s of a toy ingestion's 0.9 s on these machines)."""
    import great_expectations as gx

    ctx = gx.get_context(mode="file", context_root_dir=str(gx_dir))
    if ctx.variables.config_variables_file_path:  # a new context, or one made before this change
        ctx.variables.config_variables_file_path = None
        ctx.variables.save()
        ctx = gx.get_context(mode="file", context_root_dir=str(gx_dir))  # its config provider made anew
    return ctx


def _raised(info: Any) -> str | None:
    """The exception message in a GE result's exception_info (flat or keyed by metric)."""
    if not info:
        return None
    if "raised_exception" in info:
        return info.get("exception_message") if info.get("raised_exception") else None
    for value in info.values():
        if isinstance(value, dict) and value.get("raised_exception"):
            return value.get("exception_message")
    return None


DOCS_INDEX_RESULTS: int = ValidationConfig.model_fields["docs_index_results"].default  # the setting's default
_CONTEXTS: dict[Path | None, GxSuites] = {}
_CONTEXTS_LOCK = threading.Lock()


def gx_suites(gx_dir: Path | None = None, docs_index_results: int | None = None) -> GxSuites:
    """The process-wide GxSuites for ``gx_dir`` (built once: imports GE, writes the suites), its
    Data Docs index listing the newest ``docs_index_results`` results (None: DOCS_INDEX_RESULTS)."""
    key = None if gx_dir is None else Path(gx_dir).resolve()
    with _CONTEXTS_LOCK:
        if key not in _CONTEXTS:
            _CONTEXTS[key] = GxSuites(key, docs_index_results)
        elif key is not None and docs_index_results is not None:
            _CONTEXTS[key].limit_docs_index(docs_index_results)
        return _CONTEXTS[key]


# --- validation -----------------------------------------------------------------------------


def _check_lineage(df: pl.DataFrame, table: str) -> None:
    missing = [n for n in LINEAGE if n not in df.columns]
    if missing:
        raise ValueError(f"{table}: lineage column(s) {missing} missing; add them before validating")


def _split(
    df: pl.DataFrame, failures: pl.DataFrame, contract: TableContract
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, dict[str, int]]:
    """Combine type rules (in ``_reason``) with GE failures ({_ROW, rule, order}) per row."""
    prior = (
        df.select(_ROW, pl.col(c.REASON).str.split("; ").alias("rule"))
        .drop_nulls("rule")
        .explode("rule")
        .with_columns(order=pl.int_range(pl.len()).over(_ROW) - 1_000_000)
    )
    # A value that failed its cast is null now: report type:<c>, not also not_null:<c>.
    shadowed = prior.filter(pl.col("rule").str.starts_with("type:")).select(
        _ROW, pl.col("rule").str.replace("^type:", "not_null:")
    )
    failures = failures.join(shadowed, on=[_ROW, "rule"], how="anti")
    rules = pl.concat([prior, failures], how="vertical_relaxed")
    reasons = rules.group_by(_ROW).agg(pl.col("rule").sort_by("order").str.join("; ").alias(c.REASON))
    columns = [*contract.polars_schema.names(), *LINEAGE]
    base = df.select(_ROW, *columns)
    accepted = base.join(reasons, on=_ROW, how="anti").sort(_ROW).drop(_ROW)
    quarantined = base.join(reasons, on=_ROW, how="inner").sort(_ROW).drop(_ROW)
    counts = rules.group_by("rule").len().sort(["len", "rule"], descending=[True, False])
    stats = (
        df.select(c.PARTITION, c.SOURCE_FILE, _ROW)
        .join(reasons.select(_ROW, failed=pl.lit(1, pl.Int64)), on=_ROW, how="left")
        .group_by(c.PARTITION, c.SOURCE_FILE)
        .agg(rows_read=pl.len().cast(pl.Int64), rows_quarantined=pl.col("failed").sum().cast(pl.Int64))
        .with_columns(rows_accepted=pl.col("rows_read") - pl.col("rows_quarantined"))
        .select(c.PARTITION, c.SOURCE_FILE, "rows_read", "rows_accepted", "rows_quarantined")
        .sort(c.PARTITION, c.SOURCE_FILE)
    )
    return accepted, quarantined, stats, dict(zip(counts["rule"].to_list(), counts["len"].to_list()))


def _run_ge(
    df: pl.DataFrame,
    table: str,
    ge_columns: list[str],
    parameters: dict[str, Any],
    gx: GxSuites,
    run_name: str | None,
    chunk_rows: int,
) -> tuple[bool, pl.DataFrame]:
    """GE over ``df`` in chunks; failures as a frame (_ROW, rule, order)."""
    order = {rule: i for i, rule in enumerate(_RULE_ORDER[table])}
    parts: list[pl.DataFrame] = []
    success = True
    for start in range(0, df.height, chunk_rows):
        chunk = df.slice(start, chunk_rows)
        ok, failures = gx.run(table, chunk.select(ge_columns).to_pandas(), parameters, run_name)
        success &= ok
        parts += [
            pl.DataFrame(
                {_ROW: [start + i for i in rows], "rule": rule, "order": order.get(rule, len(order))},
                schema={_ROW: pl.UInt32, "rule": pl.String, "order": pl.Int64},
            )
            for rule, rows in failures.items()
        ]
    empty = pl.DataFrame(schema={_ROW: pl.UInt32, "rule": pl.String, "order": pl.Int64})
    return success, pl.concat([empty, *parts])


def validate_transactions(
    df: pl.DataFrame,
    catalog_ids: pl.Series | Iterable[str],
    cfg: ValidationConfig,
    *,
    as_of: date | None = None,
    gx: GxSuites | None = None,
    run_name: str | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> ValidationOutcome:
    """Validate transaction rows from many files in one GE run (chunked above ``chunk_rows``).

    df: transaction columns (landed types are cast with ``conform``) plus the lineage
        columns; ``_partition`` is the partition date ``YYYY-MM-DD``. May carry a
        ``_reason`` column with rules found earlier (e.g. by a per-file ``conform``).
    catalog_ids: product ids of the accepted catalog.
    as_of: the run's date; rows ordered at or after its midnight fail ``not_future``
        (not checked when None).
    gx: the context to run in; default: an in-memory one (no Data Docs).
    """
    _check_lineage(df, c.TRANSACTIONS.name)
    typed = conform(df, c.TRANSACTIONS).with_row_index(_ROW)
    typed = typed.with_columns(
        pl.col(c.PARTITION).cast(pl.String),
        pl.col(c.ORDERED_AT).dt.strftime("%Y-%m-%d").alias(_ORDER_DATE),
        pl.col(c.ORDERED_AT).dt.epoch("us").alias(_ORDERED_AT_US),
    )
    typed = typed.with_columns(in_catalog(pl.col(c.PRODUCT_ID), catalog_ids).alias(_IN_CATALOG))
    parameters = {
        "min_quantity": -cfg.max_quantity,
        "max_quantity": cfg.max_quantity,
        "max_unit_price": cfg.max_unit_price,
        "max_text_length": cfg.max_text_length,
        "as_of_us": _NO_AS_OF_US if as_of is None else _epoch_us(as_of),
    }
    ge_columns = [*c.TRANSACTIONS.polars_schema.names(), _ORDER_DATE, _ORDERED_AT_US, _IN_CATALOG, c.PARTITION]
    success, failures = _validate(typed, c.TRANSACTIONS.name, ge_columns, parameters, gx, run_name, chunk_rows)
    accepted, quarantined, stats, counts = _split(typed, failures, c.TRANSACTIONS)
    logger.info(
        "validated %d transaction rows: %d accepted, %d quarantined",
        typed.height,
        accepted.height,
        quarantined.height,
    )
    return ValidationOutcome(accepted, quarantined, stats, counts, success and quarantined.is_empty())


def catalog_id_series(catalog_ids: pl.Series | Iterable[str]) -> pl.Series:
    """The distinct accepted catalog ids, as strings, in first-seen order."""
    ids = catalog_ids if isinstance(catalog_ids, pl.Series) else pl.Series(list(catalog_ids), dtype=pl.String)
    return ids.cast(pl.String).drop_nulls().unique(maintain_order=True)


def in_catalog(product_id: pl.Expr, catalog_ids: pl.Series | Iterable[str]) -> pl.Expr:
    """Whether ``product_id`` is an accepted catalog id; null where it is null (GE's set rules skip nulls)."""
    ids = catalog_id_series(catalog_ids).implode()
    return pl.when(product_id.is_null()).then(None).otherwise(product_id.is_in(ids))


def _epoch_us(day: date) -> int:
    return (datetime.combine(day, time()) - datetime(1970, 1, 1)) // timedelta(microseconds=1)


def validate_catalog(
    df: pl.DataFrame,
    *,
    cfg: ValidationConfig | None = None,
    gx: GxSuites | None = None,
    run_name: str | None = None,
) -> ValidationOutcome:
    """Validate a catalog snapshot (one GE run: uniqueness needs the whole table).

    df: catalog columns plus the lineage columns.
    cfg: limits (``max_text_length``); default: ValidationConfig().
    """
    _check_lineage(df, c.CATALOG.name)
    cfg = cfg or ValidationConfig()
    typed = conform(df, c.CATALOG).with_row_index(_ROW)
    parameters = {"max_text_length": cfg.max_text_length}
    success, failures = _validate(
        typed, c.CATALOG.name, list(_CATALOG_TEXT), parameters, gx, run_name, max(typed.height, 1)
    )
    accepted, quarantined, stats, counts = _split(typed, failures, c.CATALOG)
    logger.info(
        "validated %d catalog rows: %d accepted, %d quarantined",
        typed.height,
        accepted.height,
        quarantined.height,
    )
    return ValidationOutcome(accepted, quarantined, stats, counts, success and quarantined.is_empty())


def _validate(
    typed: pl.DataFrame,
    table: str,
    ge_columns: list[str],
    parameters: dict[str, Any],
    gx: GxSuites | None,
    run_name: str | None,
    chunk_rows: int,
) -> tuple[bool, pl.DataFrame]:
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if typed.is_empty():  # nothing to check; skip GE's fixed cost
        return True, pl.DataFrame(schema={_ROW: pl.UInt32, "rule": pl.String, "order": pl.Int64})
    return _run_ge(typed, table, ge_columns, parameters, gx or gx_suites(None), run_name, chunk_rows)
