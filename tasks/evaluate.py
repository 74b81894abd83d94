"""Prefect tasks of the evaluation flow: each wraps one function of prodassoc_core.evaluation.harness."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from prodassoc_core.evaluation import harness
from prodassoc_core.ops import Settings


@task(name="prepare-split", cache_policy=NO_CACHE)
def prepare(settings: Settings, as_of: date, end: date | None) -> harness.Split:
    return harness.prepare(settings, as_of, end)


@task(name="publish-method", cache_policy=NO_CACHE)
def publish_method(settings: Settings, split: harness.Split, method: str) -> Path | str:
    return harness.publish_method(settings, split, method)


@task(name="score-method", cache_policy=NO_CACHE)
def score_method(settings: Settings, split: harness.Split, method: str, published: Path) -> dict:
    return harness.score_method(settings, split, method, published)


@task(name="report", cache_policy=NO_CACHE)
def report(
    settings: Settings, split: harness.Split, results: pl.DataFrame, skipped: dict[str, str] | None = None
) -> tuple[Path, Path]:
    return harness.write_report(settings, split, results, skipped)


@task(name="log-mlflow", cache_policy=NO_CACHE)
def log_results(settings: Settings, split: harness.Split, results: pl.DataFrame, artifacts: list[Path]) -> list[str]:
    return harness.log_results(settings, split, results, artifacts)
