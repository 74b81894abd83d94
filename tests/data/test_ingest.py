"""Incremental ingestion on tiny landing zones written into tmp dirs."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from prodassoc_core.data import contracts as c
from prodassoc_core.data.ingest import (
    IngestError,
    ingest,
    read_manifest,
    read_staged_catalog,
    read_staged_transactions,
)
from prodassoc_core.data.validation import data_docs_index, gx_suites, skipped_docs_path
from prodassoc_core.ops.settings import ValidationConfig

AS_OF = date(2024, 1, 4)
# the Data Docs are rendered by the tests about them only (conftest.DATA_DOCS_ENV)
LENIENT = ValidationConfig(max_failed_share=1.0, data_docs=False)
STRICT = ValidationConfig(max_failed_share=0.2, data_docs=False)


def with_docs(cfg: ValidationConfig) -> ValidationConfig:
    return cfg.model_copy(update={"data_docs": True})


@pytest.fixture(scope="module")
def gx_dir(tmp_path_factory) -> Path:
    """One GE context for the whole module: GE's import and set-up (~4 s) are paid once."""
    path = tmp_path_factory.mktemp("gx")
    gx_suites(path)
    return path


@dataclass
class Zone:
    root: Path
    gx_dir: Path

    @property
    def landing(self) -> Path:
        return self.root / "landing"

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.parquet"

    def catalog(self, ids: list[str], name: str = "catalog-2024-01-01.parquet") -> Path:
        path = self.landing / "catalog" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pl.DataFrame({c.PRODUCT_ID: ids, c.TITLE: [f"title {i}" for i in ids]}).write_parquet(path)
        return path

    def day(self, day: str, frame: pl.DataFrame, name: str = "part-0.parquet") -> Path:
        path = self.landing / "transactions" / f"dt={day}" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.write_parquet(path)
        return path

    def ingest(self, cfg: ValidationConfig = LENIENT, as_of: date = AS_OF, **kw):
        return ingest(
            self.landing, self.staging, self.quarantine, self.manifest, self.gx_dir, cfg, as_of, **kw
        )

    def manifest_rows(self) -> dict[str, dict]:
        return {r["file"]: r for r in read_manifest(self.manifest).iter_rows(named=True)}

    def staged(self, day: str) -> list[Path]:
        return sorted((self.staging / "transactions" / f"dt={day}").glob("*.parquet"))

    def quarantined(self, day: str) -> pl.DataFrame:
        files = sorted((self.quarantine / "transactions" / f"dt={day}").glob("*.parquet"))
        return pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed") if files else pl.DataFrame()


@pytest.fixture
def zone(tmp_path, gx_dir) -> Zone:
    z = Zone(tmp_path, gx_dir)
    z.catalog(["A", "B", "C"])
    return z


def orders(day: str, rows: list[tuple[str, str, int]], hour: int = 10) -> pl.DataFrame:
    """rows: (order_id, product_id, quantity), all at `hour` on `day`, price 1.0."""
    ts = datetime.fromisoformat(day).replace(hour=hour)
    return pl.DataFrame(
        {
            c.ORDER_ID: [r[0] for r in rows],
            c.PRODUCT_ID: [r[1] for r in rows],
            c.QUANTITY: [r[2] for r in rows],
            c.UNIT_PRICE: [1.0] * len(rows),
            c.CUSTOMER_ID: ["cust"] * len(rows),
            c.ORDERED_AT: [ts] * len(rows),
        },
        schema_overrides={c.QUANTITY: pl.Int64, c.ORDERED_AT: pl.Datetime("us")},
    )


def good(day: str, n: int = 5, prefix: str = "o") -> pl.DataFrame:
    return orders(day, [(f"{prefix}{i}", "ABC"[i % 3], 1 + i) for i in range(n)])


def assert_reconciles(zone: Zone) -> None:
    for row in zone.manifest_rows().values():
        assert row["rows_read"] == row["rows_accepted"] + row["rows_quarantined"], row


