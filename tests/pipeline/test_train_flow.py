"""The training flow and `prodassoc train` on the shipped sample with the tiny chain, then the nightly
flow publishing the champion student's product_embeddings (and not publishing them without one).

Real Prefect (the test harness's ephemeral API), real MLflow (sqlite under the data dir), real
training (chain.tiny_training_config: scratch 2-layer BERT, a few dozen steps per stage). One
trained data directory is shared by the module's tests; about a minute on 2 CPU cores.
"""

from __future__ import annotations

import json
import shutil
from datetime import date
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from flows.cli import main
from prodassoc_core.data import importers, ingest
from prodassoc_core.data.contracts import PRODUCT_EMBEDDINGS, PRODUCT_ID, PUBLISHED_TABLES
from prodassoc_core.models import chain, tracking
from prodassoc_core.ops.settings import Settings
from prodassoc_core.pipeline import run_summary, stages

AS_OF = date(2011, 11, 8)  # the sample's last landed day is 2011-11-07
SEED = 7
STAGE_MODELS = {
    "mlm": "prodassoc-mlm", "teacher": "prodassoc-teacher", "student": "prodassoc-student", "gnn": "prodassoc-gnn",
}


def _artifacts(key: str, flow_run_id) -> list:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    only = ArtifactFilter(key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=only)


def _products(settings: Settings) -> pl.DataFrame:
    """The staged catalog without the non-product codes (postage, discounts, ...)."""
    from prodassoc_core.data.baskets import is_non_product

    return ingest.read_staged_catalog(settings.staging_dir).filter(~is_non_product(settings.baskets))


def _champion(settings: Settings, name: str = "prodassoc-student"):
    return tracking.aliased_version(settings.tracking_uri, name, settings.training.champion_alias)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, prefect_harness, sample_cut):
    """The sample imported and the train flow run once: (settings, flow run id, the flow's summary)."""
    from flows.train import train

    settings = Settings(data_dir=tmp_path_factory.mktemp("trained"), training=chain.tiny_training_config(SEED))
    importers.import_source(kind="online-retail", inputs=[sample_cut], landing_dir=settings.landing_dir)
    state = train(as_of=AS_OF, settings=settings, return_state=True)
    assert state.is_completed(), state
    return settings, state.state_details.flow_run_id, state.result()


@pytest.fixture(scope="module")
def nightly_with_champion(trained, promoted):
    """The nightly flow for the training date, in the trained data directory, v1 served."""
    from flows.nightly import nightly

    settings, _, _ = trained
    return nightly(as_of=AS_OF, settings=settings)


@pytest.fixture(scope="module")
def promoted(trained):
    """v1 served by hand for both segments (`prodassoc promote`), whatever the gate decided: the
    tiny chain rarely beats the classic method on the sample's tail, and the serving path must
    be tested with a served model."""
    settings, _, _ = trained
    args = ["--data-dir", str(settings.data_dir), "promote", "--version", "1", "--reason", "test: serve the tiny chain"]
    assert main(args) == 0
    return settings


