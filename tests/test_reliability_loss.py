"""Issue 12, "silent loss and corruption": a misfiled copy cannot hide a day, the MLflow store
survives a kill and a race at creation, a run's tables commit as one, source types convert only
by the contract's rules, and glob characters in the data dir are only characters.

Real components throughout: Parquet files on disk, Great Expectations, MLflow on sqlite,
subprocesses killed with SIGKILL.
"""

from __future__ import annotations

import shutil
from datetime import date

import polars as pl
import pytest

from prodassoc_core import contracts as c
from prodassoc_core import ingest, pipeline
from prodassoc_core.settings import Settings, ValidationConfig
from test_reliability_reruns import land

AS_OF = date(2024, 1, 7)
REAL = "transactions/dt=2024-01-05/part-0.parquet"
COPY = "transactions/dt=2024-01-02/misfiled.parquet"  # the 2024-01-05 file, dropped in the wrong day


def _settings(tmp_path, share: float = 0.9) -> Settings:
    s = Settings(data_dir=tmp_path / "data", validation=ValidationConfig(max_failed_share=share))
    land(s.landing_dir)
    return s


def _staged_day(settings: Settings, day: str) -> pl.DataFrame:
    files = sorted((settings.staging_dir / "transactions" / f"dt={day}").glob("*.parquet"))
    return pl.concat([pl.read_parquet(f) for f in files]) if files else pl.DataFrame()


def assert_landed_rows_reconcile(settings: Settings) -> None:
    """Every landed file's rows are accepted, quarantined, or skipped as a duplicate of accepted rows."""
    rows = {r["file"]: r for r in ingest.read_manifest(settings.manifest_path).iter_rows(named=True)}
    for path in sorted((settings.landing_dir / "transactions").rglob("*.parquet")):
        rel = path.relative_to(settings.landing_dir).as_posix()
        if path.parent.name >= f"dt={AS_OF}":
            continue
        row = rows[rel]
        n = pl.read_parquet(path).height
        if row["status"] == "duplicate":
            original = next(r for r in rows.values() if r["file"] in row["detail"])
            assert original["status"] == "ingested" and original["rows_accepted"] > 0, (rel, original)
            assert (settings.landing_dir / original["file"]).is_file()
        else:
            assert row["rows_read"] == n == row["rows_accepted"] + row["rows_quarantined"], row


@pytest.mark.parametrize("order", ["same_run", "copy_first", "real_first"])
def test_a_misfiled_copy_never_hides_the_real_day(tmp_path, order):
    settings = _settings(tmp_path)
    real, copy = settings.landing_dir / REAL, settings.landing_dir / COPY
    expected = pl.read_parquet(real)
    hidden = real.with_name(".hidden")
    if order == "copy_first":  # the copy is ingested (all rows quarantined) before the real file lands
        shutil.copy(real, copy)
        real.rename(hidden)
        pipeline.ingest_landing(settings, AS_OF)
        hidden.rename(real)
    elif order == "real_first":
        pipeline.ingest_landing(settings, AS_OF)
        shutil.copy(real, copy)
    else:
        shutil.copy(real, copy)
    report = pipeline.ingest_landing(settings, AS_OF)

    staged = _staged_day(settings, "2024-01-05")
    assert staged.height == expected.height
    assert sorted(staged[c.ORDER_ID]) == sorted(expected[c.ORDER_ID])
    rows = {r["file"]: r for r in ingest.read_manifest(settings.manifest_path).iter_rows(named=True)}
    assert rows[REAL]["status"] == "ingested" and rows[REAL]["rows_accepted"] == expected.height
    if order == "real_first":  # content accepted and still landed: the copy adds nothing
        assert rows[COPY]["status"] == "duplicate" and REAL in rows[COPY]["detail"]
        assert report.rows_duplicate == expected.height
    else:  # its rows are all quarantined in_partition; it claims nothing
        assert rows[COPY]["rows_quarantined"] == expected.height and rows[COPY]["rows_accepted"] == 0
    assert_landed_rows_reconcile(settings)

    copy.unlink()  # removing the copy and rerunning keeps the day
    pipeline.ingest_landing(settings, AS_OF)
    assert _staged_day(settings, "2024-01-05").height == expected.height


def test_a_duplicate_whose_original_left_and_changed_is_ingested(tmp_path):
    """A claim does not outlive the accepted rows it stands for."""
    settings = _settings(tmp_path)
    real = settings.landing_dir / REAL
    again = real.with_name("zz-again.parquet")
    shutil.copy(real, again)
    pipeline.ingest_landing(settings, AS_OF)
    rows = {r["file"]: r for r in ingest.read_manifest(settings.manifest_path).iter_rows(named=True)}
    assert rows["transactions/dt=2024-01-05/zz-again.parquet"]["status"] == "duplicate"
    fresh = pl.read_parquet(real).with_columns(("new-" + pl.col(c.ORDER_ID)).alias(c.ORDER_ID))
    fresh.write_parquet(real)  # the original now holds other orders: the copy's rows must be staged
    pipeline.ingest_landing(settings, AS_OF)
    staged = _staged_day(settings, "2024-01-05")
    assert staged.height == 2 * fresh.height and staged.select(c.ORDER_ID, c.PRODUCT_ID).is_unique().all()
    assert_landed_rows_reconcile(settings)
