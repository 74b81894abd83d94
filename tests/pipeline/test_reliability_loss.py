"""Issue 12, "silent loss and corruption": a misfiled copy cannot hide a day, the MLflow store
survives a kill and a race at creation, a run's tables commit as one, source types convert only
by the contract's rules, and glob characters in the data dir are only characters.

Real components throughout: Parquet files on disk, Great Expectations, MLflow on sqlite,
subprocesses killed with SIGKILL.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import date

import duckdb
import polars as pl
import pytest

from prodassoc_core.data import contracts as c
from prodassoc_core.data import ingest, warehouse
from prodassoc_core.ops.settings import Settings, ValidationConfig
from prodassoc_core.pipeline import stages

from conftest import REPO, land

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
        stages.ingest_landing(settings, AS_OF)
        hidden.rename(real)
    elif order == "real_first":
        stages.ingest_landing(settings, AS_OF)
        shutil.copy(real, copy)
    else:
        shutil.copy(real, copy)
    report = stages.ingest_landing(settings, AS_OF)

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
    stages.ingest_landing(settings, AS_OF)
    assert _staged_day(settings, "2024-01-05").height == expected.height


def test_a_duplicate_whose_original_left_and_changed_is_ingested(tmp_path):
    """A claim does not outlive the accepted rows it stands for."""
    settings = _settings(tmp_path)
    real = settings.landing_dir / REAL
    again = real.with_name("zz-again.parquet")
    shutil.copy(real, again)
    stages.ingest_landing(settings, AS_OF)
    rows = {r["file"]: r for r in ingest.read_manifest(settings.manifest_path).iter_rows(named=True)}
    assert rows["transactions/dt=2024-01-05/zz-again.parquet"]["status"] == "duplicate"
    fresh = pl.read_parquet(real).with_columns(("new-" + pl.col(c.ORDER_ID)).alias(c.ORDER_ID))
    fresh.write_parquet(real)  # the original now holds other orders: the copy's rows must be staged
    stages.ingest_landing(settings, AS_OF)
    staged = _staged_day(settings, "2024-01-05")
    assert staged.height == 2 * fresh.height and staged.select(c.ORDER_ID, c.PRODUCT_ID).is_unique().all()
    assert_landed_rows_reconcile(settings)


# --- 3. a run's tables commit as one ------------------------------------------------------------



def _latest_dates(settings: Settings) -> dict[str, list]:
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views()").fetchall()}
        return {
            t: sorted(str(r[0]) for r in con.execute(f"SELECT DISTINCT run_date FROM {t}").fetchall())
            for t in ("association_rules", "product_associations", "latest_association_rules",
                      "latest_product_associations") if t in views
        }


def test_a_run_stopped_between_tables_is_not_published_and_is_redone(tmp_path, monkeypatch):
    settings = _settings(tmp_path, share=0.2)
    stages.run_nightly(settings, date(2024, 1, 6))
    before = _latest_dates(settings)
    monkeypatch.setenv(warehouse.FAULT_ENV, "publish.between_tables=raise")  # after the first table
    with pytest.raises(warehouse.InjectedFault):
        stages.run_nightly(settings, AS_OF)
    assert warehouse.is_published(settings.warehouse_dir, "association_rules", AS_OF)  # the file is there,
    assert not stages.is_published(settings, AS_OF)  # but the run is not committed
    assert _latest_dates(settings) == before  # views and latest_* show only committed runs
    assert stages.backfill_dates(settings, date(2024, 1, 6), AS_OF) == ([AS_OF], [date(2024, 1, 6)])

    monkeypatch.delenv(warehouse.FAULT_ENV)
    ran = stages.backfill(settings, date(2024, 1, 6), AS_OF)  # redoes the partial date
    assert [r.as_of for r in ran.ran] == [AS_OF] and stages.is_published(settings, AS_OF)
    assert _latest_dates(settings)["latest_product_associations"] == [str(AS_OF)]


STORAGE_CHILD = r"""
import json, subprocess, sys
from datetime import date
from pathlib import Path
sys.path[:0] = [sys.argv[3], str(Path(sys.argv[3]).parent)]  # the test modules and their conftest
from prodassoc_core.pipeline import stages
from prodassoc_core.data import warehouse
from prodassoc_core.data.contracts import ASSOCIATION_RULES, PRODUCT_ASSOCIATIONS
from prodassoc_core.ops.settings import Settings
from test_reliability_faults import synthetic
import pyarrow.parquet as pq