def test_train_registers_every_stage_and_records_the_gate(trained):
    settings, _, out = trained
    assert out["as_of"] == AS_OF.isoformat()
    assert out["versions"] == {"mlm": "1", "teacher": "1", "student": "1", "gnn": "1"}
    for stage, name in STAGE_MODELS.items():
        assert out["model_uris"][stage] == f"models:/{name}/1"
    # no promotion because nothing is served yet: only a segment the hybrid won on the gate half
    won = [s for s, v in out["segments"].items() if v == "hybrid"]
    assert out["promoted"] == bool(won) and out["champion_score"] is None
    scores = out["gate_scores"]
    for s in won:
        assert scores["candidate"][s] > scores["classic"][s] + settings.selection.gate_margin
        assert out["gate_products"][s] >= settings.selection.gate_min_products
    version = tracking.model_version(settings.tracking_uri, "prodassoc-student", "1")
    assert version.tags["prodassoc.gate"] == ("champion" if won else "candidate")
    assert version.tags["prodassoc.serve_warm"] == out["segments"]["warm"]
    assert version.tags["prodassoc.gate_classic"] == out["classic"]
    assert float(version.tags["prodassoc.gate_classic_warm"]) == pytest.approx(scores["classic"]["warm"], abs=1e-6)
    assert (_champion(settings) is not None) == out["promoted"]
    assert set(out["seconds"]) >= {"mlm", "teacher", "student", "gnn"}
    assert json.loads(json.dumps(out))  # plain values only: the flow's result is readable anywhere
    # the training's folder says it registered (older registered ones may then be tidied away)
    from prodassoc_core.pipeline import retrain

    marker = json.loads((retrain.models_dir(settings, AS_OF) / retrain.REGISTERED_FILE).read_text())
    assert marker == {"as_of": AS_OF.isoformat(), "versions": out["versions"]}


def test_every_stage_is_logged_live_in_the_training_experiment(trained):
    """MLflow shows each stage as it ran: a run opened when the stage started and ended when it
    ended (duration = the stage's wall time), its loss logged step by step, all four (the MLM
    too) sibling runs under the training's parent run in the training experiment."""
    from mlflow.tracking import MlflowClient

    settings, _, out = trained
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    experiment = client.get_experiment_by_name(settings.training.experiment).experiment_id
    runs = {stage: client.get_run(client.get_model_version(name, out["versions"][stage]).run_id)
            for stage, name in STAGE_MODELS.items()}
    (parent_id,) = {r.data.tags[tracking.PARENT_TAG] for r in runs.values()}
    parent = client.get_run(parent_id)
    assert parent.info.experiment_id == experiment and parent.info.status == "FINISHED"
    assert parent.data.tags["prodassoc.as_of"] == AS_OF.isoformat()
    validation = {"mlm": "heldout_loss", "teacher": "val_auc", "student": "val_ndcg", "gnn": "val_ndcg"}
    previous_end = parent.info.start_time
    long_stages = 0
    for stage, run in runs.items():
        info, tags = run.info, run.data.tags
        assert info.experiment_id == experiment, stage
        assert info.status == "FINISHED"
        assert tags["stage"] == stage and tags["prodassoc.as_of"] == AS_OF.isoformat()
        assert tags["prodassoc.seed"] == str(SEED) and tags["stop_reason"] == out["chain"][stage]["stop_reason"]
        wall, lasted = out["seconds"][stage], (info.end_time - info.start_time) / 1000
        assert info.start_time < info.end_time
        # the run spans the stage (a run logged afterwards lasts ~0.1 s: told apart where the stage
        # took over a second); its end may trail the stage's clock by the writer's last flush,
        # longer on a loaded machine
        assert (wall <= 1.0 or wall - 0.5 <= lasted) and lasted <= 1.25 * wall + 1.5, (stage, wall, lasted)
        long_stages += wall > 1.0
        assert previous_end <= info.start_time and info.end_time <= parent.info.end_time  # in order, inside
        previous_end = info.end_time
        losses = client.get_metric_history(info.run_id, "train_loss")
        first, last = min(m.timestamp for m in losses), max(m.timestamp for m in losses)
        assert info.start_time <= first <= last <= info.end_time, stage
        if wall > 1.0:  # a point at most every training.RECORD_EVERY_S: several in a stage of seconds
            assert len({m.step for m in losses}) > 1 and first < last, stage
        assert len(client.get_metric_history(info.run_id, "learning_rate")) == len(losses)
        assert len(client.get_metric_history(info.run_id, validation[stage])) >= 2, stage  # before, after (gnn: each eval)
    assert long_stages >= 2  # the span check above told live runs from runs logged afterwards
    assert runs["mlm"].data.tags["encoder"] == "scratch"
    assert runs["mlm"].data.metrics["heldout_loss_after"] == pytest.approx(out["chain"]["mlm"]["loss_after"])


