"""Prefect tasks: the nightly's stages (prodassoc_core.pipeline.stages) as tasks, and the run's record.

Tasks hand each other paths and small summaries, never large frames. Caching is
off: every stage is already incremental or rerun-safe on its own (the ingestion
manifest, partition replacement), and a stale cache hit would hide new data.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path
from time import perf_counter
from typing import TypeVar

from prefect import Task, task
from prefect.cache_policies import NO_CACHE

from prodassoc_core.ops import Settings
from prodassoc_core.pipeline import stages

T = TypeVar("T")


class PrefectStages(stages.StageRunner):
    """Runs each stage of ``stages.nightly_stages`` as a Prefect task of the stage's name (what the UI
    shows), timing it; ``side_by_side`` submits its stages to the flow's task runner together."""

    def call(self, name: str, fn: Callable[..., T], *args) -> T:
        return super().call(name, _task(name, fn), *args)

    def side_by_side(self, *calls: tuple[str, Callable, tuple]) -> list:
        submitted = perf_counter()
        futures = []
        for name, fn, args in calls:
            future = _task(name, fn).submit(*args)
            future.add_done_callback(
                lambda _, key=stages.timing_key(name): self.timings.setdefault(key, perf_counter() - submitted))
            futures.append(future)
        return [future.result() for future in futures]


def _task(name: str, fn: Callable) -> Task:
    return task(fn, name=name, cache_policy=NO_CACHE)


@task(name="record-run", cache_policy=NO_CACHE)
def record_run(
    settings: Settings, as_of: date, ingest_report: dict, published: list[dict], baskets_path: Path,
    timings: dict[str, float], report: Path | None = None,
) -> str:
    """The run's counts, timings and model versions as one MLflow run (experiment prodassoc-nightly)
    and as the Markdown artifact ``nightly-<as_of>`` (linking the HTML ``report`` when given);
    returns the MLflow run id.

    The artifact is written even when MLflow is unreachable (saying so), then the error is raised.
    """
    from prefect.artifacts import create_markdown_artifact
    from prefect.runtime import flow_run

    from prodassoc_core.data import PRODUCT_EMBEDDINGS
    from prodassoc_core.models import tracking
    from prodassoc_core.pipeline import run_summary

    served = stages.served_summary(baskets_path)
    model = run_summary.served_model(served)
    embedded = [p["path"] for p in published if p["table"] == PRODUCT_EMBEDDINGS.name]
    embedding_model = stages.embedding_model(embedded[0]) if embedded else None
    metrics = run_summary.nightly_metrics(ingest_report, published, stages.basket_count(baskets_path), timings)
    params = run_summary.nightly_params(
        as_of, served, settings.lookback_days, settings.mining, settings.associations, embedding_model,
        engine=settings.engine,
    )
    key = run_summary.artifact_key(as_of)
    tags = {"model": model, "prefect_flow_run_id": str(flow_run.id or ""), "prefect_artifact": key}
    if embedding_model:
        tags["embedding_model"] = embedding_model
    uri = run_summary.redact_uri(settings.tracking_uri)
    where = f"`{uri}`, experiment `{run_summary.NIGHTLY_EXPERIMENT}`"
    try:
        run_id = tracking.log_run(
            settings.tracking_uri,
            run_summary.NIGHTLY_EXPERIMENT,
            settings.data_dir / "mlartifacts",
            run_name=f"nightly as_of={as_of.isoformat()}",
            params=params,
            metrics=metrics,
            tags=tags,
        )
    except Exception as exc:
        reason = str(exc).replace(settings.tracking_uri, uri)
        error = f"{where}: **logging failed** ({type(exc).__name__}: {reason})"
        create_markdown_artifact(
            run_summary.nightly_markdown(
                as_of, served, metrics, ingest_report, published, error, embedding_model, report
            ),
            key=key, description=f"prodassoc nightly {as_of.isoformat()} (MLflow logging failed)",
        )
        raise
    create_markdown_artifact(
        run_summary.nightly_markdown(
            as_of, served, metrics, ingest_report, published, f"{where}, run `{run_id}`", embedding_model, report
        ),
        key=key, description=f"prodassoc nightly {as_of.isoformat()}: counts, quarantine, timings",
    )
    return run_id
