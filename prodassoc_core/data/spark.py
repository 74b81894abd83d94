"""The Spark side of the data layer (``engine: spark``): the session, staged lines, baskets.

The session is got or created once per process (``session``): under ``spark-submit``, on
Databricks or in a notebook the active session is used as it is; otherwise one is started with
``SparkConfig`` (master, driver memory, shuffle partitions, no UI, quiet logs). pyspark is
imported here and in ``prodassoc_core.mining.spark_mining`` only, so the local engine never
needs it (nor Java).

Baskets follow exactly the rules of ``prodassoc_core.data.baskets`` (its module doc). The one
rule written as a regular expression (``non_product_pattern``) is decided on the driver, with
the same polars expression, for the window's distinct product ids (a catalog, not the lines):
Java's and Rust's regex dialects differ at the edges (``$`` before a final newline).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import threading
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from prodassoc_core.data import baskets as b
from prodassoc_core.data.baskets import ITEMS, is_non_product
from prodassoc_core.data.contracts import (
    ORDER_ID, ORDERED_AT, PRODUCT_ID, QUANTITY, STORE_ID, TRANSACTIONS, UNIT_PRICE,
)
from prodassoc_core.data.validation import quiet_pyspark_pandas_warning
from prodassoc_core.data.warehouse import storage_error
from prodassoc_core.ops import BasketConfig, SparkConfig

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger("prodassoc.spark")
_LOCK = threading.Lock()
_PARTITION = re.compile(r"dt=(\d{4}-\d{2}-\d{2})")


# ``SparkConfig.small_data``: a short local run spends most of its CPU in the JVM's JIT compilers
# and per-job planning, not on data. C1 only (no C2) and the serial GC halve the driver JVM's CPU
# for a test session; without AQE, a lazily checkpointed frame is materialised by the job that
# reads it rather than by extra jobs at planning time. Long jobs want C2: leave it off for them.
SMALL_DATA_CONF = {
    "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
    "spark.sql.adaptive.enabled": "false",
}


NO_PYSPARK = "engine 'spark' needs pyspark: pip install 'prodassoc[spark]' (and Java 17)"


class SparkUnavailableError(RuntimeError):
    """``engine: spark`` without pyspark or Java, or a Spark session that did not start."""


def check_spark_available() -> None:
    """SparkUnavailableError unless pyspark is installed and Java can be found (what this process
    needs to start a session): cheap, so a command can check before it starts anything else."""
    import importlib.util

    if importlib.util.find_spec("pyspark") is None:
        raise SparkUnavailableError(NO_PYSPARK)
    if os.environ.get("PYSPARK_GATEWAY_PORT"):  # spark-submit, Databricks: their JVM is already running
        return
    java_home = os.environ.get("JAVA_HOME")
    if java_home:  # what Spark's launcher runs: $JAVA_HOME/bin/java, else java on PATH
        if not os.access(Path(java_home) / "bin" / "java", os.X_OK):
            raise SparkUnavailableError(f"engine 'spark' needs Java 17: JAVA_HOME={java_home} has no bin/java")
    elif shutil.which("java") is None:
        raise SparkUnavailableError("engine 'spark' needs Java 17 (java is not on PATH and JAVA_HOME is unset)")


def _start_error(exc: BaseException) -> str:
    """The line of a failed session start that says why: the Java exception's, else the first."""
    lines = [line.strip().removeprefix(": ") for line in str(exc).splitlines() if line.strip()]
    java = [line for line in lines if re.match(r"(java|org|scala)\.[\w.$]+(Exception|Error)\b", line)]
    return (java or lines or [type(exc).__name__])[0].rstrip(".")


