"""The nightly flow end to end on the shipped Online Retail sample, under Prefect's ephemeral API."""

from __future__ import annotations

from datetime import date

import duckdb
import polars as pl
import pytest

from prodassoc_core.data import importers
from prodassoc_core.ops.settings import MiningConfig, Settings

from conftest import SAMPLE

AS_OF = date(2011, 11, 1)


@pytest.fixture(scope="module")
def demo(tmp_path_factory, prefect_harness):
    from flows.nightly import nightly

    settings = Settings(
        data_dir=tmp_path_factory.mktemp("data"), mining=MiningConfig(min_support=0.01, min_confidence=0.5)
    )
    importers.import_source(kind="online-retail", inputs=[SAMPLE], landing_dir=settings.landing_dir)
    first = nightly(as_of=AS_OF, settings=settings)
    return settings, first


def test_counts_reconcile_and_match_the_manifest(demo):
    settings, first = demo
    ing = first["ingest"]
    assert ing["rows_read"] > 0
    assert ing["rows_read"] == ing["rows_accepted"] + ing["rows_quarantined"]
    manifest = pl.read_parquet(settings.manifest_path)
    tx = manifest.filter(pl.col("table") == "transactions")
    assert (tx["rows_read"] == tx["rows_accepted"] + tx["rows_quarantined"]).all()
    # only partitions before as_of are ingested
    assert tx["partition"].max() < AS_OF.isoformat()


def test_published_tables_open_in_duckdb(demo):
    settings, first = demo
    assert {p["table"] for p in first["published"]} == {"association_rules", "bundles", "product_associations"}
    con = duckdb.connect(str(settings.duckdb_path), read_only=True)
    n_rules = con.execute("SELECT count(*) FROM latest_association_rules").fetchone()[0]
    assert n_rules > 0
    # rules respect the thresholds on integer counts
    low = con.execute(
        "SELECT count(*) FROM association_rules WHERE n_rule < 0.01 * n_transactions OR confidence < 0.5"
    ).fetchone()[0]
    assert low == 0
    top = con.execute(
        "SELECT max(rank), count(DISTINCT product_id) FROM latest_product_associations"
    ).fetchone()
    assert top[0] == 20 and top[1] > 100
    # the analyst can join associations to titles from the validated catalog
    titled = con.execute(
        "SELECT count(*) FROM latest_product_associations a JOIN catalog c USING (product_id)"
    ).fetchone()[0]
    assert titled == con.execute("SELECT count(*) FROM latest_product_associations").fetchone()[0]


def test_quarantine_views_exist_while_nothing_is_quarantined(demo):
    """The shipped sample is clean: the quarantine views are there, empty, with the columns a
    quarantined row has (issue 14, item 1), and so is the quarantine folder."""
    settings, first = demo
    assert first["ingest"]["rows_quarantined"] == 0
    assert settings.quarantine_dir.is_dir()
    con = duckdb.connect(str(settings.duckdb_path), read_only=True)
    for view in ("quarantine_transactions", "quarantine_catalog"):
        assert con.execute(f"SELECT count(*) FROM {view}").fetchone()[0] == 0
        columns = [row[0] for row in con.execute(f"DESCRIBE {view}").fetchall()]
        assert columns[-4:] == ["_source_file", "_source_row", "_partition", "_reason"]
    types = {row[0]: row[1] for row in con.execute("DESCRIBE quarantine_transactions").fetchall()}
    assert types["ordered_at"].startswith("TIMESTAMP") and types["quantity"] == "BIGINT"


def test_rerun_ingests_nothing_twice_and_replaces_its_partition(demo):
    from flows.nightly import nightly

    settings, first = demo
    second = nightly(as_of=AS_OF, settings=settings)
    assert second["ingest"]["files_ingested"] == 0
    assert second["ingest"]["rows_read"] == 0
    by_table = {p["table"]: p for p in second["published"]}
    for p in first["published"]:
        assert by_table[p["table"]]["rows"] == p["rows"]
        assert by_table[p["table"]]["path"] == p["path"]
    files = list((settings.warehouse_dir / "product_associations").rglob("*.parquet"))
    assert len(files) == 1


def test_the_run_is_named_by_its_date_and_its_log_shows_the_work(demo):
    """In the Prefect UI a nightly run is ``nightly-<as_of>`` and its log holds the project's own
    lines (counts, what was served), not only the tasks' states."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName, LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)  # the run's log lines reach the API in batches
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"nightly-{AS_OF.isoformat()}"])))
        assert runs  # (the rerun test may have added a second one)
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[r.id for r in runs])),
                                limit=200)
    ours = [entry for entry in logs if entry.name.startswith("prodassoc.")]
    assert any("associate:" in entry.message for entry in ours), [entry.name for entry in logs][:20]
    assert any(entry.name == "prodassoc.ingest" for entry in ours)


def test_the_flow_and_the_plain_runner_run_the_same_stages(demo):
    """The nightly's stages are composed once (stages.nightly_stages): every stage the plain runner runs
    is a task run of the flow, by the same name, and nothing else is."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName, TaskRunFilter, TaskRunFilterFlowRunId

    from prodassoc_core.pipeline import stages

    settings, _ = demo
    plain = stages.run_nightly(settings, AS_OF)  # a rerun: nothing new to ingest, the rest is redone
    ran = set(plain.timings) - {"total"}
    assert {"ingest", "baskets", "mine_rules", "product_associations", "bundles", "publish", "run_report"} <= ran
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"nightly-{AS_OF.isoformat()}"])))
        task_runs = client.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[runs[0].id])))
    tasks = {stages.timing_key(r.name.rsplit("-", 1)[0]) for r in task_runs}
    assert tasks == ran | {"record_run"}
