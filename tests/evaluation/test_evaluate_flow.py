"""The evaluation flow on the shipped sample (conftest's ``sample_cut`` of it): methods published,
scored, logged to MLflow, reported."""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from datetime import date

import pytest

from prodassoc_core.data import importers
from prodassoc_core.evaluation import harness
from prodassoc_core.models import tracking
from prodassoc_core.ops.settings import EvaluationConfig, Settings


AS_OF = date(2011, 10, 25)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, prefect_harness, sample_cut):
    from flows.evaluate import evaluate

    settings = Settings(
        data_dir=tmp_path_factory.mktemp("eval"),
        evaluation=EvaluationConfig(methods=("popularity", "count", "decayed_damped")),
    )
    importers.import_source(kind="online-retail", inputs=[sample_cut], landing_dir=settings.landing_dir)
    with _prefect_visits() as visits:
        out = evaluate(as_of=AS_OF, settings=settings)
    return settings, out | {"prefect_visits": visits}


@contextmanager
def _prefect_visits():
    """Counts the objects Prefect's ``visit_collection`` walks (it recurses through the module's
    name, so every nested object passes through the patch)."""
    from prefect.utilities import collections

    visits = Counter()
    real = collections.visit_collection

    def counting(expr, *args, **kwargs):
        visits["objects"] += 1
        return real(expr, *args, **kwargs)

    collections.visit_collection = counting
    try:
        yield visits
    finally:
        collections.visit_collection = real


def test_each_method_is_published_and_scored(evaluated):
    settings, out = evaluated
    results = out["results"]
    assert results["method"].to_list() == ["popularity", "count", "decayed_damped"]
    for method in results["method"]:
        assert (harness.method_dir(settings, AS_OF, method) / "data.parquet").exists()
    # the same products are scored for every method, warm + cold = all
    assert results["n_all"].n_unique() == 1 and results["n_all"][0] > 100
    assert (results["n_warm"] + results["n_cold"] == results["n_all"]).all()
    for column in ("ndcg_all", "hr_all", "recall_all", "bc_hr", "bc_ndcg"):
        assert results[column].is_between(0, 1).all()
    # co-purchase statistics beat popularity on this data, on both tasks
    by = {r["method"]: r for r in results.iter_rows(named=True)}
    assert by["count"]["ndcg_all"] > by["popularity"]["ndcg_all"]
    assert by["count"]["bc_hr"] > by["popularity"]["bc_hr"]


def test_mlflow_runs_and_report(evaluated):
    settings, out = evaluated
    runs = tracking.runs(settings.tracking_uri, settings.evaluation.experiment)
    assert sorted(r.data.params["method"] for r in runs) == ["count", "decayed_damped", "popularity"]
    run = next(r for r in runs if r.data.params["method"] == "count")
    row = out["results"].filter(method="count").row(0, named=True)
    assert run.data.metrics["ndcg_all"] == pytest.approx(row["ndcg_all"])
    assert run.data.params["as_of"] == AS_OF.isoformat()
    html = out["report_html"].read_text()
    assert "data:image/png;base64," in html and "decayed_damped" in html
    assert "| count |" in out["report_md"].read_text()


def test_same_data_and_seed_give_the_same_numbers(evaluated):
    settings, out = evaluated
    split = harness.prepare(settings, AS_OF)
    again = harness.score_method(
        settings, split, "decayed_damped", harness.publish_method(settings, split, "decayed_damped")
    )
    first = out["results"].filter(method="decayed_damped").row(0, named=True)
    assert again == first


def test_prefect_does_not_walk_the_baskets(evaluated):
    """The split (every training and test basket) goes to each task quoted: Prefect's search of a
    task's inputs for futures walked each basket's items, three quarters of the flow's time."""
    settings, out = evaluated
    items = sum(len(basket) for basket in harness.prepare(settings, AS_OF, None).train_items)
    assert items > 10_000
    assert 0 < out["prefect_visits"]["objects"] < items  # settings and paths, not the baskets