def test_broken_rows_land_in_quarantine_with_reasons(zone, caplog):
    broken = pl.DataFrame(
        {
            c.ORDER_ID: ["ok1", "ok2", None, "", "k5", "k6", "k7", "k8", "k9", "k10"],
            c.PRODUCT_ID: ["A", "B", "A", "A", None, "", "ZZ", "A", "A", "A"],
            c.QUANTITY: ["1", "2", "1", "1", "1", "1", "1", "0", "-3", "abc"],  # strings: wrong type
            c.UNIT_PRICE: [1.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, -2.0, 1.0],
            c.CUSTOMER_ID: ["c"] * 10,
            c.ORDERED_AT: [datetime(2024, 1, 2, 9)] * 9 + [datetime(2024, 1, 3, 9)],
            "extra": list(range(10)),
        }
    )
    zone.day("2024-01-02", broken)
    zone.day("2024-01-03", good("2024-01-03"))
    zone.day("2024-01-04", good("2024-01-04"))  # on as_of: not complete yet, deferred
    with caplog.at_level(logging.INFO, logger="prodassoc.ingest"):
        report = zone.ingest(with_docs(LENIENT))

    q = zone.quarantined("2024-01-02")
    reasons = dict(zip(q[c.ORDER_ID].fill_null("<null>").to_list(), q[c.REASON].to_list()))
    assert reasons == {
        "<null>": "not_null:order_id",
        "": "not_empty:order_id",
        "k5": "not_null:product_id",
        "k6": "not_empty:product_id; in_catalog:product_id",
        "k7": "in_catalog:product_id",
        "k8": "nonzero:quantity",
        "k9": "range:unit_price",
        "k10": "type:quantity; in_partition:ordered_at",
    }
    # landed values kept: the wrong-typed column as strings, extra columns too, plus lineage
    assert q.schema[c.QUANTITY] == pl.String and "abc" in q[c.QUANTITY].to_list()
    assert q.columns[-4:] == [c.SOURCE_FILE, c.SOURCE_ROW, c.PARTITION, c.REASON]
    assert q["extra"].to_list() == q[c.SOURCE_ROW].to_list()
    assert set(q[c.SOURCE_FILE]) == {"transactions/dt=2024-01-02/part-0.parquet"}

    staged = read_staged_transactions(zone.staging, date(2024, 1, 1), AS_OF)
    assert staged.collect_schema() == c.TRANSACTIONS.polars_schema
    got = staged.collect()
    assert sorted(got[c.ORDER_ID].to_list()) == ["o0", "o1", "o2", "o3", "o4", "ok1", "ok2"]
    assert got.filter(pl.col(c.ORDER_ID) == "ok2")[c.QUANTITY].item() == 2  # cast to int64

    rows = zone.manifest_rows()
    row = rows["transactions/dt=2024-01-02/part-0.parquet"]
    assert (row["rows_read"], row["rows_accepted"], row["rows_quarantined"]) == (10, 2, 8)
    assert row["status"] == "ingested" and "in_catalog:product_id=2" in row["detail"]
    assert row["run_as_of"] == AS_OF and row["partition"] == "2024-01-02" and len(row["sha256"]) == 64
    assert "transactions/dt=2024-01-04/part-0.parquet" not in rows
    assert_reconciles(zone)

    assert (report.files_seen, report.files_ingested, report.files_deferred) == (3, 3, 1)
    assert (report.rows_read, report.rows_accepted, report.rows_quarantined) == (18, 10, 8)
    assert report.rows_read == report.rows_accepted + report.rows_quarantined
    assert {p.partition: p.rows_quarantined for p in report.partitions if p.table == "transactions"} == {
        "2024-01-02": 8,
        "2024-01-03": 0,
    }
    assert report.data_docs == data_docs_index(zone.gx_dir) and report.data_docs.exists()
    assert any("validate:" in r.message for r in caplog.records)
    assert read_staged_catalog(zone.staging)[c.PRODUCT_ID].to_list() == ["A", "B", "C"]
    assert read_staged_transactions(zone.staging, date(2024, 1, 3), AS_OF).collect().height == 5


def test_duplicate_catalog_ids_then_fail_in_catalog(zone):
    zone.catalog(["A", "D", "D", "B"], name="catalog-2024-01-02.parquet")  # sorts last: current
    zone.day("2024-01-02", orders("2024-01-02", [("o1", "A", 1), ("o2", "D", 1), ("o3", "B", 1)]))
    report = zone.ingest()
    assert report.catalog_file == "catalog/catalog-2024-01-02.parquet"
    assert read_staged_catalog(zone.staging)[c.PRODUCT_ID].to_list() == ["A", "B"]
    cq = pl.read_parquet(next((zone.quarantine / "catalog").glob("catalog-2024-01-02-*.parquet")))
    assert cq[c.PRODUCT_ID].to_list() == ["D", "D"]
    assert cq[c.REASON].to_list() == ["unique:product_id"] * 2
    q = zone.quarantined("2024-01-02")
    assert q[c.ORDER_ID].to_list() == ["o2"] and q[c.REASON].to_list() == ["in_catalog:product_id"]
    assert_reconciles(zone)


