"""A real `mlflow server` on loopback (SQLite backend, local artifact destination) used by the
evaluation, nightly and training flows; the runs, registered models and aliases are then read back
through the server's REST API.

Marked `production`: runs when $CI is set or PRODASSOC_PRODUCTION_TESTS=1 (about a minute).
"""

from __future__ import annotations

import os
from datetime import date

import pytest

from deployments import commands
from prodassoc_core.data import importers
from prodassoc_core.models import chain
from prodassoc_core.ops.settings import EvaluationConfig, Settings
from prodassoc_core.pipeline import run_summary

from conftest import free_port, production, start_process, stop_process, wait_http

pytestmark = production

AS_OF = date(2011, 10, 25)
METHODS = ("count", "decayed_damped")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on 127.0.0.1; yields its http:// tracking URI."""
    home = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    cmd = commands.mlflow_server(
        "127.0.0.1", port, f"sqlite:///{home / 'mlflow.db'}", str(home / "artifacts"), workers=1
    )
    # MLflow's job runner (three Huey consumer processes, for GenAI jobs prodassoc does not use) off:
    # tracking, the registry and the artifact proxy are what is under test
    env = os.environ | {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = home / "server.log"
    proc = start_process(cmd, env, log, cwd=home)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, log, timeout_s=90)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def landed(mlflow_server, tmp_path_factory, sample_cut) -> Settings:
    """One data dir for the module's flows (the sample ingested once), logging to the server."""
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("mlflow-data"),
        mlflow_tracking_uri=mlflow_server,
        evaluation=EvaluationConfig(methods=METHODS),
        training=chain.tiny_training_config(3),
    )
    importers.import_source(kind="online-retail", inputs=[sample_cut], landing_dir=settings.landing_dir)
    return settings


@pytest.fixture(scope="module")
def flows_logged(landed, prefect_harness):
    from flows.evaluate import evaluate
    from flows.nightly import nightly

    return landed, evaluate(as_of=AS_OF, settings=landed), nightly(as_of=AS_OF, settings=landed)


def _runs(uri: str, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"experiment {experiment!r} not on the server"
    return client.search_runs([found.experiment_id])


def test_evaluation_runs_are_on_the_server(flows_logged, mlflow_server):
    settings, evaluated, _ = flows_logged
    assert settings.tracking_uri == mlflow_server
    runs = {r.data.params["method"]: r for r in _runs(mlflow_server, settings.evaluation.experiment)}
    assert sorted(runs) == sorted(METHODS)
    assert sorted(r.info.run_id for r in runs.values()) == sorted(evaluated["mlflow_runs"])
    for row in evaluated["results"].iter_rows(named=True):
        run = runs[row["method"]]
        assert run.info.status == "FINISHED"
        assert run.data.metrics["ndcg_all"] == pytest.approx(row["ndcg_all"])
        assert run.data.params["as_of"] == AS_OF.isoformat()


def test_nightly_run_is_on_the_server(flows_logged, mlflow_server):
    _, _, out = flows_logged
    (run,) = _runs(mlflow_server, run_summary.NIGHTLY_EXPERIMENT)
    assert run.info.run_id == out["mlflow_run"]
    from prodassoc_core.pipeline import stages

    settings = flows_logged[0]
    served = stages.served_summary(stages.run_dir(settings, AS_OF) / stages.BASKETS_FILE)
    assert run.data.params["model"] == f"classic:{served['classic']}"
    published = {p["table"]: p["rows"] for p in out["published"]}
    assert run.data.metrics["rules"] == published["association_rules"] > 0
    assert run.data.metrics["rows_read"] == out["ingest"]["rows_read"]  # 0: the evaluation ingested it all
    assert run.data.metrics["baskets"] > 1000


def test_training_registers_on_the_server_and_the_nightly_embeds_with_its_champion(mlflow_server, landed,
                                                                                   prefect_harness):
    """Trained for a date after the other tests' (their nightly serves the classic method: a model
    trained later is never served before its date), in their data dir."""
    from mlflow.tracking import MlflowClient

    from flows.train import train
    from prodassoc_core.models import serving
    from prodassoc_core.pipeline import stages

    settings = landed
    trained = date(2011, 11, 8)
    out = train(as_of=trained, settings=settings)
    if not out["promoted"]:  # the gate kept the tiny chain out: serve it by hand, through the server
        serving.promote(settings, out["versions"]["student"], {"warm": "hybrid", "cold": "hybrid"}, "test")
    client = MlflowClient(tracking_uri=mlflow_server)
    for name in ("prodassoc-mlm", "prodassoc-teacher", "prodassoc-student", "prodassoc-gnn"):
        version = client.get_model_version_by_alias(name, "champion")
        assert version.version == out["versions"][name.removeprefix("prodassoc-")]
        run = client.get_run(version.run_id)
        assert run.info.status == "FINISHED"
        # artifacts go through the server to its destination, not to a path on this client
        assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri
    # the nightly's association stage downloads the served chain through the server
    staged = stages.associate(settings, stages.build_baskets(settings, trained), trained)
    assert stages.embedding_model(staged["product_embeddings"]) == out["model_uris"]["student"]
