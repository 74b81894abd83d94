"""The production path end to end on loopback: a real `prefect server start`, `prodassoc deploy`,
a process worker on the `cpu` pool, and `nightly` and `backfill` runs triggered through the API.

Marked `production`: runs when $CI is set or PRODASSOC_PRODUCTION_TESTS=1 (about a minute).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from datetime import date

import pyarrow.parquet as pq
import pytest

from deployments import commands
from deployments import production as prod
from prodassoc_core.models import tracking
from prodassoc_core.ops.settings import Settings
from prodassoc_core.pipeline import run_summary, stages

from conftest import free_port, land, log_tail, production, start_process, stop_process, venv_command, wait_http

pytestmark = production

# the small synthetic landing zone (conftest.land: 2024-01-01 .. 2024-01-06): what is under test is
# the server, the deployments, the worker and its queue, not the nightly on a real catalog
NIGHTLY_AS_OF = date(2024, 1, 5)
BACKFILL = (date(2024, 1, 5), date(2024, 1, 6))  # overlaps the nightly's date on purpose: one skipped, one run
RUN_TIMEOUT_S = 150
AUTH = "prodassoc:loopback-test"  # basic auth on, as in infra/docker-compose.yml


@pytest.fixture(scope="module")
def server(tmp_path_factory, migrated_prefect_db):
    """`prefect server start` on 127.0.0.1, SQLite in a temporary PREFECT_HOME (a copy of a
    migrated database: the first start's migrations are Prefect's, not under test); yields (api_url, env)."""
    home = tmp_path_factory.mktemp("prefect-server")
    shutil.copyfile(migrated_prefect_db, home / "prefect.db")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",  # the UI is not under test; skips copying its assets
        "PREFECT_SERVER_API_AUTH_STRING": AUTH,
        "DO_NOT_TRACK": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    log = home / "server.log"
    proc = start_process(commands.prefect_server("127.0.0.1", port), env, log)
    try:
        wait_http(f"{api}/health", proc, log, timeout_s=90)
        yield api, env | {"PREFECT_API_URL": api, "PREFECT_API_AUTH_STRING": AUTH}
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def deployed(server, tmp_path_factory):
    """A landing zone (conftest.land), `prodassoc deploy` run against the server, a cpu worker polling."""
    api, env = server
    data = tmp_path_factory.mktemp("prod-data")
    land(Settings(data_dir=data).landing_dir)
    deploy = ["prodassoc", "--data-dir", str(data), "deploy", "--cron", "30 1 * * *", "--timezone", "Europe/London"]
    out = subprocess.run(venv_command(deploy), env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    log = tmp_path_factory.mktemp("prefect-worker") / "worker.log"
    worker_env = env | {"PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_HEARTBEAT_SECONDS": "5"}
    worker = start_process(commands.prefect_worker(commands.CPU_POOL, name="test-cpu"), worker_env, log)
    try:
        yield api, data, out.stdout, worker, log
    finally:
        stop_process(worker)


@contextmanager
def _client(api: str):
    """A sync client for this server, whatever another fixture (the test harness) has set."""
    from prefect import get_client

    with _bound(api), get_client(sync_client=True) as client:
        yield client


def _bound(api: str):
    """This process's Prefect settings pointed at the loopback server (over the test harness's)."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    return temporary_settings({PREFECT_API_URL: api, PREFECT_API_AUTH_STRING: AUTH})


def _wait_final(api: str, run_ids: list, worker, log) -> list:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    with _client(api) as client:
        while time.monotonic() < deadline:
            runs = [client.read_flow_run(i) for i in run_ids]
            if all(r.state and r.state.is_final() for r in runs):
                return runs
            if worker.poll() is not None:
                pytest.fail(f"worker exited with {worker.returncode}:\n{log_tail(log)}")
            time.sleep(1)
    pytest.fail(f"runs not finished within {RUN_TIMEOUT_S} s: {[r.state for r in runs]}\n{log_tail(log)}")


def test_deploy_registers_pools_queue_and_deployments(deployed):
    api, data, stdout, _, _ = deployed
    assert prod.NIGHTLY in stdout and prod.BACKFILL in stdout and prod.TRAIN in stdout
    with _client(api) as client:
        pools = {p.name: p for p in client.read_work_pools()}
        assert pools[commands.CPU_POOL].type == pools[commands.GPU_POOL].type == "process"
        queue = client.read_work_queue_by_name("dated-runs", work_pool_name=commands.CPU_POOL)
        assert queue.concurrency_limit == 1
        nightly = client.read_deployment_by_name(prod.NIGHTLY)
        backfill = client.read_deployment_by_name(prod.BACKFILL)
        train = client.read_deployment_by_name(prod.TRAIN)
    # training: on the gpu pool, the default training schedule in the nightly's zone
    assert (train.entrypoint, train.work_pool_name) == ("flows.train.train", commands.GPU_POOL)
    (schedule,) = train.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 3 * * 0", "Europe/London")
    assert train.global_concurrency_limit.limit == 1 and not train.pull_steps
    assert train.job_variables["env"]["PRODASSOC_DATA_DIR"] == str(data.resolve())
    (schedule,) = nightly.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("30 1 * * *", "Europe/London")
    assert nightly.parameters == {"timezone": "Europe/London"}
    for d, entrypoint in ((nightly, "flows.nightly.scheduled_nightly"), (backfill, "flows.nightly.backfill")):
        assert d.entrypoint == entrypoint and not d.pull_steps
        assert (d.work_pool_name, d.work_queue_name) == (commands.CPU_POOL, "dated-runs")
        assert d.global_concurrency_limit.limit == 1
        assert d.job_variables["env"]["PRODASSOC_DATA_DIR"] == str(data.resolve())
    assert not backfill.schedules
    # and the API refuses a client without the auth string
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(f"{api}/work_pools/filter", data=b"{}", method="POST"), timeout=5)
    assert refused.value.code == 401
    assert set(backfill.parameter_openapi_schema["required"]) == {"start", "end"}


def test_nightly_and_backfill_run_on_the_worker_one_at_a_time(deployed):
    from prefect.deployments import run_deployment

    api, data, _, worker, log = deployed
    with _bound(api):
        nightly = run_deployment(prod.NIGHTLY, parameters={"as_of": NIGHTLY_AS_OF.isoformat()}, timeout=0)
        backfill = run_deployment(
            prod.BACKFILL, parameters={"start": BACKFILL[0].isoformat(), "end": BACKFILL[1].isoformat()}, timeout=0
        )
    nightly, backfill = _wait_final(api, [nightly.id, backfill.id], worker, log)
    assert nightly.state.is_completed(), f"{nightly.state}\n{log_tail(log)}"
    assert backfill.state.is_completed(), f"{backfill.state}\n{log_tail(log)}"

    # never in flight together: the shared queue hands out one run at a time, oldest first
    assert nightly.end_time <= backfill.start_time

    settings = Settings(data_dir=data)
    for day in BACKFILL:
        assert stages.is_published(settings, day)
        rules = settings.warehouse_dir / "association_rules" / f"run_date={day}" / "data.parquet"
        assert pq.read_metadata(rules).num_rows > 0
    # the backfill skipped the date the nightly had published: one MLflow run and artifact per date
    runs = tracking.runs(settings.tracking_uri, run_summary.NIGHTLY_EXPERIMENT)
    assert sorted(r.data.params["as_of"] for r in runs) == [d.isoformat() for d in BACKFILL]
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with _client(api) as client:
        keys = {a.key for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_="nightly-%")))}
    assert keys == {f"nightly-{d.isoformat()}" for d in BACKFILL}