def test_missing_column_quarantines_whole_file(zone):
    zone.day("2024-01-02", good("2024-01-02").drop(c.QUANTITY), name="bad.parquet")
    zone.day("2024-01-03", good("2024-01-03"))
    with pytest.raises(IngestError) as err:
        zone.ingest()
    message = str(err.value)
    assert "transactions/dt=2024-01-02/bad.parquet" in message
    assert "dt=2024-01-02" in message and "missing_column:quantity" in message
    q = zone.quarantined("2024-01-02")
    assert q.height == 5 and set(q[c.REASON]) == {"missing_column:quantity"}
    rows = zone.manifest_rows()
    bad = rows["transactions/dt=2024-01-02/bad.parquet"]
    assert (bad["status"], bad["rows_read"], bad["rows_accepted"], bad["rows_quarantined"]) == ("failed", 5, 0, 5)
    assert "quantity" in bad["detail"]
    assert rows["transactions/dt=2024-01-03/part-0.parquet"]["status"] == "ingested"  # rest not lost
    assert zone.staged("2024-01-02") == [] and len(zone.staged("2024-01-03")) == 1
    assert err.value.report.files_failed == 1
    assert_reconciles(zone)


def test_a_file_without_prices_or_customers_is_ingested_with_them_missing(zone):
    """Neither column is needed for baskets (a missing price passes the price rule): a grocer's
    export without them lands as it is."""
    zone.day("2024-01-02", good("2024-01-02").drop(c.UNIT_PRICE, c.CUSTOMER_ID), name="lean.parquet")
    report = zone.ingest()
    assert report.files_failed == 0 and not report.errors
    staged = read_staged_transactions(zone.staging, date(2024, 1, 2), date(2024, 1, 3)).collect()
    assert staged.height == 5 and staged.schema == c.TRANSACTIONS.polars_schema
    assert staged[c.UNIT_PRICE].null_count() == staged[c.CUSTOMER_ID].null_count() == 5
    assert zone.manifest_rows()["transactions/dt=2024-01-02/lean.parquet"]["status"] == "ingested"
    assert_reconciles(zone)


def test_columns_outside_the_contract_are_named_not_silently_dropped(zone, caplog):
    """An optional column under another name (a typo) lands missing: the manifest and the log
    name the columns that were not read."""
    day = good("2024-01-02").rename({c.UNIT_PRICE: "unit_prize"}).with_columns(country=pl.lit("UK"))
    zone.day("2024-01-02", day, name="typo.parquet")
    zone.day("2024-01-03", good("2024-01-03"))
    with caplog.at_level("WARNING", logger="prodassoc.ingest"):
        zone.ingest()
    rows = zone.manifest_rows()
    typo = rows["transactions/dt=2024-01-02/typo.parquet"]
    assert typo["status"] == "ingested" and typo["rows_accepted"] == 5
    assert typo["detail"] == "columns not in the contract, not read: unit_prize, country"
    assert rows["transactions/dt=2024-01-03/part-0.parquet"]["detail"] is None
    assert "1 file(s) have columns not in the contract, not read: country, unit_prize" in caplog.text


def test_a_catalog_that_really_shrank_is_staged_when_the_setting_allows(zone):
    zone.ingest()
    zone.catalog(["A"], name="catalog-2024-01-02.parquet")  # two of three products delisted
    with pytest.raises(IngestError, match="2 of the staged catalog's 3"):
        zone.ingest()
    zone.ingest(cfg=LENIENT.model_copy(update={"max_catalog_shrink": 1.0}))
    assert read_staged_catalog(zone.staging)[c.PRODUCT_ID].to_list() == ["A"]
    assert zone.manifest_rows()["catalog/catalog-2024-01-02.parquet"]["status"] == "ingested"