def session(cfg: SparkConfig) -> "SparkSession":
    """The process's Spark session: the active one when there is one (a notebook, Databricks),
    the one spark-submit configured (its master and conf, not ``cfg``'s) when launched by
    spark-submit, else a new one from ``cfg``. Thread-safe: the nightly's side-by-side stages share it."""
    with _LOCK:
        quiet_pyspark_pandas_warning()
        try:
            from pyspark.sql import SparkSession
        except ImportError as exc:
            raise SparkUnavailableError(NO_PYSPARK) from exc
        active = SparkSession.getActiveSession()
        if active is not None:
            return active
        if os.environ.get("PYSPARK_GATEWAY_PORT"):  # started by spark-submit: its --master and --conf win
            spark = SparkSession.builder.appName(cfg.app_name).getOrCreate()
            log.info("spark %s session of spark-submit on %s", spark.version, spark.sparkContext.master)
            return spark
        check_spark_available()
        conf = {
            "spark.driver.memory": cfg.driver_memory,
            "spark.sql.shuffle.partitions": str(cfg.shuffle_partitions),
            "spark.ui.enabled": str(cfg.ui).lower(),
            "spark.ui.showConsoleProgress": "false",
            "spark.sql.session.timeZone": "UTC",  # ordered_at is a local wall-clock time: never shifted
            "spark.sql.execution.arrow.pyspark.enabled": "true",
            "spark.log.level": cfg.log_level,
            **(SMALL_DATA_CONF if cfg.small_data else {}),
            **cfg.conf,
        }
        builder = SparkSession.builder.master(cfg.master).appName(cfg.app_name)
        for key, value in conf.items():
            builder = builder.config(key, value)
        try:
            spark = builder.getOrCreate()
        except Exception as exc:  # noqa: BLE001 - py4j's and pyspark's errors: one message naming the master
            check = ("that Java 17 runs and the driver's settings (spark.driver_memory, spark.conf)"
                     if cfg.master.startswith("local") else
                     "that the master (setting spark.master) is up and reachable from here, and that Java 17 runs")
            raise SparkUnavailableError(
                f"Spark did not start on master {cfg.master!r}: {_start_error(exc)}; check {check} "
                "(Java's and Spark's own messages above say more)"
            ) from exc
        spark.sparkContext.setLogLevel(cfg.log_level)
        log.info("spark %s session on %s", spark.version, spark.sparkContext.master)
        return spark


def staged_transaction_files(staging_dir: Path, start: date, end: date) -> list[str]:
    """The staged transaction files with partition date in [start, end): the files that
    ``ingest.read_staged_transactions`` reads (``dt=YYYY-MM-DD`` directories, visible Parquet files)."""
    root = Path(staging_dir) / TRANSACTIONS.name
    if not root.is_dir():
        return []
    files = []
    for d in sorted(root.glob("dt=*")):
        m = _PARTITION.fullmatch(d.name)
        if not (m and d.is_dir()):
            continue
        try:
            day = date.fromisoformat(m.group(1))
        except ValueError:
            continue
        if start <= day < end:
            files += sorted(str(p.resolve()) for p in d.glob("*.parquet")
                            if p.is_file() and not p.name.startswith((".", "_")))
    return files


def read_staged_transactions(spark: "SparkSession", staging_dir: Path, start: date, end: date) -> "DataFrame | None":
    """Accepted transaction lines with partition date in [start, end) as a Spark frame of the
    TRANSACTIONS columns; None when no partition is staged in the window."""
    files = staged_transaction_files(staging_dir, start, end)
    if not files:
        return None
    from pyspark.sql import functions as F

    lines = spark.read.parquet(*files)
    return lines.select(*[F.col(c) for c in TRANSACTIONS.schema.names if c in lines.columns])


def non_product_ids(product_ids: list[str], cfg: BasketConfig) -> list[str]:
    """The ids among ``product_ids`` that basket rule 4 drops (baskets.is_non_product, polars)."""
    frame = pl.DataFrame({PRODUCT_ID: product_ids}, schema={PRODUCT_ID: pl.String})
    return frame.filter(is_non_product(cfg))[PRODUCT_ID].to_list()


def line_rule(lines: "DataFrame", cfg: BasketConfig):
    """``data.baskets.dropped_by`` as a Spark column: the first basket rule a line fails, or
    ``kept``. Rule 4's ids are decided on the driver by the polars rule (one job for the distinct ids)."""
    from pyspark.sql import functions as F

    ids = [r[0] for r in lines.select(PRODUCT_ID).distinct().collect()]
    checks = [(F.col(ORDER_ID).startswith(cfg.cancellation_prefix), b.CANCELLED)] if cfg.drop_cancellations else []
    checks.append((F.coalesce(F.col(QUANTITY), F.lit(0)) <= 0, b.RETURN))
    if cfg.require_positive_price:
        checks.append((F.col(UNIT_PRICE) <= 0, b.FREE))  # a missing price is kept
    checks.append((F.col(PRODUCT_ID).isin(non_product_ids(ids, cfg)), b.NON_PRODUCT))
    rule = F.lit(b.KEPT)
    for check, name in reversed(checks):  # the first rule a line fails names it
        rule = F.when(check, F.lit(name)).otherwise(rule)
    return rule


