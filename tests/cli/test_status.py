"""`prodassoc status`: what a data directory holds, read from its files (no Prefect, no MLflow)."""

from __future__ import annotations

import json
from datetime import date, datetime

import polars as pl

from flows.cli import main
from prodassoc_core.data import warehouse
from prodassoc_core.data.contracts import BUNDLES
from prodassoc_core.ops.settings import Settings
from prodassoc_core.pipeline import stages

from conftest import land


def _status(settings: Settings, capsys) -> list[str]:
    assert main(["--data-dir", str(settings.data_dir), "status"]) == 0
    return capsys.readouterr().out.splitlines()


def test_status_of_landed_published_and_damaged_dates(tmp_path, capsys):
    settings = Settings(data_dir=tmp_path / "data")
    land(settings.landing_dir)  # 2024-01-01 .. 2024-01-06: 6 files and a catalog
    bad = settings.landing_dir / "transactions" / "dt=2024-01-02" / "till-7.parquet"
    pl.DataFrame({"order_id": ["t1", "t2"], "product_id": ["A", "Z"], "quantity": [1, 1], "unit_price": [1.0, 1.0],
                  "customer_id": ["c", "c"], "ordered_at": [datetime(2024, 1, 2, 10)] * 2},
                 schema_overrides={"ordered_at": pl.Datetime("us")}).write_parquet(bad)  # Z: not in the catalog
    lines = _status(settings, capsys)
    assert lines[1:4] == ["landed: transactions of 6 landed days, 2024-01-01 .. 2024-01-06", "manifest: nothing ingested yet",
                          "published: nothing yet (prodassoc run --as-of YYYY-MM-DD)"]

    for day in (date(2024, 1, 3), date(2024, 1, 6), date(2024, 1, 7)):
        result = stages.run_nightly(settings, day)
    rows = {p.table: p.rows for p in result.published}
    # a published file deleted by hand: that run is no longer committed
    (warehouse.partition_dir(settings.warehouse_dir, BUNDLES.name, date(2024, 1, 6)) / warehouse.DATA_FILE).unlink()
    lines = _status(settings, capsys)
    assert lines[0] == f"data dir: {settings.data_dir}"
    landed = sum(pl.read_parquet(p).height for p in settings.landing_dir.rglob("*.parquet"))  # catalog too
    assert lines[2] == f"manifest: 8 files (8 ingested); rows {landed} read = {landed - 1} accepted + 1 quarantined"
    assert lines[3] == "published: 2 run days, 2024-01-03 .. 2024-01-07; 3 day(s) without a run: 2024-01-04, " \
                       "2024-01-05, 2024-01-06"
    assert lines[4] == "newest run 2024-01-07: " + ", ".join(f"{t} {n:,} rows" for t, n in sorted(rows.items()))
    assert lines[5] == f"served on 2024-01-07: {result.served['served']}"
    assert lines[6] == ("damaged: run 2024-01-06: bundles missing or changed since it committed (not in the views; "
                        "rerun it: prodassoc run --as-of 2024-01-06)")
    assert lines[7].startswith("kept: every published date (keep_published_days); run baskets of the newest 7 dates")

    # the same, as JSON for monitoring scripts
    assert main(["--data-dir", str(settings.data_dir), "status", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["published"] == ["2024-01-03", "2024-01-07"]
    assert found["days_without_a_run"] == ["2024-01-04", "2024-01-05", "2024-01-06"]
    assert found["newest"]["run_date"] == "2024-01-07" and found["newest"]["tables"] == rows
    assert found["newest"]["served"]["segments"] == result.served["segments"]
    assert found["damaged"] == {"2024-01-06": ["bundles"]}
    assert found["manifest"] == {"files": {"ingested": 8}, "rows": {"read": landed, "accepted": landed - 1, "quarantined": 1}}
    assert found["kept"]["keep_published_days"] is None and len(found["landed_days"]) == 6


def test_status_without_a_data_dir_says_so(tmp_path, capsys):
    assert main(["--data-dir", str(tmp_path / "nowhere"), "status"]) == 5
    assert "no data directory at" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()


def test_status_of_an_unreadable_manifest_says_so_and_what_the_next_run_does(tmp_path, capsys):
    settings = Settings(data_dir=tmp_path / "data")
    land(settings.landing_dir)
    stages.run_nightly(settings, date(2024, 1, 3))
    settings.manifest_path.write_bytes(b"not parquet")
    lines = _status(settings, capsys)
    assert lines[2].startswith(f"manifest: unreadable: manifest {settings.manifest_path} is unreadable")
    assert lines[2].endswith("the next run moves it aside and rebuilds it by validating every landed file again")
    assert lines[3] == "published: 1 run day, 2024-01-03"  # the rest of the status still reads
    assert main(["--data-dir", str(settings.data_dir), "status", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert "is unreadable" in found["manifest"]["error"] and found["published"] == ["2024-01-03"]

    plan = stages.run_folder(settings, date(2024, 1, 3)) / stages.SERVING_FILE
    plan.write_text('{"trunc')  # the newest run's serving plan, damaged
    lines = _status(settings, capsys)
    assert lines[5] == (f"served on 2024-01-03: unknown: {plan} is unreadable (JSONDecodeError: Unterminated string "
                        f"starting at: line 1 column 2 (char 1)); a rerun of that date rewrites it")