def test_a_stage_that_dies_ends_its_run_killed(trained, monkeypatch):
    """An interrupted stage's run (and the training's) ends KILLED, not RUNNING forever; the stage
    before it, reused from the models directory, ends FINISHED."""
    from mlflow.tracking import MlflowClient

    from prodassoc_core.models import pairs
    from prodassoc_core.pipeline import retrain

    settings, _, _ = trained

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pairs, "build_task", interrupted)
    with pytest.raises(KeyboardInterrupt):
        retrain.train_models(settings, AS_OF)
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    experiment = client.get_experiment_by_name(settings.training.experiment).experiment_id
    parent = next(r for r in client.search_runs([experiment], order_by=["attributes.start_time DESC"])
                  if tracking.PARENT_TAG not in r.data.tags)
    assert parent.info.status == "KILLED" and parent.info.end_time >= parent.info.start_time
    children = client.search_runs([experiment], f"tags.`{tracking.PARENT_TAG}` = '{parent.info.run_id}'")
    status = {r.data.tags["stage"]: r.info.status for r in children}
    assert status == {"mlm": "FINISHED", "teacher": "KILLED"}
    assert [r.data.tags.get("prodassoc.reused") for r in children if r.data.tags["stage"] == "mlm"] == ["true"]
    assert tracking.end_status(RuntimeError()) == "FAILED" and tracking.end_status(None) == "FINISHED"


def test_train_writes_the_markdown_artifact(trained):
    _, flow_run_id, out = trained
    (artifact,) = _artifacts(f"train-{AS_OF.isoformat()}", flow_run_id)
    text = artifact.data
    assert f"as_of {AS_OF.isoformat()}" in text and out["verdict"] in text
    for name in STAGE_MODELS.values():
        assert f"`models:/{name}/1`" in text
    for line in out["gate_table"]:
        assert line in text
    c = out["gate_scores"]["classic"]
    assert f"| classic {out['classic']} | {c['warm']:.4f} | {c['cold']:.4f} | {c['served']:.4f} |" in text
    for stage in ("mlm", "teacher", "student"):
        s = out["chain"][stage]
        row = [line for line in text.splitlines() if line.startswith(f"| {stage} |")][-1]  # the stages table
        assert f"| {out['seconds'][stage]:.2f} |" in row  # wall seconds
        assert f"{s['examples_per_s']:,.1f}" in row and f"{s['steps']:,}/{s['total_steps']:,}" in row
        assert s["stop_reason"] in row
    assert "val_ndcg" in text and "ppl" in text  # validation before / after
    gnn_row = [line for line in text.splitlines() if line.startswith("| gnn |")][-1]
    assert f"{out['chain']['gnn']['epochs']} epochs" in gnn_row and "Hybrid weights" in text


def test_cli_promote_serves_by_hand_and_revoke_rolls_back(promoted):
    settings = promoted
    version = tracking.model_version(settings.tracking_uri, "prodassoc-student", "1")
    assert version.tags["prodassoc.gate"] == "manual" and version.tags["prodassoc.serve_cold"] == "hybrid"
    gnn = tracking.model_version(settings.tracking_uri, "prodassoc-gnn", "1")
    assert gnn.tags["prodassoc.gate"] == "manual"  # the GNN trained with it goes with it
    for name in STAGE_MODELS.values():
        assert _champion(settings, name).version == "1"
    from prodassoc_core.models import serving

    assert serving.served_models(settings, AS_OF).student.version == "1"
    assert "never used for it" in serving.served_models(settings, date(2011, 11, 7))  # point in time


