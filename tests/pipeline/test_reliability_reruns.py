"""Reruns are safe: the same as_of gives byte-identical tables, backfills over published dates
duplicate nothing, a re-dropped file is not counted twice, and a run that failed at mining
resumes without re-ingesting (core chain and the Prefect flows)."""

from __future__ import annotations

import hashlib
import shutil
from datetime import date
from pathlib import Path

import polars as pl
import pytest

from prodassoc_core.data import contracts as c
from prodassoc_core.data import ingest, warehouse
from prodassoc_core.ops import locks
from prodassoc_core.ops.settings import Settings
from prodassoc_core.pipeline import stages

from conftest import FIRST, N_DAYS, PRODUCTS, land  # noqa: F401  (other modules take them from here too)


def published_bytes(settings: Settings) -> dict[str, str]:
    """sha256 of every published partition file, by path under the warehouse."""
    return {
        p.relative_to(settings.warehouse_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(settings.warehouse_dir.rglob("*.parquet"))
        if warehouse.TMP_DIR not in p.parts
    }


def assert_no_duplicates(settings: Settings) -> None:
    manifest = ingest.read_manifest(settings.manifest_path)
    assert manifest["file"].is_unique().all()
    staged = pl.read_parquet(settings.staging_dir / "transactions" / "**" / "*.parquet")
    assert staged.select(c.ORDER_ID, c.PRODUCT_ID).is_unique().all()
    ingested = manifest.filter(pl.col("status") == "ingested", pl.col("table") == "transactions")
    assert staged.height == ingested["rows_accepted"].sum()


@pytest.fixture
def settings(tmp_path) -> Settings:
    s = Settings(data_dir=tmp_path / "data")
    land(s.landing_dir)
    return s


def test_same_as_of_twice_gives_byte_identical_tables(settings, tmp_path):
    as_of = date(2024, 1, 5)
    first = stages.run_nightly(settings, as_of)
    # random baskets hold no bundle worth promoting (lift ~1, products in a few orders): bundles is
    # published empty; its ranking's determinism is tested in test_bundles.py
    assert first.ingest.files_ingested == 5 and all(p.rows > 0 for p in first.published if p.table != "bundles")
    before = published_bytes(settings)
    again = stages.run_nightly(settings, as_of)
    assert (again.ingest.files_ingested, again.ingest.rows_read) == (0, 0)
    assert published_bytes(settings) == before

    elsewhere = Settings(data_dir=tmp_path / "elsewhere")  # same landing, fresh data dir
    shutil.copytree(settings.landing_dir, elsewhere.landing_dir)
    stages.run_nightly(elsewhere, as_of)
    assert published_bytes(elsewhere) == before
    assert_no_duplicates(settings)


def test_backfill_over_published_dates_duplicates_nothing(settings):
    stages.run_nightly(settings, date(2024, 1, 4))
    done = published_bytes(settings)

    result = stages.backfill(settings, date(2024, 1, 3), date(2024, 1, 6))
    assert [r.as_of for r in result.ran] == [date(2024, 1, 3), date(2024, 1, 5), date(2024, 1, 6)]
    assert result.skipped == [date(2024, 1, 4)]
    after = published_bytes(settings)
    assert {k: after[k] for k in done} == done  # the published date was not touched
    for table in ("association_rules", "product_associations"):  # one partition per date and table
        assert sorted(k for k in after if k.startswith(table)) == [
            f"{table}/run_date=2024-01-0{d}/data.parquet" for d in (3, 4, 5, 6)
        ]
    assert_no_duplicates(settings)

    forced = stages.backfill(settings, date(2024, 1, 3), date(2024, 1, 6), force=True)
    assert len(forced.ran) == 4 and forced.skipped == []
    assert all(r.ingest.files_ingested == 0 for r in forced.ran)
    assert published_bytes(settings) == after  # a forced rerun rewrites identical bytes
    assert_no_duplicates(settings)
    with pytest.raises(ValueError, match="before start"):
        stages.backfill_dates(settings, date(2024, 1, 6), date(2024, 1, 3))


def test_same_file_landed_twice_is_not_counted_twice(settings):
    as_of = date(2024, 1, 4)
    original = settings.landing_dir / "transactions" / "dt=2024-01-02" / "part-0.parquet"
    shutil.copy(original, original.with_name("part-1.parquet"))  # in the same run as the original
    first = stages.run_nightly(settings, as_of)
    assert (first.ingest.files_ingested, first.ingest.files_duplicate) == (4, 1)
    tables = published_bytes(settings)

    shutil.copy(original, original.parent.parent / "dt=2024-01-03" / "redrop.parquet")  # later, elsewhere
    again = stages.run_nightly(settings, as_of)
    assert (again.ingest.files_ingested, again.ingest.files_duplicate, again.ingest.rows_read) == (0, 2, 0)
    assert published_bytes(settings) == tables
    rows = {r["file"]: r for r in ingest.read_manifest(settings.manifest_path).iter_rows(named=True)}
    for copy in ("transactions/dt=2024-01-02/part-1.parquet", "transactions/dt=2024-01-03/redrop.parquet"):
        assert rows[copy]["status"] == "duplicate" and rows[copy]["rows_read"] == 0
        assert "transactions/dt=2024-01-02/part-0.parquet" in rows[copy]["detail"]
    assert_no_duplicates(settings)

    # the original is re-dropped with new content: the copy is now the only holder of the old rows
    fresh = pl.read_parquet(original).with_columns(("new-" + pl.col(c.ORDER_ID)).alias(c.ORDER_ID))
    fresh.write_parquet(original)
    third = stages.run_nightly(settings, as_of)
    assert third.ingest.files_ingested == 2 and third.ingest.files_duplicate == 1
    assert_no_duplicates(settings)


def test_core_run_that_failed_at_mining_resumes_without_reingesting(settings, monkeypatch):
    as_of = date(2024, 1, 4)
    monkeypatch.setenv(warehouse.FAULT_ENV, "mine=raise")
    with pytest.raises(warehouse.InjectedFault, match="mine"):
        stages.run_nightly(settings, as_of)
    assert not stages.is_published(settings, as_of)
    monkeypatch.delenv(warehouse.FAULT_ENV)
    result = stages.run_nightly(settings, as_of)  # the failed run's lock is released too
    assert (result.ingest.files_ingested, result.ingest.files_skipped) == (0, 4)
    assert stages.is_published(settings, as_of)


# --- the Prefect flows ------------------------------------------------------------------------------


def test_flow_resumes_after_failing_at_mining_and_backfill_skips(settings, prefect_harness, monkeypatch):
    from flows.nightly import backfill, nightly

    as_of = date(2024, 1, 4)
    monkeypatch.setenv(warehouse.FAULT_ENV, "mine=raise")
    with pytest.raises(warehouse.InjectedFault):
        nightly(as_of=as_of, settings=settings)
    manifest = ingest.read_manifest(settings.manifest_path)
    assert (manifest["status"] == "ingested").all() and manifest.height == 4  # ingestion was kept
    assert not stages.is_published(settings, as_of)

    monkeypatch.delenv(warehouse.FAULT_ENV)
    resumed = nightly(as_of=as_of, settings=settings)
    assert resumed["ingest"]["files_ingested"] == 0 and resumed["ingest"]["files_skipped"] == 4
    assert {p["table"] for p in resumed["published"]} == {"association_rules", "bundles", "product_associations"}
    published = published_bytes(settings)

    summary = backfill(start=date(2024, 1, 3), end=as_of, settings=settings)
    assert (summary["ran"], summary["skipped"]) == (["2024-01-03"], ["2024-01-04"])
    assert {k: v for k, v in published_bytes(settings).items() if "2024-01-04" in k} == published
    assert_no_duplicates(settings)

    with locks.run_lock(settings.locks_dir, as_of):  # another run of that date holds the lock
        with pytest.raises(locks.RunLockedError, match=r"as_of 2024-01-04 is in progress.*pid \d+"):
            nightly(as_of=as_of, settings=settings)
    assert published_bytes(settings) != {} and stages.is_published(settings, as_of)


def test_a_product_delisted_by_a_new_snapshot_is_no_longer_associated(settings):
    """Its past sales still count in the window's statistics (association_rules describe them), but
    product_associations, what is served, names only products of the current catalog; the other
    products' lists close up (ranks 1, 2, ... without a gap)."""
    as_of = date(2024, 1, 7)
    stages.run_nightly(settings, as_of)
    path = warehouse.partition_dir(settings.warehouse_dir, "product_associations", as_of) / warehouse.DATA_FILE
    before = pl.read_parquet(path)
    delisted = before["associated_product_id"].value_counts(sort=True)["associated_product_id"][0]
    kept = [p for p in PRODUCTS if p != delisted]
    pl.DataFrame({c.PRODUCT_ID: kept, c.TITLE: [f"product {p}" for p in kept]}).write_parquet(
        settings.landing_dir / "catalog" / "catalog-2024-01-06.parquet")  # sorts last: the current snapshot
    stages.run_nightly(settings, as_of)  # a rerun replaces the date's tables
    after = pl.read_parquet(path)
    assert delisted not in set(after["product_id"]) | set(after["associated_product_id"])
    assert after.height == before.filter(pl.col("product_id") != delisted,
                                         pl.col("associated_product_id") != delisted).height
    ranks = after.group_by("product_id").agg(pl.col("rank").sort())
    assert all(r == list(range(1, len(r) + 1)) for r in ranks["rank"].to_list())



def test_the_published_order_is_checked_not_assumed():
    """associate sorts the table only when it is out of order (a sort copies a million rows at
    50,000 products): in order means by product, then strictly increasing rank."""
    frame = pl.DataFrame({"product_id": ["a", "a", "b", "c", "c"], "rank": [1, 2, 1, 1, 2]})
    assert c.in_rank_order(frame) and c.in_rank_order(frame.head(0))
    assert not c.in_rank_order(frame.reverse())
    assert not c.in_rank_order(frame.with_columns(rank=pl.Series([1, 2, 1, 2, 1])))  # a rank out of order
    assert not c.in_rank_order(frame.with_columns(rank=pl.Series([1, 1, 1, 1, 2])))  # a tie: sorted to be sure
    assert not c.in_rank_order(pl.concat([frame.slice(2), frame.slice(0, 2)]))  # segments appended out of order


def test_a_frame_conformed_in_polars_is_the_arrow_conform():
    """conform_frame aligns the nightly's segments before the one Arrow conform: the same table."""
    contract = c.PRODUCT_ASSOCIATIONS
    one = {pl.String: "a", pl.Boolean: True, pl.Date: date(2024, 1, 1)}
    classic = pl.DataFrame({name: [one.get(dtype, 1)] for name, dtype in contract.polars_schema.items()
                            if name in contract.required})  # integers where floats are due: cast
    classic = classic.with_columns(extra=pl.lit(1))  # not in the contract: dropped
    assert contract.conform(contract.conform_frame(classic).to_arrow()).equals(contract.conform(classic.to_arrow()))
    assert contract.conform_frame(classic).schema == contract.polars_schema
    with pytest.raises(ValueError, match=r"product_associations: missing required column\(s\) \['associated_product_id'\]"):
        contract.conform_frame(classic.drop("associated_product_id"))


def _run_files(settings: Settings, day: date) -> set[str]:
    folder = settings.data_dir / "runs" / f"as_of={day.isoformat()}"
    return {p.name for p in folder.iterdir() if p.name != warehouse.TMP_DIR}


def test_run_folders_keep_no_copies_of_published_tables_and_recent_baskets_only(settings):
    """A night's run folder held a copy of every table it published and the whole window's baskets,
    night after night. Published copies go once committed; baskets stay for the newest dates."""
    settings = settings.model_copy(update={"keep_run_baskets": 2})
    days = [date(2024, 1, d) for d in (3, 4, 5, 6)]
    for day in days:
        result = stages.run_nightly(settings, day)
        assert all(Path(p.path).is_file() and settings.warehouse_dir in Path(p.path).parents for p in result.published)
    light = {stages.SERVING_FILE, stages.BASKET_ACCOUNT_FILE}
    assert _run_files(settings, days[-1]) == _run_files(settings, days[-2]) == light | {stages.BASKETS_FILE}
    assert _run_files(settings, days[0]) == _run_files(settings, days[1]) == light
    # a backfill of an old date rebuilds what it needs and keeps its own baskets
    again = stages.backfill(settings, days[0], days[0], force=True)
    assert [r.as_of for r in again.ran] == [days[0]] and _run_files(settings, days[0]) == light | {stages.BASKETS_FILE}
    assert _run_files(settings, days[-2]) == light | {stages.BASKETS_FILE}  # still one of the newest two


def test_a_run_in_flight_keeps_its_baskets(settings):
    settings = settings.model_copy(update={"keep_run_baskets": 1})
    stages.run_nightly(settings, date(2024, 1, 4))
    with locks.run_lock(settings.locks_dir, date(2024, 1, 4)):  # a rerun of that date holds its lock
        stages.run_nightly(settings, date(2024, 1, 5))
    assert stages.BASKETS_FILE in _run_files(settings, date(2024, 1, 4))
    stages.run_nightly(settings, date(2024, 1, 6))
    assert stages.BASKETS_FILE not in _run_files(settings, date(2024, 1, 4))


def test_a_work_file_that_cannot_be_removed_does_not_fail_the_committed_run(settings, monkeypatch, caplog):
    unlink = Path.unlink

    def refuse(self, *args, **kwargs):  # the run folder's files only (a read-only folder; root ignores modes)
        if self.parent.name.startswith("as_of=") and self.suffix == ".parquet":
            raise PermissionError(13, "Permission denied", str(self))
        return unlink(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", refuse)
    result = stages.run_nightly(settings, date(2024, 1, 4))
    assert stages.is_published(settings, date(2024, 1, 4)) and result.published
    assert "not removed" in caplog.text and "safe to delete by hand" in caplog.text
    assert "association_rules.parquet" in _run_files(settings, date(2024, 1, 4))


@pytest.mark.parametrize("damage", ["truncated", "not_the_contract"])
def test_an_unreadable_manifest_is_set_aside_and_rebuilt_from_the_landing_zone(settings, damage):
    """A manifest damaged outside prodassoc (a bad disk, a bad restore, an edit) bricks nothing:
    the next run moves it aside, keeping its bytes, and rebuilds it by validating every landed
    file again, which gives the same account and the same tables."""
    as_of = date(2024, 1, 5)
    stages.run_nightly(settings, as_of)
    account = ingest.read_manifest(settings.manifest_path).drop("run_as_of")
    tables = published_bytes(settings)
    good = settings.manifest_path.read_bytes()
    if damage == "truncated":
        settings.manifest_path.write_bytes(good[: len(good) // 2])
    else:
        pl.DataFrame({"file": ["x"], "rows": [1]}).write_parquet(settings.manifest_path)
    damaged = settings.manifest_path.read_bytes()
    with pytest.raises(ingest.ManifestError, match=f"manifest {settings.manifest_path} is unreadable"):
        ingest.read_manifest(settings.manifest_path)

    again = stages.run_nightly(settings, as_of)
    aside = settings.manifest_path.with_name(f"{settings.manifest_path.name}.unreadable-as_of={as_of}")
    assert aside.read_bytes() == damaged  # kept, not deleted
    note = again.ingest.manifest_rebuilt
    assert note is not None and str(aside) in note and "every landed file was validated again" in note
    assert "Manifest rebuilt:" in again.report.read_text()  # the run's report says so too
    assert (again.ingest.files_ingested, again.ingest.files_skipped) == (5, 0)
    assert ingest.read_manifest(settings.manifest_path).drop("run_as_of").equals(account)
    assert published_bytes(settings) == tables
    assert_no_duplicates(settings)

    stages.run_nightly(settings, as_of)  # damaged again the same day: a second file beside the first
    settings.manifest_path.write_bytes(damaged)
    third = stages.run_nightly(settings, as_of)
    assert aside.with_name(f"{aside.name}-2").read_bytes() == damaged and third.ingest.manifest_rebuilt
