"""Production deployments: work pools, a queue, and the `nightly`, `backfill` and `train` deployments.

``prodassoc deploy`` calls :func:`register`, which creates (or updates) everything on the
Prefect API that ``PREFECT_API_URL`` points to. Workers then run the flows:

    prefect worker start --pool cpu --type process      # any host with the project installed
    prefect worker start --pool gpu --type process      # a GPU host (the training flow)

The entrypoints are module paths (``flows.nightly.scheduled_nightly``): a process worker
imports them from the installed ``prodassoc`` package, so no code is copied and no path of
the deploying machine is baked into the deployment. See deployments/README.md for why these
are Python calls rather than a ``prefect.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from deployments.commands import CPU_POOL, GPU_POOL, torchrun_train
from prodassoc_core.ops import TrainingConfig, check_spark_master

NIGHTLY = "prodassoc-scheduled-nightly/nightly"
BACKFILL = "prodassoc-backfill/backfill"
TRAIN = "prodassoc-train/train"


class MissingApiUrl(RuntimeError):
    """``PREFECT_API_URL`` is not set: there is no server to register with."""


class DeployConfig(BaseSettings):
    """Where and when the deployments run; every field from ``PRODASSOC_DEPLOY_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="PRODASSOC_DEPLOY_")

    cron: str = Field("0 2 * * *", description="nightly schedule (cron, in `timezone`)")
    timezone: str = Field("UTC", description="IANA zone of the schedule; as_of is the scheduled date there")
    cpu_pool: str = CPU_POOL
    gpu_pool: str = GPU_POOL
    gpus: int = Field(1, ge=1, description="GPUs of a `train` run: torchrun --nproc_per_node (DDP when > 1)")
    queue: str = Field(
        "dated-runs",
        description="queue of the cpu pool shared by nightly and backfill, concurrency 1: "
        "no two runs that publish dates are ever in flight together",
    )

    engine: str = Field("local", pattern="^(local|spark)$",
                        description="engine of the nightly and backfill runs (docs/spark.md): local or spark")
    spark_master: str | None = Field(
        None, description="spark.master of those runs (engine spark), e.g. yarn or spark://host:7077; "
        "default: the worker's PRODASSOC_SPARK__MASTER or local[2]")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name such as Europe/London)") from None
        return value

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        return check_cron(value)

    @field_validator("spark_master")
    @classmethod
    def _master_url(cls, value: str | None) -> str | None:
        return None if value is None else check_spark_master(value)


def check_cron(value: str, setting: str = "") -> str:
    """``value`` if it is a cron expression Prefect accepts; ValueError naming ``setting`` otherwise."""
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    try:  # fail before any API call, naming the setting
        CronSchedule(cron=value)
    except ValidationError:
        raise ValueError(f"not a cron expression: {value!r}" + (f" ({setting})" if setting else "")) from None
    return value


def _job_env(data_dir: Path, cfg: DeployConfig | None = None) -> dict[str, Any]:
    # Only the data directory (and the engine of dated runs) travels in the deployment (visible in
    # the UI); secrets such as database passwords and S3 keys stay in the worker's environment,
    # which flow runs inherit.
    env = {
        "PRODASSOC_DATA_DIR": str(data_dir),
        # the project's log lines reach the Prefect UI; no MLflow download progress bars in the worker's log
        "PREFECT_LOGGING_EXTRA_LOGGERS": "prodassoc",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }
    if cfg is not None and cfg.engine == "spark":  # the worker's host is the Spark driver (docs/spark.md)
        env["PRODASSOC_ENGINE"] = "spark"
        if cfg.spark_master:
            env["PRODASSOC_SPARK__MASTER"] = cfg.spark_master
    return {"env": env}


def _one_at_a_time():
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    # ENQUEUE: a run that finds the slot taken waits its turn instead of being cancelled.
    return ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)


def operator_form(deployment):
    """Keep the deployment's run form to what an operator sets: the flows' ``settings`` parameter
    (a whole Settings object, which the worker's PRODASSOC_* environment supplies) is left out of
    the parameter schema, with the definitions only it used. Returns the deployment."""
    import json

    schema = deployment._parameter_openapi_schema  # what `deploy` sends as the run form
    schema.properties.pop("settings", None)
    used = json.dumps(schema.properties)
    schema.definitions = {k: v for k, v in (schema.definitions or {}).items() if f"/{k}\"" in used}
    return deployment


def nightly_deployment(cfg: DeployConfig, data_dir: Path):
    """`nightly` on the cpu pool: the cron schedule in cfg.timezone, as_of = the scheduled date.

    A manual run may pass ``as_of`` to process another date.
    """
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron

    from flows.nightly import scheduled_nightly

    return operator_form(scheduled_nightly.to_deployment(
        name="nightly",
        schedule=Cron(cfg.cron, timezone=cfg.timezone),
        parameters={"timezone": cfg.timezone},
        concurrency_limit=_one_at_a_time(),
        tags=["prodassoc", "nightly"],
        work_pool_name=cfg.cpu_pool,
        work_queue_name=cfg.queue,
        job_variables=_job_env(data_dir, cfg),
        entrypoint_type=EntrypointType.MODULE_PATH,
    ))