scenario, data = sys.argv[1], Path(sys.argv[2])
settings = Settings(data_dir=data)
wh = settings.warehouse_dir
wh.mkdir(parents=True)
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(wh)], check=True)

def staged(version, n_rules, n_pairs):
    out = {}
    for contract, n in ((ASSOCIATION_RULES, n_rules), (PRODUCT_ASSOCIATIONS, n_pairs)):
        path = data / "staged" / version / f"{contract.name}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(synthetic(contract, n, version), path)
        out[contract.name] = path
    return out

def latest():
    with stages.open_views(settings) as con:
        return sorted(str(r[0]) for r in con.execute("SELECT DISTINCT run_date FROM latest_association_rules").fetchall())

d1, d2 = date(2024, 3, 1), date(2024, 3, 2)
stages.publish(settings, d1, staged("v1", 10, 10))
if scenario == "disk_full":
    second = staged("v2", 10, 50_000)  # product_associations: ~6 MB, more than the 2 MB file system
else:
    second = staged("v2", 10, 10)
    ro = wh / PRODUCT_ASSOCIATIONS.name
    subprocess.run(["mount", "--bind", str(ro), str(ro)], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
out = {}
try:
    stages.publish(settings, d2, second)
except warehouse.StorageError as exc:
    out["error"] = str(exc)
out["rules_file_written"] = warehouse.is_published(wh, ASSOCIATION_RULES.name, d2)
out["published"] = stages.is_published(settings, d2)
out["latest"] = latest()
if scenario == "disk_full":
    stages.publish(settings, d2, staged("v3", 10, 10))  # space made: the rerun commits
else:
    subprocess.run(["umount", str(wh / PRODUCT_ASSOCIATIONS.name)], check=True)
    stages.publish(settings, d2, second)
out["published_after_rerun"] = stages.is_published(settings, d2)
out["latest_after_rerun"] = latest()
print(json.dumps(out))
"""


@pytest.mark.parametrize("scenario", ["disk_full", "read_only"])
def test_disk_full_or_read_only_leaves_the_date_unpublished_with_a_clear_error(tmp_path, scenario):
    """A real 2 MB tmpfs (full) or a read-only bind mount under the warehouse, in a private
    mount namespace (``unshare -rm``: no privileges needed where user namespaces are enabled)."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("unshare -rm (user and mount namespaces) is not available here")
    proc = subprocess.run(
        ["unshare", "-rm", sys.executable, "-c", STORAGE_CHILD, scenario, str(tmp_path / "data"), str(REPO / "tests" / "pipeline")],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if scenario == "disk_full":
        assert out["rules_file_written"]  # the first table made it, the second did not fit
        assert "product_associations/run_date=2024-03-02/data.parquet: no space left on device;" in out["error"]
        assert "bytes needed" in out["error"] and "free" in out["error"]
    else:
        assert "product_associations/run_date=2024-03-02" in out["error"] and "read-only file system" in out["error"]
    assert "\n" not in out["error"]
    assert out["published"] is False and out["latest"] == ["2024-03-01"]
    assert out["published_after_rerun"] is True and out["latest_after_rerun"] == ["2024-03-02"]


# --- 5. glob characters in the data dir; a moved data dir -----------------------------------------


def _view_counts(con) -> dict[str, int]:
    return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("association_rules", "latest_product_associations", "transactions", "manifest")}


@pytest.mark.parametrize("name", ["g[x]", "s*t", "q?"])
def test_glob_characters_in_the_data_dir_are_only_characters(tmp_path, name):
    sibling = Settings(data_dir=tmp_path / "sat" / "data")  # what s*t, q? or g[x] would match as globs
    land(sibling.landing_dir)
    stages.run_nightly(sibling, date(2024, 1, 6))
    settings = Settings(data_dir=tmp_path / name / "data")
    land(settings.landing_dir)
    result = stages.run_nightly(settings, AS_OF)
    rows = {p.table: p.rows for p in result.published}
    with stages.open_views(settings) as con:
        counts = _view_counts(con)
    assert counts["association_rules"] == rows["association_rules"]  # not doubled by the sibling
    assert counts["latest_product_associations"] == rows["product_associations"]
    staged = sum(pl.read_parquet(f, glob=False).height for f in (settings.staging_dir / "transactions").rglob("*.parquet"))
    assert counts["transactions"] == staged

    moved = Settings(data_dir=tmp_path / "moved" / name / "data")  # restored elsewhere
    moved.data_dir.parent.mkdir(parents=True)
    shutil.move(settings.data_dir, moved.data_dir)
    with stages.open_views(moved) as con:  # rebuilt for the new location on open
        assert _view_counts(con) == counts


def _published(settings: Settings) -> dict[str, bytes]:
    return {p.relative_to(settings.warehouse_dir).as_posix(): p.read_bytes()
            for p in sorted(settings.warehouse_dir.rglob("data.parquet"))}


def _staged_file(settings: Settings, day: str):
    (path,) = (settings.staging_dir / "transactions" / f"dt={day}").glob("*.parquet")
    return path


def test_staged_rows_deleted_or_damaged_by_hand_are_staged_again_from_the_landing_zone(tmp_path):
    """Staging and quarantine are prodassoc's, but a disk or an operator tidying up can still remove
    or damage a file in them. Their rows must not silently leave: every run checks the outputs
    against the manifest (present, readable, the accepted and quarantined rows it recorded) and
    ingests the landed file again where they differ; damaged files are kept beside, renamed."""
    settings = _settings(tmp_path)
    as_of = AS_OF
    day5 = settings.landing_dir / "transactions" / "dt=2024-01-05" / "part-0.parquet"
    lines = pl.read_parquet(day5)
    pl.concat([lines, lines.head(1).with_columns(pl.lit("Z").alias(c.PRODUCT_ID))]).write_parquet(day5)  # quarantined
    stages.run_nightly(settings, as_of)
    tables = _published(settings)
    gone, torn, short = (_staged_file(settings, d) for d in ("2024-01-02", "2024-01-03", "2024-01-04"))
    (quarantined,) = (settings.quarantine_dir / "transactions" / "dt=2024-01-05").glob("*.parquet")
    quarantined.write_bytes(b"PAR1")
    gone.unlink()
    torn_bytes = torn.read_bytes()[:200]
    torn.write_bytes(torn_bytes)
    pl.read_parquet(short).head(1).write_parquet(short)  # a valid file, one row where there were more
    catalog = settings.staging_dir / "catalog" / ingest.CATALOG_FILE
    catalog.write_bytes(catalog.read_bytes()[:100])

    again = stages.run_nightly(settings, as_of)
    assert again.ingest.files_ingested == 5  # the four days and the catalog, from their landed files
    notes = again.ingest.restaged
    assert len(notes) == 5 and all("ingested again from the landing zone" in n for n in notes)
    for day, problem in (("2024-01-02", "staged rows are missing"), ("2024-01-03", "staged rows are unreadable"),
                         ("2024-01-04", "staged rows are 1 rows, not "), ("2024-01-05", "quarantined rows are unreadable")):
        assert any(f"transactions/dt={day}/part-0.parquet: its {problem}" in n for n in notes), (day, notes)
    assert pl.read_parquet(quarantined)[c.PRODUCT_ID].to_list() == ["Z"]  # the quarantine holds its row again
    assert _published(settings) == tables  # the same rows as before the damage
    aside = torn.with_name(f"{torn.name}.damaged-as_of={as_of}")
    assert aside.read_bytes() == torn_bytes  # kept, out of the staging glob
    assert catalog.with_name(f"{catalog.name}.damaged-as_of={as_of}").is_file()
    assert_landed_rows_reconcile(settings)
    assert "Re-ingested" in again.report.read_text()

    # staged rows gone with their landed file: the run fails, saying which rows left the window
    (settings.landing_dir / "transactions" / "dt=2024-01-02" / "part-0.parquet").unlink()
    _staged_file(settings, "2024-01-02").unlink()
    with pytest.raises(ingest.IngestError, match=r"transactions/dt=2024-01-02/part-0.parquet: its staged rows are "
                                                 r"missing, and the landed file is gone: \d+ accepted and 0 "
                                                 r"quarantined rows left the data dir"):
        stages.run_nightly(settings, as_of)
    rerun = stages.run_nightly(settings, as_of)  # said once; the manifest no longer counts them
    assert rerun.ingest.restaged == [] and not rerun.ingest.errors
