"""The harness's model methods on the shipped sample: champions trained (tiny chain) before
as_of are scored beside the baselines; a model trained on later data is never scored."""

from __future__ import annotations

import math
from datetime import date

import polars as pl
import pytest

from prodassoc_core.data import importers
from prodassoc_core.evaluation import harness
from prodassoc_core.models import chain
from prodassoc_core.ops.settings import EvaluationConfig, Settings
from prodassoc_core.pipeline import retrain


AS_OF = date(2011, 10, 25)
MODEL_METHODS = ("mlm", "student", "teacher", "gnn", "hybrid")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sample_cut):
    """The tiny chain trained before AS_OF, registered and served by hand (the harness scores
    champions; whether the gate would serve it is tests/models/test_chain.py's business)."""
    from prodassoc_core.models import serving

    settings = Settings(
        data_dir=tmp_path_factory.mktemp("eval-models"),
        training=chain.tiny_training_config(3),
        evaluation=EvaluationConfig(methods=("count", "auto", "served", *MODEL_METHODS), rerank_depth=10),
    )
    importers.import_source(kind="online-retail", inputs=[sample_cut], landing_dir=settings.landing_dir)
    result = retrain.train_chain_for(settings, *retrain.training_data(settings, AS_OF), AS_OF)
    registered = retrain.register(settings, result, AS_OF)
    serving.promote(settings, registered["student"].model_version, {"warm": "hybrid", "cold": "hybrid"}, "test")
    return settings


def test_model_methods_are_scored_beside_the_baselines(trained):
    settings = trained
    split = harness.prepare(settings, AS_OF)
    rows = {}
    for method in settings.evaluation.methods:
        published = harness.publish_method(settings, split, method)
        assert not isinstance(published, str), (method, published)  # a str: why it was skipped
        rows[method] = harness.score_method(settings, split, method, published)
    n = {r["n_all"] for r in rows.values()}
    assert len(n) == 1 and n.pop() > 50  # the same scored products for every method
    for method, row in rows.items():
        assert 0 <= row["ndcg_all"] <= 1 and 0 <= row["hr_all"] <= 1, method
    assert math.isnan(rows["teacher"]["bc_hr"])  # the teacher reranks scored products only
    # with champions registered, a classic method is still scored as itself, not as the hybrid
    count = pl.read_parquet(harness.method_dir(settings, AS_OF, "count") / "data.parquet")
    assert count["method"].unique().to_list() == ["count"]
    assert 0 <= rows["hybrid"]["bc_hr"] <= 1
    # served: the nightly's own stage for as_of; the tiny chain is served by hand for both segments,
    # so it publishes the hybrid of every product, as the hybrid method does
    assert rows["served"]["ndcg_all"] == pytest.approx(rows["hybrid"]["ndcg_all"], abs=1e-3)  # float ties aside
    served = pl.read_parquet(harness.method_dir(settings, AS_OF, "served") / "data.parquet")
    assert served["source"].unique().to_list() == ["hybrid"] and served["model_as_of"].max() <= AS_OF
    auto = pl.read_parquet(harness.method_dir(settings, AS_OF, "auto") / "data.parquet")
    assert auto["source"].unique().to_list() == ["classic"] and auto["method"].n_unique() == 1


def test_a_model_trained_after_as_of_is_never_scored(trained):
    settings = trained
    earlier = harness.prepare(settings, date(2011, 10, 20))
    for method in MODEL_METHODS:
        assert isinstance(harness.publish_method(settings, earlier, method), str), method  # the reason
    reason = harness.model_dir(settings, earlier, "student")
    assert isinstance(reason, str) and "has seen the test window" in reason


def test_a_model_method_whose_files_are_gone_is_skipped_with_the_reason_and_the_rest_is_scored(trained):
    import shutil

    settings = trained
    split = harness.prepare(settings, AS_OF)
    shutil.rmtree(settings.data_dir / "evaluation" / "models", ignore_errors=True)  # no earlier download
    artifacts = settings.data_dir / "mlartifacts"
    artifacts.rename(artifacts.with_name("mlartifacts-away"))
    try:
        reason = harness.publish_method(settings, split, "student")
        count = harness.publish_method(settings, split, "count")
    finally:
        artifacts.with_name("mlartifacts-away").rename(artifacts)
    assert isinstance(reason, str) and reason.startswith("student could not be run (FileNotFoundError: models:/")
    assert not isinstance(count, str) and count.is_file()