def backfill_deployment(cfg: DeployConfig, data_dir: Path):
    """`backfill` on the cpu pool, run on demand with ``start`` and ``end`` (and ``force``)."""
    from prefect.deployments.runner import EntrypointType

    from flows.nightly import backfill

    return operator_form(backfill.to_deployment(
        name="backfill",
        concurrency_limit=_one_at_a_time(),
        tags=["prodassoc", "backfill"],
        work_pool_name=cfg.cpu_pool,
        work_queue_name=cfg.queue,
        job_variables=_job_env(data_dir, cfg),
        entrypoint_type=EntrypointType.MODULE_PATH,
    ))


def train_deployment(cfg: DeployConfig, data_dir: Path, training: TrainingConfig):
    """`train` on the gpu pool: cron ``training.schedule`` in cfg.timezone (the nightly's zone),
    as_of = the scheduled date. One run at a time (ENQUEUE); no queue shared with the dated runs:
    training writes models and the registry, not published partitions.

    ``training.seed``, when set where `prodassoc deploy` runs, is stored as the ``seed`` parameter
    (visible in the UI); otherwise the gpu worker's PRODASSOC_TRAINING__SEED must supply it. A
    manual run may pass ``as_of`` and ``seed``.
    """
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron

    from flows.train import train

    schedule = check_cron(training.schedule, "training.schedule, PRODASSOC_TRAINING__SCHEDULE")
    parameters: dict[str, Any] = {"timezone": cfg.timezone}
    if training.seed is not None:
        parameters["seed"] = training.seed
    return operator_form(train.to_deployment(
        name="train",
        schedule=Cron(schedule, timezone=cfg.timezone),
        parameters=parameters,
        concurrency_limit=_one_at_a_time(),
        tags=["prodassoc", "train"],
        work_pool_name=cfg.gpu_pool,
        # one process per GPU (DDP for MLM, teacher and student); rank 0 runs the flow
        job_variables=_job_env(data_dir) | {"command": torchrun_train(cfg.gpus)},
        entrypoint_type=EntrypointType.MODULE_PATH,
    ))


def deployments(cfg: DeployConfig, data_dir: Path, training: TrainingConfig) -> list:
    """nightly and backfill on the cpu pool, train on the gpu pool."""
    return [nightly_deployment(cfg, data_dir), backfill_deployment(cfg, data_dir),
            train_deployment(cfg, data_dir, training)]


def api_url() -> str:
    """The Prefect API to register with; a missing URL is an error, never the ephemeral API."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise MissingApiUrl(
            "PREFECT_API_URL is not set: point it at the Prefect server to deploy to, "
            "e.g. PREFECT_API_URL=http://127.0.0.1:4200/api (start one with `prefect server start`)"
        )
    return url


def ensure_pools(cfg: DeployConfig) -> dict[str, str]:
    """Create the cpu and gpu process pools and the shared queue (concurrency 1) if missing.

    An existing pool is left as it is (an operator may have made `gpu` a Kubernetes pool with
    infra/k8s-gpu-base-job-template.json); the queue's concurrency limit is always reset to 1.
    Returns {pool: "created" | "exists"}.
    """
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    done = {}
    with get_client(sync_client=True) as client:
        for pool, description in (
            (cfg.cpu_pool, "prodassoc nightly and backfill: process workers on CPU hosts"),
            (cfg.gpu_pool, "prodassoc training: process workers on GPU hosts"),
        ):
            try:
                client.create_work_pool(
                    WorkPoolCreate(
                        name=pool,
                        type=ProcessWorker.type,
                        description=description,
                        base_job_template=ProcessWorker.get_default_base_job_template(),
                    )
                )
                done[pool] = "created"
            except ObjectAlreadyExists:
                done[pool] = "exists"
        try:
            queue = client.read_work_queue_by_name(cfg.queue, work_pool_name=cfg.cpu_pool)
            if queue.concurrency_limit != 1:
                client.update_work_queue(queue.id, concurrency_limit=1)
        except ObjectNotFound:
            client.create_work_queue(
                cfg.queue,
                work_pool_name=cfg.cpu_pool,
                concurrency_limit=1,
                description="nightly and backfill runs, one at a time",
            )
    return done


def register(cfg: DeployConfig, data_dir: Path, training: TrainingConfig) -> dict[str, UUID]:
    """Register pools, queue and deployments with the API at PREFECT_API_URL; idempotent.

    ``data_dir`` is made absolute: flow runs start in a temporary working directory.
    ``training``: the train deployment's schedule and seed. Returns {deployment full name: id}.
    """
    api_url()
    data_dir = Path(data_dir).resolve()
    built = deployments(cfg, data_dir, training)  # a bad schedule fails here, before any API call
    ensure_pools(cfg)
    return {d.full_name: d.apply() for d in built}
