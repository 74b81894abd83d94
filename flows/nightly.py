"""The nightly flow: ingest -> validate -> baskets -> mine (and embed) -> publish, for one as_of date.

``backfill`` runs ``nightly`` once per date of a range, in order. Both are rerun-safe:
see ``prodassoc_core.pipeline`` for what a rerun skips and replaces.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from datetime import date

from prefect import flow, get_run_logger

from prodassoc_core import locks, pipeline
from prodassoc_core.contracts import ASSOCIATION_RULES, BUNDLES, PRODUCT_ASSOCIATIONS, PRODUCT_EMBEDDINGS
from prodassoc_core.settings import Settings
from tasks import nightly as t


@flow(name="prodassoc-nightly", flow_run_name="nightly-{as_of}")
def nightly(as_of: date, settings: Settings | None = None) -> dict:
    """Run the nightly chain for ``as_of``; the training window is everything before it.

    Holds the run lock for ``as_of`` throughout: a second run for the same date fails at
    once with RunLockedError naming the holder (or waits ``settings.run_lock_timeout_s``).
    Returns a summary: ingestion counts, the published partitions, the MLflow run id and the report path.
    What is served follows the serving plan (prodassoc_core/serving.py); with a served student
    its ``product_embeddings`` are published too. After publishing, the run's counts, stage
    timings and what was served are recorded as the Prefect Markdown artifact ``nightly-<as_of>``
    and as an MLflow run in experiment ``prodassoc-nightly``, and the run's report page is written
    to ``<data>/reports/nightly_as_of=<as_of>.html`` (returned as ``report``, linked from the artifact).

    Args:
        as_of: the run date, YYYY-MM-DD: trains on orders before it and publishes run_date=as_of.
        settings: leave empty: settings come from the worker's environment (PRODASSOC_* variables,
            README "Settings"); set only to override one run.
    """
    settings = settings or Settings()
    logger = get_run_logger()
    timings: dict[str, float] = {}  # stage -> wall seconds, recorded with the run's counts
    start = time.perf_counter()
    with locks.run_lock(settings.locks_dir, as_of, timeout=settings.run_lock_timeout_s):
        with _timed(timings, "ingest"):
            ingest_report = t.ingest_landing(settings, as_of)
        logger.info(
            "ingested %d file(s): %d rows read, %d accepted, %d quarantined",
            ingest_report["files_ingested"],
            ingest_report["rows_read"],
            ingest_report["rows_accepted"],
            ingest_report["rows_quarantined"],
        )
        with _timed(timings, "baskets"):
            baskets_path = t.build_baskets(settings, as_of)
        submitted = time.perf_counter()
        rules = t.mine_rules.submit(settings, baskets_path, as_of)
        pairs = t.product_associations.submit(settings, baskets_path, as_of)
        for name, future in (("mine_rules", rules), ("product_associations", pairs)):
            # they run side by side
            future.add_done_callback(lambda _, name=name: timings.setdefault(name, time.perf_counter() - submitted))
        staged = {ASSOCIATION_RULES.name: rules.result()} | pairs.result()
        with _timed(timings, "bundles"):
            staged[BUNDLES.name] = t.bundles(settings, baskets_path, staged[PRODUCT_ASSOCIATIONS.name])
        if PRODUCT_EMBEDDINGS.name not in staged:
            logger.info("no student served for %s: product_embeddings not published", as_of)
        served = pipeline.served_summary(baskets_path)
        logger.info("served: %s", served["served"])
        logger.info("classic method: %s; models: %s", served["classic_reason"], served["reason"])
        with _timed(timings, "publish"):
            published = t.publish(settings, as_of, staged)
    timings["total"] = time.perf_counter() - start
    for p in published:
        logger.info("published %s: %d rows at %s", p["table"], p["rows"], p["path"])
    report = t.run_report(settings, as_of, ingest_report, published, baskets_path)
    logger.info("run report: %s", report)
    mlflow_run = t.record_run(settings, as_of, ingest_report, published, baskets_path, timings, report)
    return {
        "as_of": as_of.isoformat(), "ingest": ingest_report, "published": published, "mlflow_run": mlflow_run,
        "report": str(report),
    }


@contextmanager
def _timed(timings: dict[str, float], stage: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = time.perf_counter() - start


@flow(name="prodassoc-backfill", flow_run_name="backfill-{start}-to-{end}")
def backfill(start: date, end: date, settings: Settings | None = None, force: bool = False) -> dict:
    """Run ``nightly`` for every date in [start, end] (both included), oldest first.

    Dates whose tables are already published are skipped unless ``force``. Stops at the
    first failing date; rerunning the backfill resumes there.

    Args:
        start: first run date, YYYY-MM-DD.
        end: last run date, YYYY-MM-DD, included.
        settings: leave empty: settings come from the worker's environment (PRODASSOC_* variables,
            README "Settings"); set only to override one run.
        force: rerun dates already published, replacing their partitions (default: skip them).
    """
    settings = settings or Settings()
    logger = get_run_logger()
    to_run, skipped = pipeline.backfill_dates(settings, start, end, force)
    logger.info(
        "backfill %s..%s: %d date(s) to run, %d already published and skipped%s",
        start, end, len(to_run), len(skipped), f" ({', '.join(map(str, skipped))})" if skipped else "",
    )
    runs = [nightly(as_of=d, settings=settings) for d in to_run]
    return {
        "ran": [d.isoformat() for d in to_run],
        "skipped": [d.isoformat() for d in skipped],
        "runs": runs,
    }


@flow(name="prodassoc-scheduled-nightly")
def scheduled_nightly(
    settings: Settings | None = None, as_of: date | None = None, timezone: str = "UTC"
) -> dict:
    """Entry point for schedules: ``as_of`` defaults to the run's scheduled date in ``timezone``.

    The logical date comes from the scheduler, not from the wall clock, so a late or
    retried run still processes the day it was scheduled for.

    Args:
        settings: leave empty: settings come from the worker's environment (PRODASSOC_* variables,
            README "Settings"); set only to override one run.
        as_of: leave empty for the scheduled date; YYYY-MM-DD to run another date.
        timezone: IANA zone of the schedule, e.g. Europe/London: which calendar day "scheduled" means.
    """
    return nightly(as_of=as_of or scheduled_date(timezone), settings=settings)


def scheduled_date(timezone: str) -> date:
    """The current flow run's scheduled date in ``timezone`` (a deployment run's logical date)."""
    from zoneinfo import ZoneInfo

    from prefect.runtime import flow_run

    return flow_run.scheduled_start_time.astimezone(ZoneInfo(timezone)).date()
