"""The production files without Docker or servers: the compose file, the GPU job template, the
Dockerfile, the deployment objects and `prodassoc deploy`'s refusal without PREFECT_API_URL.

Not marked `production`: these are fast and run everywhere. The commands that compose runs are
checked against deployments/commands.py, which the loopback tests (test_production_prefect.py,
test_production_mlflow.py) use to start the real servers and worker.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from deployments import commands

from conftest import REPO, venv_command

INFRA = REPO / "infra"
COMPOSE = yaml.safe_load((INFRA / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


# --- docker-compose.yml ---------------------------------------------------------------------------


def test_compose_has_the_single_host_services_each_with_image_and_command():
    assert {"prefect-db", "prefect-server", "prefect-worker", "deploy", "mlflow-db", "mlflow", "minio",
            "minio-init", "prefect-worker-gpu"} <= set(SERVICES)
    for name, service in SERVICES.items():
        assert service.get("image"), f"{name} has no image"
        assert service.get("command"), f"{name} has no command"
        for dependency in service.get("depends_on", {}):
            assert dependency in SERVICES, f"{name} depends on unknown {dependency}"


def test_compose_runs_the_commands_the_loopback_tests_run():
    assert SERVICES["prefect-server"]["command"] == commands.prefect_server("0.0.0.0", commands.PREFECT_PORT)
    assert SERVICES["prefect-worker"]["command"] == commands.prefect_worker(commands.CPU_POOL)
    assert SERVICES["prefect-worker-gpu"]["command"] == commands.prefect_worker(commands.GPU_POOL)
    assert SERVICES["deploy"]["command"] == ["prodassoc", "deploy"]
    assert SERVICES["mlflow"]["command"] == commands.mlflow_server(
        "0.0.0.0",
        commands.MLFLOW_PORT,
        "postgresql+psycopg2://mlflow:${MLFLOW_DB_PASSWORD:?set MLFLOW_DB_PASSWORD}@mlflow-db:5432/mlflow",
        "s3://${MLFLOW_BUCKET:-mlflow}/",
        allowed_hosts="${MLFLOW_ALLOWED_HOSTS:-mlflow:5000,localhost:5000,127.0.0.1:5000}",
        workers=2,
    )
    # and the loopback tests start theirs through the same functions
    prefect_test = (REPO / "tests" / "production" / "test_production_prefect.py").read_text()
    assert "commands.prefect_server(" in prefect_test and "commands.prefect_worker(" in prefect_test
    assert "commands.mlflow_server(" in (REPO / "tests" / "production" / "test_production_mlflow.py").read_text()


def test_compose_wires_postgres_s3_and_the_worker_environment():
    server_env = SERVICES["prefect-server"]["environment"]
    assert server_env["PREFECT_SERVER_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://prefect:")
    assert server_env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    mlflow_env = SERVICES["mlflow"]["environment"]
    assert mlflow_env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    worker_env = SERVICES["prefect-worker"]["environment"]
    assert worker_env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert worker_env["PRODASSOC_MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert worker_env["PRODASSOC_DATA_DIR"] == "/data"
    assert any(v.endswith(":/data") for v in SERVICES["prefect-worker"]["volumes"])
    assert SERVICES["prefect-worker"]["depends_on"]["deploy"]["condition"] == "service_completed_successfully"
    gpu = SERVICES["prefect-worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]


def test_compose_secrets_are_required_and_ports_bind_to_loopback_by_default():
    lines = (INFRA / "docker-compose.yml").read_text().splitlines()
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    references = re.findall(r"\$\{([A-Z0-9_]+)(:?[-?])?([^}]*)\}", text)
    secret = re.compile(r"PASSWORD|SECRET|AUTH_STRING|ACCESS_KEY")
    for name, op, _ in references:
        if secret.search(name):
            assert op == ":?", f"${{{name}}} is a secret: it must be required (${{{name}:?...}}), never defaulted"
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            assert port.startswith("${PUBLISH_ADDRESS:-127.0.0.1}:"), f"{name} publishes {port} on every interface"
    # every variable is documented, and listed in the example env file
    readme, example = (INFRA / "README.md").read_text(), (INFRA / ".env.example").read_text()
    for name in {n for n, _, _ in references}:
        assert f"`{name}`" in readme, f"${{{name}}} is not documented in infra/README.md"
        assert re.search(rf"^#? ?{name}=", example, re.M), f"${{{name}}} is missing from infra/.env.example"


def test_dockerfile_installs_what_the_compose_services_use():
    dockerfile = (INFRA / "Dockerfile").read_text()
    assert "torch==2.13.0" in dockerfile  # pinned first, as in the Makefile
    assert "psycopg2" in dockerfile and "boto3" in dockerfile  # postgresql+psycopg2:// and s3:// in mlflow
    for package in ("prodassoc_core", "tasks", "flows", "deployments"):
        assert f"COPY {package} {package}" in dockerfile


# --- the Kubernetes GPU base job template -----------------------------------------------------------


def test_k8s_gpu_template_is_a_valid_base_job_template_requesting_gpus():
    from prefect.server.schemas.actions import validate_base_job_template
    from prefect.utilities.templating import apply_values

    template = json.loads((INFRA / "k8s-gpu-base-job-template.json").read_text())
    validate_base_job_template(template)  # every placeholder is a declared variable
    defaults = {k: v["default"] for k, v in template["variables"]["properties"].items() if "default" in v}
    rendered = apply_values(template["job_configuration"], defaults)
    manifest = rendered["job_manifest"]
    assert (manifest["apiVersion"], manifest["kind"]) == ("batch/v1", "Job")
    pod = manifest["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["name"] == "prefect-job"  # what the Kubernetes worker requires
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    # one process per GPU: the Job runs torchrun (the worker turns the command into the container's args)
    assert "args" not in container and "command" not in container
    assert rendered["command"] == commands.torchrun_train(1)
    assert apply_values(template["job_configuration"], defaults | {"gpu_count": 4})["command"] == (
        "torchrun --standalone --nproc_per_node=4 -m flows.torchrun_engine")
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert rendered["env"] == {"PRODASSOC_DATA_DIR": "/data"}


# --- deployments, without a server ------------------------------------------------------------------


def test_deploy_config_comes_from_the_environment_and_is_checked(monkeypatch):
    from pydantic import ValidationError

    from deployments.production import DeployConfig

    monkeypatch.setenv("PRODASSOC_DEPLOY_CRON", "15 3 * * 1-5")
    monkeypatch.setenv("PRODASSOC_DEPLOY_TIMEZONE", "America/New_York")
    cfg = DeployConfig()
    assert (cfg.cron, cfg.timezone, cfg.cpu_pool, cfg.gpu_pool) == ("15 3 * * 1-5", "America/New_York", "cpu", "gpu")
    with pytest.raises(ValidationError, match="unknown time zone 'Mars/Olympus'"):
        DeployConfig(timezone="Mars/Olympus")
    with pytest.raises(ValidationError, match="not a cron expression: '61 2 \\* \\* \\*'"):
        DeployConfig(cron="61 2 * * *")


def test_deployments_run_module_entrypoints_on_the_cpu_pool_one_at_a_time(tmp_path):
    from prefect.client.schemas.objects import ConcurrencyLimitStrategy

    from deployments.production import DeployConfig, deployments
    from prodassoc_core.ops.settings import TrainingConfig

    training = TrainingConfig(schedule="0 4 * * 6", seed=3)
    nightly, backfill, train = deployments(DeployConfig(cron="30 1 * * *", timezone="Europe/London"), tmp_path, training)
    assert (nightly.name, backfill.name, train.name) == ("nightly", "backfill", "train")
    assert nightly.entrypoint == "flows.nightly.scheduled_nightly"
    assert backfill.entrypoint == "flows.nightly.backfill"
    assert train.entrypoint == "flows.train.train"
    (schedule,) = nightly.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("30 1 * * *", "Europe/London")
    assert nightly.parameters == {"timezone": "Europe/London"}
    assert not backfill.schedules
    for d in (nightly, backfill):
        assert (d.work_pool_name, d.work_queue_name) == ("cpu", "dated-runs")
    # training: the training schedule in the nightly's zone, on the gpu pool, seed from the settings
    (schedule,) = train.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 4 * * 6", "Europe/London")
    assert train.parameters == {"timezone": "Europe/London", "seed": 3}
    assert (train.work_pool_name, train.work_queue_name) == ("gpu", None)
    assert train.job_variables["command"] == "torchrun --standalone --nproc_per_node=1 -m flows.torchrun_engine"
    (_, _, train_4) = deployments(DeployConfig(gpus=4), tmp_path, training)
    assert train_4.job_variables["command"] == commands.torchrun_train(4) == (
        "torchrun --standalone --nproc_per_node=4 -m flows.torchrun_engine")
    for d in (nightly, backfill, train):
        assert d.concurrency_limit == 1
        assert d.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.ENQUEUE
        assert d.job_variables["env"]["PRODASSOC_DATA_DIR"] == str(tmp_path)
        assert d.job_variables["env"]["PREFECT_LOGGING_EXTRA_LOGGERS"] == "prodassoc"  # our logs in the UI
        assert d.storage is None  # imported from the installed package, nothing pulled


def test_train_deployment_checks_its_schedule_and_may_leave_the_seed_to_the_worker(tmp_path):
    from deployments.production import DeployConfig, train_deployment
    from prodassoc_core.ops.settings import TrainingConfig

    train = train_deployment(DeployConfig(), tmp_path, TrainingConfig())  # defaults: Sundays 03:00 UTC, no seed
    (schedule,) = train.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 3 * * 0", "UTC")
    assert train.parameters == {"timezone": "UTC"}  # the gpu worker's PRODASSOC_TRAINING__SEED then decides
    with pytest.raises(ValueError, match=r"not a cron expression: 'weekly' \(training.schedule"):
        train_deployment(DeployConfig(), tmp_path, TrainingConfig(schedule="weekly"))


def test_deploy_without_prefect_api_url_is_an_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path)  # no profile that could name a server
    out = subprocess.run(venv_command(["prodassoc", "deploy"]), env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "PREFECT_API_URL is not set" in out.stderr
    assert not Path(tmp_path / "prefect.db").exists()  # no ephemeral server was started instead


def test_every_third_party_image_is_pinned():
    """No `latest` and no untagged third-party image in the compose file (ours are built here)."""
    import re

    text = (REPO / "infra" / "docker-compose.yml").read_text()
    images = re.findall(r"image:\s*\$\{[A-Z_]+:-([^}]+)\}|image:\s*([^\s$]+)", text)
    third_party = [a or b for a, b in images if not (a or b).startswith("prodassoc:")]
    assert third_party and all(":" in i and not i.endswith(":latest") for i in third_party), third_party


def test_torchrun_engine_is_prefects_command_on_rank_0():
    """The `train` command's module: rank 0 runs prefect.engine, the others train (flows/torchrun_engine.py)."""
    source = (REPO / "flows" / "torchrun_engine.py").read_text()
    assert 'runpy.run_module("prefect.engine", run_name="__main__"' in source
    assert "retrain.train_rank(settings, as_of)" in source
    import flows.torchrun_engine  # noqa: F401  (imports cleanly)
