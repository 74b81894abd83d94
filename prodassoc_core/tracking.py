"""MLflow I/O: the only module that talks to the tracking server.

The default backend is a SQLite database under the data directory, with artifacts in
``<data_dir>/mlartifacts`` (set per experiment, so nothing lands in the working
directory). Any ``tracking_uri`` MLflow accepts works, e.g. an ``http://`` server.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def _client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def experiment_id(tracking_uri: str, name: str, artifact_root: Path) -> str:
    """The id of experiment ``name``, created with its artifacts under ``artifact_root``."""
    client = _client(tracking_uri)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    artifact_root.mkdir(parents=True, exist_ok=True)
    return client.create_experiment(name, artifact_location=artifact_root.resolve().as_uri())


def log_run(
    tracking_uri: str,
    experiment: str,
    artifact_root: Path,
    run_name: str,
    params: Mapping[str, object],
    metrics: Mapping[str, float | int],
    tags: Mapping[str, str] | None = None,
    artifacts: list[Path] | None = None,
) -> str:
    """One finished run with params, finite metrics, tags and artifact files; returns its id."""
    from mlflow.entities import Metric, Param, RunTag

    client = _client(tracking_uri)
    run = client.create_run(
        experiment_id(tracking_uri, experiment, artifact_root), run_name=run_name, tags=dict(tags or {})
    )
    run_id = run.info.run_id
    finite = {k: float(v) for k, v in metrics.items() if v is not None and not math.isnan(float(v))}
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, 0, 0) for k, v in sorted(finite.items())],
        params=[Param(k, str(v)) for k, v in sorted(params.items())],
        tags=[RunTag(k, v) for k, v in sorted((tags or {}).items())],
    )
    for path in artifacts or []:
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id)
    return run_id


def runs(tracking_uri: str, experiment: str) -> list:
    """All runs of an experiment (newest first), for reports and tests."""
    client = _client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    return client.search_runs([found.experiment_id], order_by=["attributes.start_time DESC"])
