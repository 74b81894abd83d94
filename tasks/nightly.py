"""Prefect tasks: each wraps one stage of prodassoc_core.pipeline.

Tasks hand each other paths and small summaries, never large frames. Caching is
off: every stage is already incremental or rerun-safe on its own (the ingestion
manifest, partition replacement), and a stale cache hit would hide new data.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import date
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from prodassoc_core import pipeline
from prodassoc_core.settings import Settings


@task(name="ingest", cache_policy=NO_CACHE)
def ingest_landing(settings: Settings, as_of: date) -> dict:
    return asdict(pipeline.ingest_landing(settings, as_of))


@task(name="baskets", cache_policy=NO_CACHE)
def build_baskets(settings: Settings, as_of: date) -> Path:
    return pipeline.build_baskets(settings, as_of)


@task(name="mine-rules", cache_policy=NO_CACHE)
def mine_rules(settings: Settings, baskets_path: Path, as_of: date) -> Path:
    return pipeline.mine(settings, baskets_path, as_of)


@task(name="product-associations", cache_policy=NO_CACHE)
def product_associations(settings: Settings, baskets_path: Path, as_of: date) -> dict[str, Path]:
    """product_associations (and the served student's product_embeddings), as the serving plan says."""
    return pipeline.associate(settings, baskets_path, as_of)


@task(name="bundles", cache_policy=NO_CACHE)
def bundles(settings: Settings, baskets_path: Path, associations_path: Path) -> Path:
    return pipeline.bundle(settings, baskets_path, associations_path)


@task(name="publish", cache_policy=NO_CACHE)
def publish(settings: Settings, as_of: date, staged: dict[str, Path]) -> list[dict]:
    return [asdict(r) for r in pipeline.publish(settings, as_of, staged)]


@task(name="run-report", cache_policy=NO_CACHE)
def run_report(settings: Settings, as_of: date, ingest_report: dict, published: list[dict], baskets_path: Path) -> Path:
    """The run's HTML report page, ``<data>/reports/nightly_as_of=<as_of>.html``; returns its path."""
    return pipeline.write_run_report(settings, as_of, ingest_report, published, pipeline.served_summary(baskets_path))


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
    import pyarrow.parquet as pq
    from prefect.artifacts import create_markdown_artifact
    from prefect.runtime import flow_run

    from prodassoc_core import run_summary, tracking
    from prodassoc_core.contracts import PRODUCT_EMBEDDINGS

    served = pipeline.served_summary(baskets_path)
    model = run_summary.served_model(served)
    embedded = [p["path"] for p in published if p["table"] == PRODUCT_EMBEDDINGS.name]
    embedding_model = pipeline.embedding_model(embedded[0]) if embedded else None
    metrics = run_summary.nightly_metrics(ingest_report, published, pq.read_metadata(baskets_path).num_rows, timings)
    params = run_summary.nightly_params(
        as_of, served, settings.lookback_days, settings.mining, settings.associations, embedding_model
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
