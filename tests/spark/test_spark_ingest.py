"""Ingestion with ``engine: spark`` (data/spark_ingest.py) writes what the local engine writes:
on the bad-input fixtures of tests/data (test_reliability_bad_input's transaction cases, the broken
rows of test_ingest and test_validation), the same manifest rows (status, counts, detail), the
same quarantine rows and reasons, the same staged files, the same error.

Every case lands in one landing zone (its own file, most in one day), so each engine ingests
once: one Great Expectations run on Spark, not one per case.
"""

from __future__ import annotations

import hashlib
import math
import sys
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))

from test_ingest import LENIENT, Zone, good  # noqa: E402
from test_reliability_bad_input import CASES, PRODUCTS  # noqa: E402

from prodassoc_core.data import contracts as c  # noqa: E402
from prodassoc_core.data.ingest import IngestError  # noqa: E402
from prodassoc_core.data.validation import gx_suites  # noqa: E402

pytestmark = pytest.mark.spark

TRANSACTION_CASES = [name for name in CASES if "catalog" not in name]
ROWS_DAY = "2024-01-03"
TS = datetime(2024, 1, 3, 9)


def broken_rows_wrong_types() -> pl.DataFrame:
    """test_ingest's broken rows: quantities as strings (the local loader casts them)."""
    return pl.DataFrame({
        c.ORDER_ID: ["ok1", "ok2", None, "", "k5", "k6", "k7", "k8", "k9", "k10"],
        c.PRODUCT_ID: ["A", "B", "A", "A", None, "", "ZZ", "A", "A", "A"],
        c.QUANTITY: ["1", "2", "1", "1", "1", "1", "1", "0", "-3", "abc"],
        c.UNIT_PRICE: [1.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, -2.0, 1.0],
        c.CUSTOMER_ID: ["c"] * 10,
        c.ORDERED_AT: [TS] * 9 + [datetime(2024, 1, 4, 9)],
        "extra": list(range(10)),
    })


def broken_rows_contract_types() -> pl.DataFrame:
    """test_validation's broken rows in the contract's types (Spark reads and validates them),
    and a NaN price (missing to the local route's pandas, so valid)."""
    rows = [
        ("ok1", "A", 2, 1.5, TS), ("ok2", "B", -1, None, TS), (None, "A", 1, 1.0, TS), ("", "A", 1, 1.0, TS),
        ("nulprod", None, 1, 1.0, TS), ("blankprod", " ", 1, 1.0, TS), ("unknown", "ZZ", 1, 1.0, TS),
        ("zero", "A", 0, 1.0, TS), ("huge", "A", 1001, 1.0, TS), ("negprice", "A", 1, -0.5, TS),
        ("dearprice", "A", 1, 500.01, TS), ("nextday", "A", 1, 1.0, datetime(2024, 1, 4, 0, 0)),
        ("nots", "A", 1, 1.0, None), ("noqty", "A", None, 1.0, TS), ("nanprice", "A", 1, math.nan, TS),
        ("many", "A", 1, 1.0, TS),
    ]
    frame = pl.DataFrame(rows, schema={c.ORDER_ID: pl.String, c.PRODUCT_ID: pl.String, c.QUANTITY: pl.Int64,
                                       c.UNIT_PRICE: pl.Float64, c.ORDERED_AT: pl.Datetime("us")}, orient="row")
    return frame.with_columns(pl.lit("cust").alias(c.CUSTOMER_ID))


def land_everything(zone: Zone) -> None:
    zone.catalog(PRODUCTS)
    zone.day("2024-01-01", good("2024-01-01"))
    for name in TRANSACTION_CASES:
        CASES[name].land(zone)
    zone.day(ROWS_DAY, broken_rows_wrong_types(), name="wrong_types.parquet")
    zone.day(ROWS_DAY, broken_rows_contract_types(), name="contract_types.parquet")
    zone.day(ROWS_DAY, good(ROWS_DAY, n=20, prefix="g"), name="good.parquet")
    lean = good(ROWS_DAY, n=4, prefix="lean").drop(c.UNIT_PRICE, c.CUSTOMER_ID)  # optional columns absent
    zone.day(ROWS_DAY, lean, name="lean.parquet")


def ingest(zone: Zone, **kw):
    with pytest.raises(IngestError) as err:
        zone.ingest(cfg=LENIENT, **kw)
    return str(err.value).replace(str(zone.root), "<zone>"), err.value.report


def outputs(zone: Zone) -> dict[str, pl.DataFrame | str]:
    """Every staged and quarantine file: staged ones by sha256 of their bytes, quarantine ones as frames."""
    out: dict[str, pl.DataFrame | str] = {}
    for p in sorted(zone.staging.rglob("*.parquet")):
        out[p.relative_to(zone.root).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    for p in sorted(zone.quarantine.rglob("*.parquet")):
        out[p.relative_to(zone.root).as_posix()] = pl.read_parquet(p)
    return out


@pytest.fixture(scope="module")
def gx_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gx")
    gx_suites(path)
    return path


def test_spark_ingestion_writes_the_local_engines_outputs(spark, tmp_path, gx_dir):
    zones = {engine: Zone(tmp_path / engine, gx_dir) for engine in ("local", "spark")}
    for zone in zones.values():
        land_everything(zone)
    local_error, local_report = ingest(zones["local"])
    spark_error, spark_report = ingest(zones["spark"], spark=spark)

    assert spark_error == local_error
    for report in (local_report, spark_report):
        assert report.rows_read == report.rows_accepted + report.rows_quarantined
    assert (spark_report.rows_read, spark_report.rows_accepted, spark_report.rows_quarantined) == (
        local_report.rows_read, local_report.rows_accepted, local_report.rows_quarantined)
    assert spark_report.partitions == local_report.partitions

    local_manifest, spark_manifest = zones["local"].manifest_rows(), zones["spark"].manifest_rows()
    assert spark_manifest == local_manifest
    statuses = {row["status"] for row in local_manifest.values()}
    assert {"ingested", "failed", "unreadable"} <= statuses
    assert sum(row["rows_quarantined"] for row in local_manifest.values()) > 20

    local_out, spark_out = outputs(zones["local"]), outputs(zones["spark"])
    assert sorted(spark_out) == sorted(local_out)
    for path, expected in local_out.items():
        if isinstance(expected, str):
            assert spark_out[path] == expected, f"staged file {path} differs"
        else:
            assert spark_out[path].equals(expected), path
    assert any("/lean-" in path for path in spark_out)  # staged, its price and customer missing
    rows = pl.read_parquet(next((zones["spark"].quarantine / "transactions" / f"dt={ROWS_DAY}").glob(
        "contract_types-*.parquet")))
    reasons = dict(zip(rows[c.ORDER_ID].fill_null("<null>").to_list(), rows[c.REASON].to_list()))
    assert reasons["blankprod"] == "not_empty:product_id; in_catalog:product_id"
    assert reasons["nextday"] == "in_partition:ordered_at; not_future:ordered_at"
    assert "nanprice" not in reasons and "ok1" not in reasons
