"""Prefect tasks of the training flow: the retraining run, and its Markdown artifact.

No caching and no retries: a retry would retrain (and register new versions) behind the
operator's back, and the chain already resumes from its own checkpoints when the flow is rerun.
"""

from __future__ import annotations

from datetime import date

from prefect import task
from prefect.cache_policies import NO_CACHE

from prodassoc_core.ops import Settings


@task(name="train-models", cache_policy=NO_CACHE, retries=0)
def train_models(settings: Settings, as_of: date, progress: bool = False, promote: bool = True):
    """``retrain.train_models``: data, MLM -> teacher -> student -> GNN, registration, serving gate."""
    from prodassoc_core.pipeline import retrain

    return retrain.train_models(settings, as_of, progress=progress, promote=promote)


@task(name="record-training", cache_policy=NO_CACHE)
def record_training(settings: Settings, report, total_seconds: float) -> str:
    """The run's page as the Markdown artifact ``train-<as_of>``; returns its key."""
    from prefect.artifacts import create_markdown_artifact

    from prodassoc_core.pipeline import run_summary, train_summary

    key = train_summary.artifact_key(report.as_of)
    where = f"`{run_summary.redact_uri(settings.tracking_uri)}`, experiment `{settings.training.experiment}`"
    create_markdown_artifact(
        train_summary.training_markdown(report, settings.training, where, total_seconds),
        key=key,
        description=f"prodassoc training {report.as_of.isoformat()}: "
        + ("promoted" if report.decision.promoted else "kept as a candidate"),
    )
    return key
