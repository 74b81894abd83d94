"""The nightly flow: ``prodassoc_core.pipeline.stages.nightly_stages`` with each stage a Prefect task, then
the run's record (Prefect artifact, MLflow run), for one as_of date.

``backfill`` runs ``nightly`` once per date of a range, in order. Both are rerun-safe:
see ``prodassoc_core.pipeline.stages`` for what a rerun skips and replaces.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import date

from prefect import flow, get_run_logger

from prodassoc_core.ops import Settings, from_environment
from prodassoc_core.pipeline import stages
from tasks import nightly as t


@flow(name="prodassoc-nightly", flow_run_name="nightly-{as_of}")
def nightly(as_of: date, settings: Settings | None = None) -> dict:
    """Run the nightly chain for ``as_of``; the training window is everything before it.

    Holds the run lock for ``as_of`` throughout: a second run for the same date fails at
    once with RunLockedError naming the holder (or waits ``settings.run_lock_timeout_s``).
    Returns a summary: ingestion counts, the published partitions, the MLflow run id and the report path.
    What is served follows the serving plan (prodassoc_core/models/serving.py); with a served student
    its ``product_embeddings`` are published too. After publishing, the run's counts, stage
    timings and what was served are recorded as the Prefect Markdown artifact ``nightly-<as_of>``
    and as an MLflow run in experiment ``prodassoc-nightly``, and the run's report page is written
    to ``<data>/reports/nightly_as_of=<as_of>.html`` (returned as ``report``, linked from the artifact).

    Args:
        as_of: the run date, YYYY-MM-DD: trains on orders before it and publishes run_date=as_of.
        settings: leave empty: settings come from the worker's environment (PRODASSOC_* variables,
            README "Settings"); set only to override one run.
    """
    settings = settings or from_environment()
    logger = get_run_logger()
    result = stages.nightly_stages(settings, as_of, t.PrefectStages())
    for p in result.published:
        logger.info("published %s: %d rows at %s", p.table, p.rows, p.path)
    logger.info("run report: %s", result.report)
    ingest_report, published = asdict(result.ingest), [asdict(p) for p in result.published]
    mlflow_run = t.record_run(settings, as_of, ingest_report, published, result.baskets_path, result.timings,
                              result.report)
    return {
        "as_of": as_of.isoformat(), "ingest": ingest_report, "published": published, "mlflow_run": mlflow_run,
        "report": str(result.report), "served": result.served,
    }


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
    settings = settings or from_environment()
    logger = get_run_logger()
    to_run, skipped = stages.backfill_dates(settings, start, end, force)
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