def test_cli_train_prints_versions_and_the_gate(promoted, capsys, monkeypatch):
    settings = promoted
    # the tiny chain through the environment, as an operator would set any training option
    monkeypatch.setenv("PRODASSOC_TRAINING", settings.training.model_dump_json(exclude={"seed"}))
    monkeypatch.setenv("PRODASSOC_HYBRID", settings.hybrid.model_dump_json())
    args = ["--data-dir", str(settings.data_dir), "train", "--as-of", AS_OF.isoformat(), "--seed", str(SEED),
            "--device", "cpu", "--student-minutes", "5", "--no-promote"]
    assert main(args) == 0
    out = capsys.readouterr().out
    for name in STAGE_MODELS.values():
        assert f"models:/{name}/2" in out
    # a trial run: the gate decides and records, nothing moves
    assert "gate: trial run, not promoted: prodassoc-student v2 is registered, v1 stays served" in out
    assert "| classic " in out and "| decision |" in out
    assert _champion(settings).version == "1"
    assert tracking.model_version(settings.tracking_uri, "prodassoc-student", "2").tags["prodassoc.gate"] == "trial"


def test_too_little_data_to_train_on_is_refused_saying_what_there_is(tmp_path):
    """A toy landing (conftest.land: 8 products, 71 baskets): the chain would fail deep inside (no
    held-out texts for the MLM); instead training refuses with the counts and the settings."""
    from conftest import land

    from prodassoc_core.pipeline import retrain

    settings = Settings(data_dir=tmp_path, training=chain.tiny_training_config(SEED))
    land(settings.landing_dir)
    with pytest.raises(stages.NoDataError, match=r"as_of 2024-01-07: too little to train the model chain on: "
                       r"8 catalog products \(training.min_products 50\) and 71 baskets \(training.min_baskets 200\)"):
        retrain.training_data(settings, date(2024, 1, 7))
    small = settings.training.model_copy(update={"min_products": 5, "min_baskets": 50})
    catalog, baskets = retrain.training_data(settings.model_copy(update={"training": small}), date(2024, 1, 7))
    assert (catalog.height, baskets.height) == (8, 71)


def test_cli_train_refuses_bad_options_and_a_missing_seed(tmp_path, capsys, prefect_harness, monkeypatch):
    monkeypatch.delenv("PRODASSOC_TRAINING__SEED", raising=False)
    data = ["--data-dir", str(tmp_path)]
    assert main([*data, "train", "--as-of", "2011-11-08", "--seed", "1", "--teacher-minutes", "0"]) == 2
    assert "max_minutes" in capsys.readouterr().err
    assert main([*data, "train", "--as-of", "2011-11-08"]) == 2
    assert "training.seed is required" in capsys.readouterr().err


def test_nightly_publishes_the_champions_embeddings(trained, nightly_with_champion):
    settings, _, _ = trained
    published = {p["table"]: p for p in nightly_with_champion["published"]}
    assert set(published) == set(PUBLISHED_TABLES) | {PRODUCT_EMBEDDINGS.name, "bundles"}
    champion = _champion(settings)
    table = pq.read_table(published[PRODUCT_EMBEDDINGS.name]["path"])
    assert table.schema == PRODUCT_EMBEDDINGS.schema
    catalog = _products(settings)
    assert table.column(PRODUCT_ID).to_pylist() == sorted(catalog[PRODUCT_ID].to_list())  # one row per product
    vectors = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    assert vectors.shape == (catalog.height, table.column("dim")[0].as_py())
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert set(table.column("model_uri").to_pylist()) == {champion.uri} == {"models:/prodassoc-student/1"}

    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        rows, dims, run_date = con.execute(
            "SELECT count(*), min(dim), max(run_date) FROM latest_product_embeddings e JOIN catalog c USING (product_id)"
        ).fetchone()
    assert (rows, dims, str(run_date)) == (catalog.height, vectors.shape[1], AS_OF.isoformat())


