"""The training flow: the language-model chain for one as_of, registered, behind the champion gate.

    train(as_of) --train_models--> MLM, teacher, student registered in MLflow
                                   (prodassoc-mlm, -teacher, -student); the student becomes
                                   @champion only if it beats the current one
                 --record_training--> Prefect Markdown artifact train-<as_of>

The `train` deployment (deployments/production.py) runs it on the gpu work pool on the cron
``training.schedule``; the nightly flow then publishes the champion's product_embeddings.
"""

from __future__ import annotations

import time
from datetime import date

from prefect import flow, get_run_logger

from flows.nightly import scheduled_date
from prodassoc_core.ops import Settings, from_environment
from prodassoc_core.pipeline import train_summary
from tasks import train as t


def _train_run_name() -> str:
    from prefect.runtime import flow_run

    return f"train-{flow_run.parameters.get('as_of') or 'scheduled'}"


@flow(name="prodassoc-train", flow_run_name=_train_run_name)
def train(
    as_of: date | None = None,
    seed: int | None = None,
    settings: Settings | None = None,
    timezone: str = "UTC",
    progress: bool = False,
    promote: bool = True,
) -> dict:
    """Train the chain on everything landed before ``as_of`` and apply the champion gate.

    ``as_of`` None: the run's scheduled date in ``timezone`` (scheduled deployment runs), as
    ``scheduled_nightly`` does. ``seed`` overrides ``settings.training.seed``; one of them is
    required. ``promote`` False: a trial run, the gate decides and records but promotes nothing.
    Returns ``train_summary.summary``: versions, gate scores and verdict, stage timings.

    Args:
        as_of: leave empty for the scheduled date; YYYY-MM-DD trains on orders before that date.
        seed: integer every stage derives its seeds from; empty: PRODASSOC_TRAINING__SEED on the worker.
        settings: leave empty: settings come from the worker's environment (PRODASSOC_* variables,
            README "Settings"); set only to override one run.
        timezone: IANA zone of the schedule, e.g. Europe/London: which calendar day "scheduled" means.
        progress: tqdm bars (a terminal); off in deployments, where progress is a log line.
        promote: off for a trial run: the serving gate decides and records, nothing is promoted.
    """
    settings = settings or from_environment()
    if seed is not None:
        settings = settings.model_copy(update={"training": settings.training.model_copy(update={"seed": seed})})
    as_of = as_of or scheduled_date(timezone)
    logger = get_run_logger()
    start = time.perf_counter()
    report = t.train_models(settings, as_of, progress=progress, promote=promote)
    total = time.perf_counter() - start
    names = train_summary.registered_names(settings.training)
    logger.info(
        "as_of %s: registered %s in %.0f s",
        as_of, ", ".join(f"{names[s]} v{v}" for s, v in report.versions.items()), total,
    )
    from prodassoc_core.models import budget_lines

    for line in budget_lines(report.chain):  # how far each stage got within its time budget
        logger.info("%s", line)
    logger.info("gate: %s", train_summary.verdict(report, settings.training))
    t.record_training(settings, report, total)
    return train_summary.summary(report, settings.training) | {"total_seconds": total}
