"""Test environment: offline, quiet libraries, one torch thread, Prefect in a temporary home."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="prodassoc-prefect-"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample" / "online_retail_sample.parquet"


def shared_data_dir() -> Path | None:
    """../shared/data next to the repository, or $PRODASSOC_SHARED_DIR/data; None when absent."""
    candidates = []
    if os.environ.get("PRODASSOC_SHARED_DIR"):
        candidates.append(Path(os.environ["PRODASSOC_SHARED_DIR"]) / "data")
    candidates.append(REPO.parent / "shared" / "data")
    return next((c for c in candidates if c.is_dir()), None)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("../shared/data is not present on this machine")
    return path


@pytest.fixture(scope="session")
def prefect_harness():
    """Prefect's ephemeral API in a temporary database, once per session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
