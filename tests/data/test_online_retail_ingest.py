"""Both real Online Retail files through import and validated ingestion: every row is accounted for."""

from __future__ import annotations

from datetime import date

import polars as pl
import pytest

from prodassoc_core.data import importers, ingest
from prodassoc_core.ops.settings import Settings
from prodassoc_core.pipeline import stages


@pytest.mark.shared
@pytest.mark.slow
def test_full_online_retail_counts_reconcile(shared_data, tmp_path):
    folder = shared_data / "online_retail"
    settings = Settings(data_dir=tmp_path)
    summary = importers.import_source(
        kind="online_retail",
        inputs=[folder / "online_retail_ii_2009_2010.parquet", folder / "online_retail_2010_2011.parquet"],
        landing_dir=settings.landing_dir,
    )
    report = stages.ingest_landing(settings, as_of=date(2011, 12, 10))
    manifest = ingest.read_manifest(settings.manifest_path)
    tx = manifest.filter(pl.col("table") == "transactions")
    assert tx["rows_read"].sum() == summary.rows
    assert (tx["rows_read"] == tx["rows_accepted"] + tx["rows_quarantined"]).all()
    staged = ingest.read_staged_transactions(settings.staging_dir, date(2009, 1, 1), date(2012, 1, 1))
    assert staged.select(pl.len()).collect().item() == tx["rows_accepted"].sum()
    quarantined = pl.read_parquet(settings.quarantine_dir / "transactions" / "**" / "*.parquet")
    assert quarantined.height == tx["rows_quarantined"].sum() == report.rows_quarantined
    assert quarantined["_reason"].str.len_chars().min() > 0
    # Online Retail's quarantined lines are its negative-price bad-debt adjustments
    assert set(quarantined["_reason"]) == {"range:unit_price"}
