"""The server and worker command lines, in one place.

``infra/docker-compose.yml`` runs these commands, and the loopback tests
(``tests/test_production_*.py``) start the same ones on 127.0.0.1; a test checks that
the compose file's commands are exactly what these functions return. No imports
beyond the standard library: building a command line must not pay for Prefect or MLflow.
"""

from __future__ import annotations

CPU_POOL = "cpu"
GPU_POOL = "gpu"
PREFECT_PORT = 4200
MLFLOW_PORT = 5000


def prefect_server(host: str, port: int = PREFECT_PORT) -> list[str]:
    """The Prefect API and UI (scheduler and the other services included). Database and
    analytics come from the environment: PREFECT_SERVER_DATABASE_CONNECTION_URL,
    PREFECT_SERVER_ANALYTICS_ENABLED=false."""
    return ["prefect", "server", "start", "--host", host, "--port", str(port), "--analytics-off"]


def prefect_worker(pool: str = CPU_POOL, name: str | None = None) -> list[str]:
    """A process worker polling ``pool`` (every queue in it). The pool is created by
    ``prodassoc deploy``; the worker never creates one itself, so a typo fails loudly."""
    cmd = ["prefect", "worker", "start", "--pool", pool, "--type", "process", "--no-create-pool-if-not-found"]
    return cmd + (["--name", name] if name else [])


def mlflow_server(
    host: str,
    port: int,
    backend_store_uri: str,
    artifacts_destination: str,
    allowed_hosts: str | None = None,
    workers: int = 1,
) -> list[str]:
    """The MLflow tracking server, proxying artifacts to ``artifacts_destination`` (a local
    directory or ``s3://bucket/prefix``). ``allowed_hosts``: the Host headers clients use
    (MLflow 3 rejects others; its default allows only localhost and private IPs)."""
    cmd = [
        "mlflow", "server",
        "--host", host,
        "--port", str(port),
        "--backend-store-uri", backend_store_uri,
        "--artifacts-destination", artifacts_destination,
        "--serve-artifacts",
        "--workers", str(workers),
    ]
    return cmd + (["--allowed-hosts", allowed_hosts] if allowed_hosts else [])


def torchrun_train(gpus: int | str) -> str:
    """The `train` deployment's flow-run command: one process per GPU under torchrun; rank 0
    executes the Prefect flow run, the other ranks train with it (flows/torchrun_engine.py).
    ``gpus`` may be a template placeholder (the Kubernetes job template's ``{{ gpu_count }}``)."""
    return f"torchrun --standalone --nproc_per_node={gpus} -m flows.torchrun_engine"
