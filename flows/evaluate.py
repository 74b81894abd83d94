"""The evaluation flow: every selected method through the nightly chain, scored on the test window."""

from __future__ import annotations

from datetime import date

import polars as pl
from prefect import flow, get_run_logger

from prodassoc_core.settings import Settings
from tasks import evaluate as t


@flow(name="prodassoc-evaluate")
def evaluate(as_of: date, settings: Settings | None = None, end: date | None = None) -> dict:
    """Train on everything before ``as_of``, test on [as_of, end) (default: the end of the landed data).

    Returns the results table (one row per method), the report paths and the MLflow run ids.
    """
    settings = settings or Settings()
    logger = get_run_logger()
    split = t.prepare(settings, as_of, end)
    logger.info(
        "split at %s: %d training baskets, %d test baskets up to %s",
        as_of, len(split.train_items), len(split.test_items), split.end,
    )
    rows = []
    for method in settings.evaluation.methods:  # one at a time: each holds the pair matrix in memory
        published = t.publish_method(settings, split, method)
        rows.append(t.score_method(settings, split, method, published))
        logger.info("%s: NDCG@%d all %.3f", method, settings.evaluation.k, rows[-1]["ndcg_all"])
    results = pl.DataFrame(rows)
    md, html = t.report(settings, split, results)
    run_ids = t.log_results(settings, split, results, [md, html])
    return {"results": results, "report_md": md, "report_html": html, "mlflow_runs": run_ids}
