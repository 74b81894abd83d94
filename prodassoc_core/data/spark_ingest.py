"""Ingestion's read, conform and validate steps for transactions as Spark jobs (``engine: spark``).

``ingest`` runs the same steps with either engine; with a Spark session it calls this module for
the transaction files' read (step 2) and validation (step 3). Discovery (``landing``), the
partition verdicts (``verdicts``), reconciliation, staging and the manifest are the local code,
unchanged, so the staged and quarantine files and the manifest are written exactly as the local
engine writes them. The catalog (one snapshot, uniqueness over the whole table) stays local.

Read (``probe``, ``read``): a landed file whose contract columns have exactly the contract's types
(the common case: an export that follows the contract, e.g. ``prodassoc import``) is read by
Spark, contract columns only, with its lineage (``_source_row`` from Spark's ``_metadata.row_index``,
the file and partition as literals); conforming it is the identity (absent optional columns
become nulls). Every other file goes through the local loader (``loading.load``): a footer that
cannot be read, a missing column, a type the contract converts or refuses (string quantities,
nanosecond or zoned timestamps, ...) — so the cast rules and their ``type:``/``unsupported_type:``
reasons are the local engine's by construction, not re-implemented in Spark SQL. A Spark-read
file with a string that is not UTF-8 (Spark reads the bytes; polars refuses the file) is handed to
the local loader too, which marks it unreadable as the local engine does.

Validate (``validate_batch``): the Spark-read rows of a batch are validated in one run of the
same expectation suite through Great Expectations' Spark datasource (``GxSuites.run_spark``:
whole-dataframe batch, ``unexpected_index_column_names`` = file and row, since a Spark frame has
no row index); rows of locally loaded files through the pandas route as before. Failing
(file, row) pairs become the same ``_reason`` strings by the local code (``validation._split``).

What reaches the driver: the failing rows' keys, and each batch's rows (at most about
``batch_rows``, 1M by default) to write the staged files with the local writer. The driver's
memory is therefore bounded by the batch size, not by the landing's size.

Known difference: Spark evaluates ``not_empty`` (regex ``\\S``) with Java's regex engine, where
``\\s`` is ASCII whitespace only; an id made only of Unicode spaces (U+00A0, U+2003, ...) fails
``not_empty`` on the local route and passes it on Spark.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Iterable

import polars as pl
import pyarrow.parquet as pq

from prodassoc_core.data import contracts as c
from prodassoc_core.data.landing import Landed
from prodassoc_core.data.loading import OK, Loaded, ignored_columns, load
from prodassoc_core.data.reconcile import check_validated_rows
from prodassoc_core.data.validation import (
    _IN_CATALOG,
    _NO_AS_OF_US,
    _ORDER_DATE,
    _ORDERED_AT_US,
    _ROW,
    _RULE_ORDER,
    GxSuites,
    ValidationOutcome,
    _epoch_us,
    _split,
    catalog_id_series,
    gx_suites,
    missing_columns,
    validate_transactions,
)
from prodassoc_core.data.verdicts import FileResult
from prodassoc_core.ops import ValidationConfig

if TYPE_CHECKING:
    from datetime import date

    from pyspark.sql import DataFrame, SparkSession

logger = logging.getLogger("prodassoc.ingest")

_FILE_ORDER = "_file_order"
_CATALOG_ID = "_catalog_id"  # the accepted catalog's ids, joined to compute _in_catalog


def spark_read(loaded: Loaded) -> bool:
    """Whether ``probe`` left this file to Spark (readable, contract types exactly)."""
    return loaded.status == OK and loaded.frame is None


def probe(file: Landed, contract: c.TableContract, sha: str) -> Loaded:
    """The file's footer decides: contract columns of exactly the contract's types -> Spark reads
    it (``Loaded`` with status ok, its row count, no frame); anything else -> ``loading.load``."""
    try:
        schema = pl.read_parquet_schema(file.path)
        rows = pq.read_metadata(file.path).num_rows
    except Exception:  # noqa: BLE001 - the local loader names the problem (unreadable Parquet)
        return load(file, contract, sha)
    target = contract.polars_schema
    if missing_columns(schema, contract) or any(n in target and t != target[n] for n, t in schema.items()):
        return load(file, contract, sha)
    return Loaded(file, sha, OK, rows=rows, ignored=ignored_columns(schema, contract))


def spark_schema(contract: c.TableContract):
    """The contract's columns as a Spark read schema (timestamps without time zone)."""
    from pyspark.sql import types as T

    types = {pl.String: T.StringType(), pl.Int64: T.LongType(), pl.Float64: T.DoubleType(),
             pl.Datetime("us"): T.TimestampNTZType()}
    return T.StructType([T.StructField(n, types[t]) for n, t in contract.polars_schema.items()])


