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
def product_associations(settings: Settings, baskets_path: Path, as_of: date) -> Path:
    return pipeline.associate(settings, baskets_path, as_of)


@task(name="publish", cache_policy=NO_CACHE)
def publish(settings: Settings, as_of: date, staged: dict[str, Path]) -> list[dict]:
    return [asdict(r) for r in pipeline.publish(settings, as_of, staged)]
