"""The nightly flow end to end on the shipped Online Retail sample (conftest's ``sample_cut`` of
it), under Prefect's ephemeral API: what it publishes, reruns, its Prefect run and log, and the counts
and timings each run leaves as a Prefect Markdown artifact and an MLflow run (one run of the flow,
asserted by every test here)."""

from __future__ import annotations

import json
from datetime import date

import duckdb
import polars as pl
import pytest

from prodassoc_core.data import importers
from prodassoc_core.models import tracking
from prodassoc_core.ops.settings import MiningConfig, Settings
from prodassoc_core.pipeline import run_summary, stages


AS_OF = date(2011, 11, 1)


@pytest.fixture(scope="module")
def demo(tmp_path_factory, prefect_harness, sample_cut):
    from flows.nightly import nightly

    settings = Settings(
        data_dir=tmp_path_factory.mktemp("data"), mining=MiningConfig(min_support=0.01, min_confidence=0.5)
    )
    importers.import_source(kind="online-retail", inputs=[sample_cut], landing_dir=settings.landing_dir)
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


# --- observability: the run's MLflow run and Markdown artifact ----------------------------------------


def _artifacts(key: str, flow_run_id: str) -> list:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    # other runs (the rerun test, other modules) are nightlies for the same date under the same harness
    only = ArtifactFilter(key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=only)


def _mlflow_run(settings: Settings, run_id: str):
    (run,) = [r for r in tracking.runs(settings.tracking_uri, run_summary.NIGHTLY_EXPERIMENT) if r.info.run_id == run_id]
    return run


def test_mlflow_run_has_the_counts_timings_and_model(demo):
    settings, out = demo
    run = _mlflow_run(settings, out["mlflow_run"])
    m, ing = run.data.metrics, out["ingest"]
    assert (m["rows_read"], m["rows_accepted"], m["rows_quarantined"]) == (
        ing["rows_read"], ing["rows_accepted"], ing["rows_quarantined"])
    assert m["rows_read"] > 0 and m["rows_read"] == m["rows_accepted"] + m["rows_quarantined"]
    assert m["rows_read_transactions"] + m["rows_read_catalog"] == m["rows_read"]
    assert "rows_quarantined_transactions" in m and "rows_quarantined_catalog" in m
    published = {p["table"]: p["rows"] for p in out["published"]}
    assert m["published_rows_association_rules"] == m["rules"] == published["association_rules"] > 0
    assert m["published_rows_product_associations"] == published["product_associations"] > 0
    assert m["baskets"] > 1000
    stage_names = {"ingest", "baskets", "mine_rules", "product_associations", "bundles", "publish", "run_report", "total"}
    assert {k.removeprefix("seconds_") for k in m if k.startswith("seconds_")} == stage_names
    assert all(m[f"seconds_{s}"] >= 0 for s in stage_names) and m["seconds_total"] >= m["seconds_ingest"]
    served = json.loads((stages.run_dir(settings, AS_OF) / stages.SERVING_FILE).read_text())
    assert run.data.params["model"] == run.data.tags["model"] == f"classic:{served['classic']}"
    assert run.data.params["serve_cold"] == "classic" and run.data.params["student_model"] == ""
    assert run.data.params["as_of"] == AS_OF.isoformat() and run.data.params["engine"] == "local"
    assert run.data.tags["prefect_artifact"] == "nightly-2011-11-01"
    assert run.data.tags["prefect_flow_run_id"]


def test_markdown_artifact_names_the_counts(demo):
    settings, out = demo
    flow_run_id = _mlflow_run(settings, out["mlflow_run"]).data.tags["prefect_flow_run_id"]  # the two are linked
    (artifact,) = _artifacts("nightly-2011-11-01", flow_run_id)
    assert artifact.type == "markdown"
    text = artifact.data
    served = json.loads((stages.run_dir(settings, AS_OF) / stages.SERVING_FILE).read_text())
    assert "as_of 2011-11-01" in text and f"Served: `classic:{served['classic']}`" in text
    assert "product embeddings: none (no student served)" in text and served["classic_reason"] in text
    ing = out["ingest"]
    assert f"| **all** | {ing['rows_read']:,} | {ing['rows_accepted']:,} | {ing['rows_quarantined']:,} |" in text
    for p in out["published"]:
        assert f"| {p['table']} | {p['rows']:,} |" in text
    assert out["mlflow_run"] in text and run_summary.NIGHTLY_EXPERIMENT in text
    for stage in ("ingest", "baskets", "mine_rules", "product_associations", "bundles", "publish", "total"):
        assert f"| {stage} |" in text


def test_the_artifact_is_written_when_mlflow_fails(demo):
    from prefect import flow, get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from prodassoc_core.pipeline import stages
    from tasks.nightly import record_run

    settings, out = demo
    broken = settings.model_copy(update={"mlflow_tracking_uri": "nosuchscheme://user:secret@host/x"})
    baskets = stages.run_dir(settings, AS_OF) / stages.BASKETS_FILE

    @flow(name="record-with-broken-mlflow")
    def record():
        return record_run(broken, date(1999, 1, 1), out["ingest"], out["published"], baskets, {"total": 1.0})

    with pytest.raises(Exception, match="nosuchscheme"):
        record()
    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["nightly-1999-01-01"])))
    assert "**logging failed**" in artifact.data and "nosuchscheme://user:***@host/x" in artifact.data
    assert "secret" not in artifact.data


def test_summary_helpers_are_pure():
    ingest = {
        **{k: 0 for k in ("files_seen", "files_ingested", "files_skipped", "files_failed",
                          "files_duplicate", "files_deferred")},
        "files_seen": 2, "files_ingested": 2, "rows_read": 10, "rows_accepted": 7, "rows_quarantined": 3,
        "partitions": [
            {"table": "transactions", "rows_read": 8, "rows_quarantined": 3,
             "top_rules": (("not_null:order_id", 2), ("unknown_product", 1))},
            {"table": "catalog", "rows_read": 2, "rows_quarantined": 0, "top_rules": ()},
        ],
    }
    published = [{"table": "association_rules", "rows": 5, "path": "p"}]
    m = run_summary.nightly_metrics(ingest, published, n_baskets=4, timings={"ingest": 1.23456})
    assert m["rows_quarantined_transactions"] == 3 and m["rows_read_catalog"] == 2
    assert m["rules"] == 5 and m["baskets"] == 4 and m["seconds_ingest"] == 1.235
    served = {"segments": {"warm": "classic", "cold": "classic"}, "classic": "count", "served": "warm: classic count",
              "classic_reason": "count: the floor", "reason": "no model"}
    text = run_summary.nightly_markdown(AS_OF, served, m, ingest, published, "here")
    assert "Served: `classic:count`" in text and "- classic method: count: the floor" in text
    assert "`not_null:order_id` 2, `unknown_product` 1" in text and "| transactions | 8 | 5 | 3 |" in text
    assert run_summary.redact_uri("http://u:secret@mlflow:5000") == "http://u:***@mlflow:5000"
    assert run_summary.redact_uri("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