def test_unreadable_file_is_recorded_and_named(zone):
    bad = zone.landing / "transactions" / "dt=2024-01-02" / "corrupt.parquet"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"PAR1 this is not parquet")
    zone.day("2024-01-02", good("2024-01-02"), name="fine.parquet")
    zone.day("2024-01-03", good("2024-01-03"))
    with pytest.raises(IngestError, match="transactions/dt=2024-01-02/corrupt.parquet.*unreadable") as err:
        zone.ingest()
    part = {p.partition: p for p in err.value.report.partitions}["2024-01-02"]
    assert (part.status, part.files, part.rows_read) == ("failed", 2, 5)
    assert len(zone.staged("2024-01-02")) == 1  # the readable file of that day is not lost
    rows = zone.manifest_rows()
    row = rows["transactions/dt=2024-01-02/corrupt.parquet"]
    assert (row["status"], row["rows_read"], row["rows_accepted"], row["rows_quarantined"]) == (
        "unreadable", 0, 0, 0,
    )
    assert row["detail"].startswith("unreadable Parquet")
    assert rows["transactions/dt=2024-01-03/part-0.parquet"]["status"] == "ingested"


def test_rerun_skips_ingested_files_and_reingests_changed_ones(zone):
    path = zone.day("2024-01-02", good("2024-01-02"))
    zone.day("2024-01-03", good("2024-01-03"))
    first = zone.ingest()
    assert first.files_ingested == 3  # catalog + 2 days
    staged_before = zone.staged("2024-01-02")
    manifest_before = read_manifest(zone.manifest)

    again = zone.ingest()
    assert (again.files_ingested, again.files_skipped, again.rows_read) == (0, 3, 0)
    assert read_manifest(zone.manifest).equals(manifest_before)
    assert zone.staged("2024-01-02") == staged_before

    # the landed file is replaced with different content: its staged output is replaced
    orders("2024-01-02", [("n1", "A", 1), ("n2", "ZZ", 1)]).write_parquet(path)
    third = zone.ingest()
    assert (third.files_ingested, third.files_skipped) == (1, 2)
    staged_after = zone.staged("2024-01-02")
    assert len(staged_after) == 1 and staged_after != staged_before
    got = read_staged_transactions(zone.staging, date(2024, 1, 2), date(2024, 1, 3)).collect()
    assert got[c.ORDER_ID].to_list() == ["n1"]
    assert zone.quarantined("2024-01-02")[c.ORDER_ID].to_list() == ["n2"]
    meta = pq.read_schema(staged_after[0]).metadata
    assert meta[b"prodassoc.source_file"] == b"transactions/dt=2024-01-02/part-0.parquet"
    assert len(zone.manifest_rows()) == 3  # still one row per file
    assert_reconciles(zone)

    # a later as_of picks up the newly complete day only
    zone.day("2024-01-04", good("2024-01-04"))
    later = zone.ingest(as_of=date(2024, 1, 5))
    assert (later.files_ingested, later.files_skipped, later.files_deferred) == (1, 3, 0)


def test_failed_share_raises_after_writing_quarantine_and_manifest(zone):
    bad_day = orders("2024-01-02", [("b1", "ZZ", 1), ("b2", "ZZ", 1), ("b3", None, 1), ("b4", "A", 1)])
    bad = zone.day("2024-01-02", bad_day)
    zone.day("2024-01-03", good("2024-01-03"))
    with pytest.raises(IngestError) as err:
        zone.ingest(cfg=STRICT)
    message = str(err.value)
    assert "partition dt=2024-01-02" in message and "transactions/dt=2024-01-02/part-0.parquet" in message
    assert "75.0%" in message and "20.0%" in message and "in_catalog:product_id=2" in message
    assert "2024-01-03" not in message

    assert zone.quarantined("2024-01-02").height == 3  # nothing lost
    assert zone.staged("2024-01-02") == []  # accepted b4 not staged: the partition failed
    assert len(zone.staged("2024-01-03")) == 1
    rows = zone.manifest_rows()
    failed = rows["transactions/dt=2024-01-02/part-0.parquet"]
    assert (failed["status"], failed["rows_accepted"], failed["rows_quarantined"]) == ("failed", 1, 3)
    assert rows["transactions/dt=2024-01-03/part-0.parquet"]["status"] == "ingested"
    part = {p.partition: p for p in err.value.report.partitions}["2024-01-02"]
    assert part.status == "failed" and part.quarantined_share == 0.75
    assert_reconciles(zone)

    # still failing without a fix: retried, not skipped
    with pytest.raises(IngestError, match="dt=2024-01-02"):
        zone.ingest(cfg=STRICT)
    # the landing file is fixed: the rerun ingests it and only it
    good("2024-01-02").write_parquet(bad)
    report = zone.ingest(cfg=STRICT)
    assert (report.files_ingested, report.files_skipped) == (1, 2)
    assert zone.manifest_rows()["transactions/dt=2024-01-02/part-0.parquet"]["status"] == "ingested"
    assert zone.quarantined("2024-01-02").is_empty()  # the old version's quarantine is gone
    assert len(zone.staged("2024-01-02")) == 1


