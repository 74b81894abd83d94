"""Read (ingest step 2): one landed file into its table's contract, with lineage.

``load`` reads only the contract's columns (projection), casts them (validation.conform) and adds
``_source_row``, ``_source_file`` and ``_partition``. A file missing a required column or with a
column of a type the contract does not convert is ``rejected``: every row is kept for quarantine
with the rule as its ``_reason``. A file the Parquet reader cannot read is ``unreadable``.
``quarantine_rows`` re-reads the landed values of failing rows for the quarantine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from prodassoc_core.data import contracts as c
from prodassoc_core.data.contracts import TableContract
from prodassoc_core.data.landing import Landed
from prodassoc_core.data.validation import conform, missing_columns, stringify_mismatched, unsupported_types

OK, REJECTED, UNREADABLE = "ok", "rejected", "unreadable"  # REJECTED: the whole file is quarantined


@dataclass
class Loaded:
    file: Landed
    sha: str
    status: str  # ok | rejected | unreadable
    rows: int = 0
    frame: pl.DataFrame | None = None  # conformed rows + lineage + _reason (status ok)
    quarantine: pl.DataFrame | None = None  # whole file (status rejected)
    detail: str | None = None
    ignored: tuple[str, ...] = ()  # the file's columns that are not in the contract (not read)


def ignored_columns(names, contract: TableContract) -> tuple[str, ...]:
    """A landed file's columns that are not in ``contract``, in the file's order: never read."""
    return tuple(n for n in names if n not in contract.polars_schema)


def with_ignored(detail: str | None, loaded: Loaded) -> str | None:
    """A manifest detail that also names the file's columns that were not read."""
    if not loaded.ignored:
        return detail
    note = f"columns not in the contract, not read: {', '.join(loaded.ignored)}"
    return note if detail is None else f"{detail}; {note}"


def lineage(file: Landed) -> list[pl.Expr]:
    return [
        pl.col(c.SOURCE_ROW).cast(pl.Int64),
        pl.lit(file.rel, pl.String).alias(c.SOURCE_FILE),
        pl.lit(file.partition, pl.String).alias(c.PARTITION),
    ]


def scan(path: Path) -> pl.LazyFrame:
    return pl.scan_parquet(path, hive_partitioning=False, glob=False)


def load(file: Landed, contract: TableContract, sha: str) -> Loaded:
    """Read one landed file (sha256 ``sha``): contract columns only (projection), cast, with lineage."""
    try:
        lf = scan(file.path)
        schema = lf.collect_schema()
        missing = missing_columns(schema.names(), contract)
        unsupported = unsupported_types(schema, contract)
        rules = [f"missing_column:{m}" for m in missing] + [rule for rule, _ in unsupported]
        if rules:
            whole = (
                stringify_mismatched(lf, contract)
                .with_row_index(c.SOURCE_ROW)
                .with_columns(lineage(file))
                .with_columns(pl.lit("; ".join(rules)).alias(c.REASON))
                .collect()
            )
        else:
            present = [n for n in contract.polars_schema.names() if n in schema]
            frame = lf.select(present).with_row_index(c.SOURCE_ROW).with_columns(lineage(file)).collect()
    except (Exception, pl.exceptions.PanicException) as exc:  # noqa: BLE001 - any reader failure
        detail = f"unreadable Parquet: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return Loaded(file, sha, UNREADABLE, detail=detail)
    if rules:
        problems = ([f"missing required column(s) {', '.join(missing)}"] if missing else []) + [
            f"{why} (the contract's conversion rules: contracts.py)" for _, why in unsupported
        ]
        detail = f"{'; '.join(problems)}; all {whole.height} rows quarantined"
        return Loaded(file, sha, REJECTED, rows=whole.height, quarantine=whole, detail=detail)
    return Loaded(file, sha, OK, rows=frame.height, frame=conform(frame, contract),
                  ignored=ignored_columns(schema.names(), contract))


def quarantine_rows(file: Landed, contract: TableContract, reasons: pl.DataFrame) -> pl.DataFrame:
    """Landed values of the failing rows (re-read lazily), with lineage and ``_reason``."""
    rows = reasons[c.SOURCE_ROW]
    source = (
        stringify_mismatched(scan(file.path), contract)
        .with_row_index(c.SOURCE_ROW)
        .filter(pl.col(c.SOURCE_ROW).is_in(rows.cast(pl.UInt32).implode()))
        .with_columns(lineage(file))
        .collect()
    )
    out = source.join(reasons.select(c.SOURCE_ROW, c.REASON), on=c.SOURCE_ROW, how="inner")
    columns = [c.SOURCE_FILE, c.SOURCE_ROW, c.PARTITION, c.REASON]
    return out.select([n for n in out.columns if n not in columns] + columns).sort(c.SOURCE_ROW)