def baskets(lines: "DataFrame", cfg: BasketConfig, rule=None) -> "DataFrame":
    """One row per order (order_id, ordered_at: its first line, items: sorted, unique), by the
    rules of ``data.baskets``; sorted by (ordered_at, order_id). ``rule``: ``line_rule``'s column,
    when the caller has it already."""
    from pyspark.sql import functions as F

    kept = lines.filter((line_rule(lines, cfg) if rule is None else rule) == b.KEPT)
    return (
        kept.groupBy(ORDER_ID)
        .agg(F.min(ORDERED_AT).alias(ORDERED_AT), F.array_sort(F.collect_set(PRODUCT_ID)).alias(ITEMS))
        .orderBy(ORDERED_AT, ORDER_ID)
        .select(ORDER_ID, ORDERED_AT, ITEMS)
    )


def line_account(lines: "DataFrame", cfg: BasketConfig, rule=None) -> pl.DataFrame:
    """``data.baskets.line_account`` of Spark lines (one job; ``rule`` as for ``baskets``)."""
    from pyspark.sql import functions as F

    rule = line_rule(lines, cfg) if rule is None else rule
    counted = (
        lines.select(rule.alias(b.RULE), F.when(rule == b.NON_PRODUCT, F.col(PRODUCT_ID)).alias(PRODUCT_ID))
        .groupBy(b.RULE, PRODUCT_ID).agg(F.count(F.lit(1)).alias(b.LINES))
    )
    frame = pl.from_arrow(counted.toArrow()).cast({b.RULE: pl.String, PRODUCT_ID: pl.String, b.LINES: pl.Int64})
    return b.sort_account(frame.lazy()).collect()


def split_orders(lines: "DataFrame") -> tuple[pl.DataFrame, int]:
    """``data.baskets.split_orders`` of Spark lines, and the number of orders (two jobs)."""
    from pyspark.sql import functions as F

    per_order = lines.groupBy(ORDER_ID).agg(F.countDistinct(F.to_date(ORDERED_AT)).alias("days"),
                                            F.countDistinct(STORE_ID).alias("stores"))
    split = per_order.filter((F.col("days") > 1) | (F.col("stores") > 1))
    frame = pl.from_arrow(split.toArrow()).cast({ORDER_ID: pl.String, "days": pl.Int64, "stores": pl.Int64})
    frame = frame.sort(["days", "stores", ORDER_ID], descending=[True, True, False])
    return frame, per_order.count()


def write_parquet(frame: "DataFrame", out: Path) -> int:
    """Write ``frame`` as a Parquet dataset directory at ``out`` (replacing what is there, file or
    directory, by a rename once the write is complete); returns its rows."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    old = out.with_name(f".{out.name}.{os.getpid()}.old")
    for p in (tmp, old):
        remove(p)
    try:
        frame.write.mode("overwrite").parquet(str(tmp.resolve()))
    except Exception as exc:
        code = spark_storage_errno(exc)
        if code is None:
            raise
        remove(tmp)  # the part files written so far
        raise storage_error(OSError(code, os.strerror(code)), out, None) from exc
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    remove(old)
    import pyarrow.dataset as ds  # the rows from the part files' footers: no Spark job

    return ds.dataset(str(out), format="parquet").count_rows()


# what Java says where the C library's errno would say ENOSPC, EDQUOT, EROFS (as in IOException messages)
_JAVA_STORAGE_ERRORS = {"No space left on device": errno.ENOSPC, "Disk quota exceeded": errno.EDQUOT,
                        "Read-only file system": errno.EROFS}


def spark_storage_errno(exc: BaseException) -> int | None:
    """The errno of a Spark job's failure to write for lack of space or on a read-only file system
    (a py4j or pyspark error whose Java cause says so: the data directory, or Spark's own local
    directory for shuffles and checkpoints), else None."""
    if type(exc).__module__.split(".")[0] not in ("py4j", "pyspark"):
        return None
    text = str(exc)
    return next((code for message, code in _JAVA_STORAGE_ERRORS.items() if message in text), None)


def remove(path: Path) -> None:
    """Remove a file or a directory tree; nothing when absent."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def read_parquet(spark: "SparkSession", path: Path) -> "DataFrame":
    """A Parquet file or dataset directory (``write_parquet``'s) as a Spark frame."""
    return spark.read.parquet(str(Path(path).resolve()))