def test_failing_catalog_stops_the_run_before_transactions(zone):
    zone.catalog(["A", "A", "B"], name="catalog-2024-01-02.parquet")  # sorts last: current
    zone.day("2024-01-02", good("2024-01-02"))
    with pytest.raises(IngestError, match=r"catalog/catalog-2024-01-02.parquet: 2 of 3 rows .*66.7%"):
        zone.ingest(cfg=STRICT)
    rows = zone.manifest_rows()
    assert rows["catalog/catalog-2024-01-02.parquet"]["status"] == "failed"
    assert "transactions/dt=2024-01-02/part-0.parquet" not in rows
    assert not (zone.staging / "catalog" / "catalog.parquet").exists()
    assert pl.read_parquet(next((zone.quarantine / "catalog").glob("*.parquet"))).height == 2


def test_catalog_reused_when_unchanged_and_required(tmp_path, gx_dir):
    zone = Zone(tmp_path, gx_dir)
    zone.day("2024-01-02", good("2024-01-02"))
    with pytest.raises(IngestError, match="no catalog snapshot"):
        zone.ingest()
    zone.catalog(["A", "B", "C"])
    first = zone.ingest()
    assert [p.table for p in first.partitions] == ["catalog", "transactions"]
    second = zone.ingest()
    assert second.files_skipped == 2 and second.partitions == []


def test_batches_split_partitions_but_results_match(zone):
    for d in ("2024-01-01", "2024-01-02", "2024-01-03"):
        zone.day(d, orders(d, [("x", "A", 1), ("y", "ZZ", 1)]))
    report = zone.ingest(batch_rows=1)  # one GE run per partition
    days = [p for p in report.partitions if p.table == "transactions"]
    assert [p.partition for p in days] == ["2024-01-01", "2024-01-02", "2024-01-03"]
    assert [(p.rows_accepted, p.rows_quarantined) for p in days] == [(1, 1)] * 3
    assert report.rows_accepted == 3 + 3  # report totals include the catalog's 3 rows


def test_read_staged_transactions_when_empty(tmp_path):
    lf = read_staged_transactions(tmp_path, date(2024, 1, 1), date(2024, 2, 1))
    assert lf.collect().is_empty() and lf.collect_schema() == c.TRANSACTIONS.polars_schema
    with pytest.raises(FileNotFoundError, match="no staged catalog"):
        read_staged_catalog(tmp_path)


def test_every_stored_validation_has_its_data_docs_page_after_a_failed_ingestion(zone):
    """The Data Docs are rendered once at the end of a run, whatever ends it: a run that fails
    (here: a partition over max_failed_share) still shows what it validated."""
    zone.day("2024-01-02", orders("2024-01-02", [("o1", "A", 1), ("o2", "Z", 1), ("o3", "Z", 1)]))
    zone.day("2024-01-03", good("2024-01-03"))
    validations = zone.gx_dir / "uncommitted" / "validations"
    before = set(validations.rglob("*.json"))  # the module's earlier runs (most without the Data Docs)
    with pytest.raises(IngestError, match="dt=2024-01-02") as err:
        zone.ingest(with_docs(STRICT))
    site = data_docs_index(zone.gx_dir).parent
    assert err.value.report.data_docs == site / "index.html"
    stored = {p.relative_to(validations).with_suffix("") for p in set(validations.rglob("*.json")) - before}
    pages = {p.relative_to(site / "validations").with_suffix("") for p in (site / "validations").rglob("*.html")}
    assert stored and stored <= pages
    assert any("ingest-2024-01-04" in str(p) for p in stored)


def test_a_run_with_nothing_new_rebuilds_data_docs_that_lost_their_index(tmp_path):
    """A build that failed (a full disk) can leave the site without its index page; the next run
    rebuilds it even when it validates nothing (every file already ingested)."""
    zone = Zone(tmp_path, tmp_path / "gx")
    zone.catalog(["A", "B", "C"])
    zone.day("2024-01-02", good("2024-01-02"))
    first = zone.ingest(with_docs(LENIENT))
    shutil.rmtree(data_docs_index(zone.gx_dir).parent)
    again = zone.ingest(with_docs(LENIENT))
    assert again.files_ingested == 0 and first.files_ingested == 2
    assert again.data_docs == data_docs_index(zone.gx_dir) and again.data_docs.exists()
    assert len(list(again.data_docs.parent.joinpath("validations").rglob("*.html"))) == 2  # catalog, the day


