"""The nightly flow: ingest -> validate -> baskets -> mine -> publish, for one as_of date."""

from __future__ import annotations

from datetime import date

from prefect import flow, get_run_logger

from prodassoc_core.contracts import ASSOCIATION_RULES, PRODUCT_ASSOCIATIONS
from prodassoc_core.settings import Settings
from tasks import nightly as t


@flow(name="prodassoc-nightly")
def nightly(as_of: date, settings: Settings | None = None) -> dict:
    """Run the nightly chain for ``as_of``; the training window is everything before it.

    Returns a summary: ingestion counts and the published partitions.
    """
    settings = settings or Settings()
    logger = get_run_logger()
    ingest_report = t.ingest_landing(settings, as_of)
    logger.info(
        "ingested %d file(s): %d rows read, %d accepted, %d quarantined",
        ingest_report["files_ingested"],
        ingest_report["rows_read"],
        ingest_report["rows_accepted"],
        ingest_report["rows_quarantined"],
    )
    baskets_path = t.build_baskets(settings, as_of)
    rules = t.mine_rules.submit(settings, baskets_path, as_of)
    pairs = t.product_associations.submit(settings, baskets_path, as_of)
    staged = {ASSOCIATION_RULES.name: rules.result(), PRODUCT_ASSOCIATIONS.name: pairs.result()}
    published = t.publish(settings, as_of, staged)
    for p in published:
        logger.info("published %s: %d rows at %s", p["table"], p["rows"], p["path"])
    return {"as_of": as_of.isoformat(), "ingest": ingest_report, "published": published}


@flow(name="prodassoc-scheduled-nightly")
def scheduled_nightly(
    settings: Settings | None = None, as_of: date | None = None, timezone: str = "UTC"
) -> dict:
    """Entry point for schedules: ``as_of`` defaults to the run's scheduled date in ``timezone``.

    The logical date comes from the scheduler, not from the wall clock, so a late or
    retried run still processes the day it was scheduled for.
    """
    if as_of is None:
        from zoneinfo import ZoneInfo

        from prefect.runtime import flow_run

        as_of = flow_run.scheduled_start_time.astimezone(ZoneInfo(timezone)).date()
    return nightly(as_of=as_of, settings=settings)