def read(spark: "SparkSession", files: list[Loaded], contract: c.TableContract) -> "DataFrame":
    """The rows of Spark-read files as one frame: contract columns (contract types), lineage,
    ``_reason`` (null) and the file's position in ``files`` (to restore the batch's row order).

    One scan of all the files (``_scan``): a file's lineage comes from its ``_metadata`` path,
    looked up in a small broadcast table. A union of one scan per file gives the same rows, but
    its plan grows with the files (hundreds of day files a batch) and planning it cost more
    than reading them; it is kept for a batch whose paths Spark reports in a form not matched here."""
    scanned = _scan(spark, files, contract)
    if scanned is not None:
        return scanned
    logger.info("read on spark: %d files whose paths the scan does not match, one scan each", len(files))
    return _read_each(spark, files, contract)


def _scan(spark: "SparkSession", files: list[Loaded], contract: c.TableContract) -> "DataFrame | None":
    """``read`` as one Parquet scan; None when the scan's files cannot each be matched to one of
    ``files`` (by their URI path, ``inputFiles``)."""
    from urllib.parse import unquote, urlparse

    from pyspark.sql import functions as F

    schema = spark_schema(contract)
    local = {str(b.file.path.resolve()): i for i, b in enumerate(files)}
    if len(local) != len(files):
        return None
    frame = spark.read.schema(schema).parquet(*local)
    keys: dict[str, int] = {}
    for uri in frame.inputFiles():
        key = urlparse(uri).path
        i = local.get(unquote(key))
        if i is None or key in keys:
            return None
        keys[key] = i
    if sorted(keys.values()) != list(range(len(files))):
        return None
    lookup = spark.createDataFrame(
        [(key, files[i].file.rel, files[i].file.partition, i) for key, i in keys.items()],
        f"_key string, {c.SOURCE_FILE} string, {c.PARTITION} string, {_FILE_ORDER} int")
    lineage = frame.select(
        *schema.names,
        F.col("_metadata.row_index").cast("long").alias(c.SOURCE_ROW),
        F.expr("try_parse_url(_metadata.file_path, 'PATH')").alias("_key"),
    )
    return lineage.join(F.broadcast(lookup), "_key").select(
        *schema.names, c.SOURCE_ROW, c.SOURCE_FILE, c.PARTITION,
        F.lit(None).cast("string").alias(c.REASON), _FILE_ORDER,
    )


def _read_each(spark: "SparkSession", files: list[Loaded], contract: c.TableContract) -> "DataFrame":
    """``read`` as a union of one scan per file, lineage as literals."""
    from pyspark.sql import functions as F

    schema = spark_schema(contract)
    frames = []
    for i, b in enumerate(files):
        frame = spark.read.schema(schema).parquet(str(b.file.path.resolve()))
        frames.append(frame.select(
            *schema.names,
            F.col("_metadata.row_index").cast("long").alias(c.SOURCE_ROW),
            F.lit(b.file.rel).alias(c.SOURCE_FILE),
            F.lit(b.file.partition).alias(c.PARTITION),
            F.lit(None).cast("string").alias(c.REASON),
            F.lit(i).alias(_FILE_ORDER),
        ))
    out = frames[0]
    for frame in frames[1:]:
        out = out.unionByName(frame)
    return out


def not_utf8_files(frame: "DataFrame", contract: c.TableContract) -> set[str]:
    """Files of ``frame`` with a string value that is not UTF-8 (one Spark job)."""
    from functools import reduce

    from pyspark.sql import functions as F

    strings = [n for n, t in contract.polars_schema.items() if t == pl.String]
    bad = reduce(lambda a, b: a | b, [F.coalesce(~F.is_valid_utf8(n), F.lit(False)) for n in strings])
    return {r[0] for r in frame.filter(bad).select(c.SOURCE_FILE).distinct().collect()}