def test_a_data_docs_failure_never_hides_the_error_that_stopped_the_run(zone, monkeypatch, caplog):
    from prodassoc_core.data.validation import GxSuites

    def full_disk(self):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(GxSuites, "build_docs", full_disk)
    zone.day("2024-01-02", orders("2024-01-02", [("o1", "A", 1), ("o2", "Z", 1), ("o3", "Z", 1)]))
    with pytest.raises(IngestError, match="dt=2024-01-02"):
        zone.ingest(with_docs(STRICT))
    assert "Data Docs not rebuilt for the failed run (OSError" in caplog.text
    zone.day("2024-01-03", good("2024-01-03"))
    with pytest.raises(OSError, match="No space left"):  # a run that succeeds reports the failed build
        zone.ingest(with_docs(LENIENT))


def test_without_data_docs_results_are_stored_and_no_page_is_rendered(tmp_path):
    """validation.data_docs=false: the same verdicts and stored results, no HTML for them; the next
    run with the Data Docs on renders its own results and those skipped (the index lists them all)."""
    zone = Zone(tmp_path, tmp_path / "gx")  # its own GE context: nothing stored or rendered before
    zone.catalog(["A", "B", "C"])
    zone.day("2024-01-02", orders("2024-01-02", [("o1", "A", 1), ("o2", "Z", 1)]))
    report = zone.ingest(LENIENT, as_of=date(2024, 1, 3))
    assert report.data_docs is None and (report.rows_accepted, report.rows_quarantined) == (4, 1)  # 3 catalog rows, o1; o2
    validations = zone.gx_dir / "uncommitted" / "validations"
    stored = {p.relative_to(validations).with_suffix("") for p in validations.rglob("*.json")}
    assert len(stored) == 2  # the catalog's and the transactions'
    site = data_docs_index(zone.gx_dir).parent
    assert not site.exists()
    skipped = json.loads(skipped_docs_path(zone.gx_dir).read_text())  # recorded for when they are back on
    assert {Path(*t) for t in skipped} == stored
    zone.day("2024-01-03", good("2024-01-03"))
    report = zone.ingest(with_docs(LENIENT), as_of=date(2024, 1, 4))
    assert report.data_docs == site / "index.html" and report.data_docs.exists()
    now = {p.relative_to(validations).with_suffix("") for p in validations.rglob("*.json")} - stored
    pages = {p.relative_to(site / "validations").with_suffix("") for p in (site / "validations").rglob("*.html")}
    assert now and pages == now | stored  # this run's results and those validated while the Data Docs were off
    assert not skipped_docs_path(zone.gx_dir).exists()
    index = report.data_docs.read_text()
    assert all(f"{p.as_posix()}.html" in index for p in pages)  # every page the index lists is there


def test_a_record_of_skipped_pages_that_cannot_be_written_never_fails_the_run(tmp_path, caplog):
    zone = Zone(tmp_path, tmp_path / "gx")
    zone.catalog(["A", "B", "C"])
    zone.day("2024-01-02", orders("2024-01-02", [("o1", "A", 1)]))
    skipped_docs_path(zone.gx_dir).mkdir(parents=True)  # the record cannot be put in place
    report = zone.ingest(LENIENT, as_of=date(2024, 1, 3))
    assert report.rows_accepted == 4 and report.data_docs is None
    assert "could not record the skipped results" in caplog.text


def test_an_unreadable_record_of_skipped_pages_is_logged_and_the_run_goes_on(tmp_path, caplog):
    zone = Zone(tmp_path, tmp_path / "gx")
    zone.catalog(["A", "B", "C"])
    zone.day("2024-01-02", orders("2024-01-02", [("o1", "A", 1)]))
    zone.ingest(LENIENT, as_of=date(2024, 1, 3))
    skipped_docs_path(zone.gx_dir).write_text('[["half a record"]')  # e.g. a disk that filled mid-write
    zone.day("2024-01-03", good("2024-01-03"))
    report = zone.ingest(with_docs(LENIENT), as_of=date(2024, 1, 4))
    assert report.data_docs.exists() and "skipped_data_docs.json unreadable" in caplog.text
    assert not skipped_docs_path(zone.gx_dir).exists()  # rendered what it could; the record is gone
