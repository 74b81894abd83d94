"""Each nightly run leaves its counts and timings as a Prefect Markdown artifact and an MLflow run.

Runs under Prefect's test harness on the shipped sample (not a production test: no servers).
"""

from __future__ import annotations

import json
from datetime import date

import pytest

from prodassoc_core.data import importers
from prodassoc_core.models import tracking
from prodassoc_core.ops.settings import Settings
from prodassoc_core.pipeline import run_summary, stages

from conftest import SAMPLE

AS_OF = date(2011, 11, 1)


@pytest.fixture(scope="module")
def observed(tmp_path_factory, prefect_harness):
    from flows.nightly import nightly

    settings = Settings(data_dir=tmp_path_factory.mktemp("observed"))
    importers.import_source(kind="online-retail", inputs=[SAMPLE], landing_dir=settings.landing_dir)
    return settings, nightly(as_of=AS_OF, settings=settings)


def _artifacts(key: str, flow_run_id: str) -> list:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    # other tests in this session run nightlies for the same date under the same harness
    only = ArtifactFilter(key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=only)


def _mlflow_run(settings: Settings, run_id: str):
    (run,) = [r for r in tracking.runs(settings.tracking_uri, run_summary.NIGHTLY_EXPERIMENT) if r.info.run_id == run_id]
    return run


def test_mlflow_run_has_the_counts_timings_and_model(observed):
    settings, out = observed
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
    assert run.data.params["as_of"] == AS_OF.isoformat()
    assert run.data.tags["prefect_artifact"] == "nightly-2011-11-01"
    assert run.data.tags["prefect_flow_run_id"]


def test_markdown_artifact_names_the_counts(observed):
    settings, out = observed
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


def test_the_artifact_is_written_when_mlflow_fails(observed):
    from prefect import flow, get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from prodassoc_core.pipeline import stages
    from tasks.nightly import record_run

    settings, out = observed
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