def test_nightly_publishes_the_hybrid_for_every_product_with_explanations(trained, nightly_with_champion):
    settings, _, _ = trained
    published = {p["table"]: p for p in nightly_with_champion["published"]}
    table = pl.read_parquet(published["product_associations"]["path"])
    catalog = _products(settings)
    assert table["method"].unique().to_list() == ["hybrid"]
    assert set(table[PRODUCT_ID]) == set(catalog[PRODUCT_ID])  # every catalog product, sold or not
    # postage, discounts, samples (the basket rules' non-product codes) are never associated
    assert set(table["associated_product_id"]) <= set(catalog[PRODUCT_ID])
    assert table["explanation"].null_count() == 0
    for column in ("cooc_score", "text_score", "gnn_score"):
        assert table[column].null_count() == 0
    assert table["gnn_score"].std() > 0  # the champion GNN scored the candidates
    # provenance in every row: what served it, which versions, trained on data before which date
    assert table["source"].unique().to_list() == ["hybrid"]
    assert table["student_model"].unique().to_list() == ["models:/prodassoc-student/1"]
    assert table["gnn_model"].unique().to_list() == ["models:/prodassoc-gnn/1"]
    assert table["model_as_of"].unique().to_list() == [AS_OF]
    # explanations agree with the evidence columns: co-purchase is cited exactly where it was seen
    cites = table["explanation"].str.contains("bought together in")
    assert (cites == (table["n_rule"] > 0)).all() and (cites == (table["cooc_score"] > 0)).all()
    cold = table.filter(pl.col("is_cold_start"))
    assert cold["n_antecedent"].eq(0).all() and cold["lift"].is_null().all()
    bundles = pl.read_parquet(published["bundles"]["path"])
    assert bundles.height > 0 and (bundles["products"].list.len() == bundles["titles"].list.len()).all()
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM latest_bundles").fetchone()[0] == bundles.height


def test_nightly_records_the_champion_as_a_model_used(trained, nightly_with_champion):
    settings, _, _ = trained
    uri = _champion(settings).uri
    (run,) = [r for r in tracking.runs(settings.tracking_uri, run_summary.NIGHTLY_EXPERIMENT)
              if r.info.run_id == nightly_with_champion["mlflow_run"]]
    assert run.data.params["embedding_model"] == run.data.tags["embedding_model"] == uri
    assert run.data.metrics["published_rows_product_embeddings"] > 0
    (artifact,) = _artifacts(f"nightly-{AS_OF.isoformat()}", run.data.tags["prefect_flow_run_id"])
    assert f"product embeddings: `{uri}` (the served student)" in artifact.data
    served = "hybrid[warm,cold]:models:/prodassoc-student/1,models:/prodassoc-gnn/1"
    assert f"Served: `{served}`" in artifact.data
    assert run.data.params["model"] == served and run.data.params["student_model"] == uri
    assert "| product_embeddings |" in artifact.data


def test_run_nightly_without_prefect_publishes_the_same_embeddings(trained, nightly_with_champion):
    settings, _, _ = trained
    path = settings.warehouse_dir / PRODUCT_EMBEDDINGS.name / f"run_date={AS_OF.isoformat()}" / "data.parquet"
    before = path.read_bytes()
    result = stages.run_nightly(settings, AS_OF)
    assert {p.table for p in result.published} == set(PUBLISHED_TABLES) | {PRODUCT_EMBEDDINGS.name, "bundles"}
    assert path.read_bytes() == before  # a rerun replaces the partition with identical bytes
    assert not list(stages.run_dir(settings, AS_OF).glob(".champion-*"))  # the downloaded model is removed


