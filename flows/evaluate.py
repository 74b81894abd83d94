"""The evaluation flow: every selected method through the nightly chain, scored on the test window."""

from __future__ import annotations

from datetime import date

import polars as pl
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.utilities.annotations import quote

from prodassoc_core.evaluation import markdown_table
from prodassoc_core.ops import Settings, from_environment
from tasks import evaluate as t


@flow(name="prodassoc-evaluate")
def evaluate(as_of: date, settings: Settings | None = None, end: date | None = None) -> dict:
    """Train on everything before ``as_of``, test on [as_of, end) (default: the end of the landed data).

    Returns the results table (one row per method), the report paths, the MLflow run ids and
    ``skipped``: the methods not evaluated -> why (a language-model stage with no usable model).
    """
    settings = settings or from_environment()
    logger = get_run_logger()
    split = t.prepare(settings, as_of, end)
    # quoted: Prefect would otherwise walk every basket of the split looking for futures, for each
    # task it is passed to (on the shipped sample, three quarters of the flow's time)
    held = quote(split)
    logger.info(
        "split at %s: %d training baskets, %d test baskets up to %s",
        as_of, len(split.train_items), len(split.test_items), split.end,
    )
    rows, skipped = [], {}
    for method in settings.evaluation.methods:  # one at a time: each holds the pair matrix in memory
        published = t.publish_method(settings, held, method)
        if isinstance(published, str):  # a language-model stage with no usable model: why
            skipped[method] = published
            continue
        rows.append(t.score_method(settings, held, method, published))
        logger.info("%s: NDCG@%d all %.3f", method, settings.evaluation.k, rows[-1]["ndcg_all"])
    results = pl.DataFrame(rows)
    md, html = t.report(settings, held, results, skipped)
    run_ids = t.log_results(settings, held, results, [md, html])
    create_markdown_artifact(
        f"# prodassoc evaluation, as_of {as_of.isoformat()}\n\n"
        f"Test window {as_of} to {split.end}; {len(split.test_items):,} test baskets. "
        f"Report: `{md}`; MLflow experiment `{settings.evaluation.experiment}` ({len(run_ids)} runs).\n\n"
        + markdown_table(results)
        + ("\n\nNot evaluated:\n" + "".join(f"\n- {m}: {why}" for m, why in skipped.items()) if skipped else ""),
        key=f"evaluation-{as_of.isoformat()}",
        description="prodassoc evaluation: one row per method",
    )
    return {"results": results, "report_md": md, "report_html": html, "mlflow_runs": run_ids, "skipped": skipped}