def validate_transactions_spark(
    frame: "DataFrame",
    catalog_ids: pl.Series | Iterable[str],
    cfg: ValidationConfig,
    *,
    as_of: "date | None" = None,
    gx: GxSuites | None = None,
    run_name: str | None = None,
) -> ValidationOutcome:
    """``validation.validate_transactions`` of a Spark frame from ``read``: the suite runs in
    Spark (GE's Spark datasource); the rows come back to the driver in the batch's order for the
    local split into accepted and quarantined (the same ``_reason`` strings)."""
    import pandas as pd
    from pyspark.sql import functions as F

    gx = gx or gx_suites(None)
    parameters = {
        "min_quantity": -cfg.max_quantity,
        "max_quantity": cfg.max_quantity,
        "max_unit_price": cfg.max_unit_price,
        "max_text_length": cfg.max_text_length,
        "as_of_us": _NO_AS_OF_US if as_of is None else _epoch_us(as_of),
    }
    names = c.TRANSACTIONS.polars_schema.names()
    ts = F.col(c.ORDERED_AT)
    frame = frame.withColumn(c.UNIT_PRICE, F.nanvl(F.col(c.UNIT_PRICE), F.lit(None).cast("double")))
    # as validation.in_catalog, by a broadcast join with the ids (Column.isin of 50k literals takes
    # PySpark 38 s to build, one py4j call a literal)
    catalog = F.broadcast(frame.sparkSession.createDataFrame(
        pd.DataFrame({_CATALOG_ID: catalog_id_series(catalog_ids).to_list()}, dtype=object), schema=f"{_CATALOG_ID} string"))
    joined = frame.join(catalog, F.col(c.PRODUCT_ID) == F.col(_CATALOG_ID), "left")
    checked = joined.select(  # a NaN price is missing, as in the local route's conform
        *names,
        F.to_date(ts).cast("string").alias(_ORDER_DATE),
        F.expr(f"timestampdiff(MICROSECOND, TIMESTAMP_NTZ'1970-01-01 00:00:00', {c.ORDERED_AT})").alias(_ORDERED_AT_US),
        F.when(F.col(c.PRODUCT_ID).isNull(), F.lit(None)).otherwise(F.col(_CATALOG_ID).isNotNull()).alias(_IN_CATALOG),
        c.PARTITION, c.SOURCE_FILE, c.SOURCE_ROW,
    )
    success, failures = gx.run_spark(c.TRANSACTIONS.name, checked, parameters, run_name)
    typed = pl.from_arrow(frame.toArrow()).sort(_FILE_ORDER, c.SOURCE_ROW).drop(_FILE_ORDER)
    typed = typed.cast({**c.TRANSACTIONS.polars_schema, c.SOURCE_ROW: pl.Int64, c.REASON: pl.String})
    typed = typed.with_row_index(_ROW)
    order = {rule: i for i, rule in enumerate(_RULE_ORDER[c.TRANSACTIONS.name])}
    keys = pl.DataFrame(
        [(file, row, rule, order.get(rule, len(order))) for rule, rows in failures.items() for file, row in rows],
        schema={c.SOURCE_FILE: pl.String, c.SOURCE_ROW: pl.Int64, "rule": pl.String, "order": pl.Int64},
        orient="row",
    )
    found = keys.join(typed.select(_ROW, c.SOURCE_FILE, c.SOURCE_ROW), on=[c.SOURCE_FILE, c.SOURCE_ROW])
    accepted, quarantined, stats, counts = _split(typed, found.select(_ROW, "rule", "order"), c.TRANSACTIONS)
    logger.info("validated %d transaction rows on spark: %d accepted, %d quarantined",
                typed.height, accepted.height, quarantined.height)
    return ValidationOutcome(accepted, quarantined, stats, counts, success and quarantined.is_empty())


def validate_batch(
    spark: "SparkSession",
    batch: list[Loaded],
    validate_local: Any,
    validate_spark: Any,
) -> dict[str, FileResult]:
    """``verdicts.validate_batch`` with the Spark-read files of ``batch`` read and validated in
    Spark (``validate_spark(frame)``) and the locally loaded ones by ``validate_local(frame)``;
    a Spark-read file that is not UTF-8 is loaded locally (and found unreadable) first."""
    from pyspark.sql import functions as F

    from prodassoc_core.data.verdicts import validate_batch as local_batch

    on_spark = [b for b in batch if spark_read(b)]
    # read once (checkpointed): the UTF-8 check, GE's metric jobs and the collect all reuse it
    frame = read(spark, on_spark, c.TRANSACTIONS).localCheckpoint() if on_spark else None
    if frame is not None:
        bad = not_utf8_files(frame, c.TRANSACTIONS)
        if bad:
            batch = [load(b.file, c.TRANSACTIONS, b.sha) if b.file.rel in bad else b for b in batch]
            on_spark = [b for b in batch if spark_read(b)]
            frame = frame.filter(~F.col(c.SOURCE_FILE).isin(sorted(bad))) if on_spark else None
    results = local_batch([b for b in batch if not spark_read(b)], validate_local)
    if on_spark:
        n_rows = sum(b.rows for b in on_spark)
        logger.info("validate on spark: %d rows from %d files", n_rows, len(on_spark))
        outcome = validate_spark(frame)
        check_validated_rows(outcome, n_rows)
        accepted = outcome.accepted.partition_by(c.SOURCE_FILE, as_dict=True, maintain_order=True)
        quarantined = outcome.quarantined.partition_by(c.SOURCE_FILE, as_dict=True, maintain_order=True)
        empty_q = pl.DataFrame(schema={c.SOURCE_ROW: pl.Int64, c.REASON: pl.String})
        for b in on_spark:
            q = quarantined.get((b.file.rel,), empty_q)
            results[b.file.rel] = FileResult(b, accepted.get((b.file.rel,)), q.select(c.SOURCE_ROW, c.REASON))
    return {b.file.rel: results[b.file.rel] for b in batch}


def transactions_validator(spark: "SparkSession", catalog_ids: pl.Series, cfg: ValidationConfig, as_of: "date",
                           gx: GxSuites, run_name: str):
    """``ingest``'s batch validation for the spark engine: ``batch -> {file: FileResult}``."""

    def run(batch: list[Loaded]) -> dict[str, FileResult]:
        return validate_batch(
            spark, batch,
            lambda frame: validate_transactions(frame, catalog_ids, cfg, as_of=as_of, gx=gx, run_name=run_name),
            lambda frame: validate_transactions_spark(frame, catalog_ids, cfg, as_of=as_of, gx=gx, run_name=run_name),
        )

    return run