def test_a_backfill_never_serves_a_model_trained_after_its_date(trained, nightly_with_champion):
    """Point in time: v1 is trained on data before 2011-11-08 and served; a backfill of the day
    before (the latest date it must not serve) serves the classic method, and says so in every row
    and in the record."""
    from flows.nightly import backfill

    settings, _, _ = trained
    out = backfill(start=date(2011, 11, 7), end=date(2011, 11, 7), settings=settings)
    assert out["ran"] == ["2011-11-07"]
    for day in out["ran"]:
        table = pl.read_parquet(settings.warehouse_dir / "product_associations" / f"run_date={day}" / "data.parquet")
        assert table["source"].unique().to_list() == ["classic"]
        assert table["student_model"].null_count() == table.height and table["model_as_of"].null_count() == table.height
        assert not (settings.warehouse_dir / PRODUCT_EMBEDDINGS.name / f"run_date={day}").exists()
        served = json.loads((stages.run_dir(settings, date.fromisoformat(day)) / stages.SERVING_FILE).read_text())
        assert served["segments"] == {"warm": "classic", "cold": "classic"} and "never used for it" in served["reason"]
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        late = con.execute(
            "SELECT count(*) FROM product_associations WHERE model_as_of > run_date"
        ).fetchone()[0]
        hybrid_days = con.execute(
            "SELECT DISTINCT run_date FROM product_associations WHERE source = 'hybrid'"
        ).fetchall()
    assert late == 0 and [str(d) for (d,) in hybrid_days] == [AS_OF.isoformat()]


def test_served_models_that_cannot_be_loaded_leave_the_classic_method_serving(trained, nightly_with_champion):
    """The artifact store lost the served models' files (a deleted folder, an unreachable bucket):
    the nightly still publishes, serving the classic method to every segment, and its record says
    why; once the files are back, the hybrid is served again."""
    settings, _, _ = trained
    day = date(2011, 11, 9)
    artifacts = settings.data_dir / "mlartifacts"
    moved = artifacts.with_name("mlartifacts-away")
    artifacts.rename(moved)
    try:
        result = stages.run_nightly(settings, day)
    finally:
        moved.rename(artifacts)
    table = pl.read_parquet(settings.warehouse_dir / "product_associations" / f"run_date={day}" / "data.parquet")
    assert table["source"].unique().to_list() == ["classic"] and table.height > 0
    assert PRODUCT_EMBEDDINGS.name not in {p.table for p in result.published}
    served = json.loads((stages.run_dir(settings, day) / stages.SERVING_FILE).read_text())
    assert served["segments"] == {"warm": "classic", "cold": "classic"}
    assert "models:/prodassoc-student/1" in served["reason"] and "could not be loaded" in served["reason"]
    assert "FileNotFoundError: models:/prodassoc-student/1: the artifact store has no files" in served["reason"]
    again = stages.run_nightly(settings, day)
    assert again.served["segments"] == {"warm": "hybrid", "cold": "hybrid"}


def test_a_served_model_that_cannot_be_scored_keeps_the_gate_from_promoting(promoted):
    """The gate re-scores the served model; with its files gone from the artifact store it cannot,
    so the new training is registered but not promoted, and the decision says what to do."""
    from urllib.parse import urlparse

    from mlflow.tracking import MlflowClient

    from prodassoc_core.pipeline import retrain

    # a margin no ranking misses (below the setting's range: model_copy does not validate), so that
    # the gate goes on to score the served model
    settings = promoted.model_copy(update={"selection": promoted.selection.model_copy(update={"gate_margin": -1.0})})
    source = MlflowClient(tracking_uri=settings.tracking_uri).get_model_version("prodassoc-student", "1").source
    files = Path(urlparse(source).path)
    files.rename(files.with_name("model-away"))
    for copy in settings.data_dir.glob("models/*/*/gate/champion"):  # an earlier gate's download of it
        shutil.rmtree(copy)
    try:
        report = retrain.train_models(settings, AS_OF)
    finally:
        files.with_name("model-away").rename(files)
    decision = report.decision
    assert not decision.promoted and "champion" not in decision.scores
    assert decision.reason.startswith("the served models:/prodassoc-student/1 could not be scored (FileNotFoundError")
    assert "prodassoc promote --version 1 --revoke" in decision.reason
    assert _champion(settings).version == "1"  # still served
    new = tracking.model_version(settings.tracking_uri, "prodassoc-student", report.versions["student"])
    assert new.tags["prodassoc.gate"] == "candidate"
