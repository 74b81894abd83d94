"""MLflow I/O: the only module that talks to the tracking server.

The default backend is a SQLite database under the data directory, with artifacts in
``<data_dir>/mlartifacts`` (set per experiment, so nothing lands in the working
directory). Any ``tracking_uri`` MLflow accepts works, e.g. an ``http://`` server.

Training logs each stage's run while the stage runs (``TrainingRun``, ``LiveRun``: real start
and end times, metrics per step written in batches); runs of finished work (evaluation, the
nightly, a chain trained without a tracker) are logged after it (``log_run``, ``log_model_run``).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

logger = logging.getLogger("prodassoc.tracking")


def _client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    ensure_store(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri)


# --- the sqlite store: created once, whole -------------------------------------------------------

_READY: set[Path] = set()
STORE_LOCK_TIMEOUT_S = 600.0


class StoreError(RuntimeError):
    """The sqlite tracking store is damaged in a way that is not safe to repair automatically."""


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI; None for any other URI (or in-memory)."""
    if not tracking_uri.lower().startswith("sqlite:///"):
        return None
    path = tracking_uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def _store_state(path: Path) -> str:
    """``complete``; ``incomplete`` (no Alembic version, missing tables or leftover
    ``_alembic_tmp_*`` tables: created part way) with no user data in it; or
    ``incomplete-with-data`` (the same holding runs, registered models or experiments
    besides MLflow's default one: possibly an older store mid-upgrade, never rebuilt here)."""
    import sqlite3

    import mlflow.store.tracking.dbmodels.models  # noqa: F401 - registers the ORM tables on Base
    from mlflow.store.db.base_sql_model import Base

    def count(con, table: str) -> int:
        return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0] if table in tables else 0

    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        version = con.execute("SELECT version_num FROM alembic_version").fetchall() if "alembic_version" in tables else []
        data = count(con, "runs") + count(con, "registered_models") + max(0, count(con, "experiments") - 1)
    except sqlite3.DatabaseError:
        return "incomplete"
    finally:
        con.close()
    leftovers = any(t.startswith("_alembic_tmp_") for t in tables)
    if version and not leftovers and set(Base.metadata.tables) <= tables:
        return "complete"
    return "incomplete-with-data" if data else "incomplete"


def ensure_store(tracking_uri: str) -> None:
    """Make sure a ``sqlite:///`` tracking store exists, complete; other URIs: nothing to do.

    MLflow creates its sqlite store in place by running ~60 Alembic migrations; a process
    killed part way leaves a store every later start refuses (``table _alembic_tmp_… already
    exists``), and two first runs at once race on the same tables. Here the store is created
    once, under a file lock next to it, in a temporary file that is renamed into place when
    complete, so the database file is either absent or whole. A half-created store left by
    an earlier version (no data in it) is moved aside to ``.<name>.incomplete`` and rebuilt;
    one that holds data is not touched (StoreError, naming it). Temporary files of killed
    creators are removed.
    """
    path = sqlite_path(tracking_uri)
    if path is None:
        return
    path = path.resolve()
    if path in _READY:
        return
    from prodassoc_core.data import remove_stale_temp
    from prodassoc_core.ops import locks

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(f".{path.name}.lock")
    with locks.exclusive(lock, timeout=STORE_LOCK_TIMEOUT_S, purpose=f"create MLflow store {path}"):
        state = _store_state(path) if path.exists() else "absent"
        if state == "incomplete-with-data":
            raise StoreError(
                f"MLflow store {path} is incomplete (an interrupted or pending schema migration) and holds "
                f"data, so it is not rebuilt: back it up, then run 'mlflow db upgrade sqlite:///{path}' "
                "or restore the backup"
            )
        if state == "incomplete":
            aside = path.with_name(f".{path.name}.incomplete")
            os.replace(path, aside)
            logger.warning("MLflow store %s was created only part way (killed?); moved to %s and rebuilt", path, aside)
        if state != "complete":
            remove_stale_temp(path.parent, f".{path.name}.*.tmp", _tmp_pid)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.unlink(missing_ok=True)
            try:
                _create_store(tmp, path.parent / "mlartifacts")
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            logger.info("MLflow store created: %s", path)
    _READY.add(path)


def _tmp_pid(name: str) -> int | None:
    parts = name.split(".")
    return int(parts[-2]) if len(parts) >= 3 and parts[-2].isdigit() else None


# The first store this process created, as bytes: MLflow's ~60 migrations take seconds (3 s of CPU,
# more on a loaded machine); a second store in the same process (tests, one process serving several
# data directories) is a copy of it with its own default experiment's artifact location.
_TEMPLATE: bytes | None = None


def _create_store(db: Path, artifact_root: Path) -> None:
    """All of MLflow's tables and its default experiment in the sqlite file ``db``."""
    global _TEMPLATE
    import sqlite3

    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from prodassoc_core.data import fault_point

    uri = f"sqlite:///{db}"
    fault_point("mlflow.create")
    location = artifact_root.resolve().as_uri()
    if _TEMPLATE is None:
        try:
            SqlAlchemyStore(uri, location)
        finally:
            engine = SqlAlchemyStore._engine_map.pop(uri, None)
            if engine is not None:
                engine.dispose()
        _TEMPLATE = db.read_bytes()
    else:
        db.write_bytes(_TEMPLATE)
        now = int(time.time() * 1000)
        con = sqlite3.connect(db)
        try:
            with con:  # what SqlAlchemyStore._create_default_experiment writes for this store
                con.execute("UPDATE experiments SET artifact_location = ?, creation_time = ?, last_update_time = ? "
                            "WHERE experiment_id = 0", (f"{location}/0", now, now))
        finally:
            con.close()
    with open(db, "rb") as f:
        os.fsync(f.fileno())


def serves_artifacts(tracking_uri: str) -> bool:
    """Whether the tracking URI is a server (http/https), which stores artifacts itself (``mlflow
    server --serve-artifacts --artifacts-destination s3://…``): clients upload through it."""
    return tracking_uri.split(":", 1)[0].lower() in ("http", "https")


def experiment_id(tracking_uri: str, name: str, artifact_root: Path) -> str:
    """The id of experiment ``name``, created if needed.

    With a local backend (sqlite, file) its artifacts go under ``artifact_root``; with a tracking
    server the server's artifact destination is used (an explicit client path there would write
    artifacts to whichever machine ran the client, out of reach of the others)."""
    client = _client(tracking_uri)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    if serves_artifacts(tracking_uri):
        return client.create_experiment(name)
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


# --- live runs: open while the work runs ---------------------------------------------------------

PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag: the UI nests a run under its parent
FLUSH_SECONDS = 5.0  # a live run writes its buffered metrics at most this often (one log_batch)
MAX_BATCH = 1000  # MLflow's per-call limit on metrics


def _now_ms() -> int:
    return int(time.time() * 1000)


def end_status(exc: BaseException | None) -> str:
    """The MLflow status a run ends with: FINISHED; FAILED for an exception; KILLED for an
    interrupt, exit or cancellation (a BaseException that is not an Exception: Ctrl-C,
    SystemExit, an orchestrator's termination signal)."""
    if exc is None:
        return "FINISHED"
    return "FAILED" if isinstance(exc, Exception) else "KILLED"


class LiveRun:
    """An MLflow run opened when its work starts and ended when it ends, so MLflow's start and end
    times and duration are the work's. Use as a context manager (``with LiveRun.start(...) as
    run``): an exception inside ends the run FAILED, an interrupt KILLED, else FINISHED.

    Metrics (``log``) are buffered and written in one ``log_batch`` every ``flush_seconds`` (or
    ``MAX_BATCH`` metrics), by a writer thread: the caller (a training loop) only appends to a
    list, and a write costs one sqlite transaction every few seconds whatever the step rate
    (``benchmarks/mlflow_live_overhead.py``). One write is in flight at a time. A failed write is
    logged and its metrics dropped; the work goes on. Params, tags and the end are written
    synchronously, after any write in flight."""

    def __init__(self, client, run_id: str, name: str, flush_seconds: float = FLUSH_SECONDS):
        self.client, self.run_id, self.name, self.flush_seconds = client, run_id, name, flush_seconds
        self._buffer: list = []
        self._last_flush = time.monotonic()
        self._writer = None  # a one-thread executor, made on the first write
        self._pending = None  # the write in flight (a Future)
        self.metrics_logged = 0
        self.metrics_dropped = 0
        self.writes = 0
        self.write_seconds = 0.0  # in the writer thread
        self.wait_seconds = 0.0  # the caller waiting for a write in flight
        self.status: str | None = None

    @classmethod
    def start(cls, tracking_uri: str, experiment: str, artifact_root: Path, run_name: str, *,
              tags: Mapping[str, str] | None = None, parent: LiveRun | None = None,
              flush_seconds: float = FLUSH_SECONDS) -> LiveRun:
        """Create the run (status RUNNING, start time now) in ``experiment``, under ``parent``."""
        client = _client(tracking_uri)
        all_tags = {k: str(v) for k, v in (tags or {}).items()}
        if parent is not None:
            all_tags[PARENT_TAG] = parent.run_id
        run = client.create_run(experiment_id(tracking_uri, experiment, artifact_root), start_time=_now_ms(),
                                run_name=run_name, tags=all_tags)
        return cls(client, run.info.run_id, run_name, flush_seconds)

    def log(self, step: int, metrics: Mapping[str, float | int | None]) -> None:
        """Buffer ``metrics`` at ``step`` (time: now); non-finite values are skipped."""
        from mlflow.entities import Metric

        ts = _now_ms()
        new = [Metric(k, float(v), ts, int(step)) for k, v in metrics.items()
               if v is not None and math.isfinite(float(v))]
        if len(self._buffer) + len(new) > MAX_BATCH:
            self.flush()
        self._buffer += new
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self, wait: bool = False) -> None:
        """Hand what is buffered to the writer thread (``wait``: and wait until it is written)."""
        from concurrent.futures import ThreadPoolExecutor

        batch, self._buffer = self._buffer, []
        self._last_flush = time.monotonic()
        if batch:
            self._wait()
            if self._writer is None:
                self._writer = ThreadPoolExecutor(1, thread_name_prefix="mlflow-live")
            self._pending = self._writer.submit(self._write, batch)
        if wait:
            self._wait()

    def _write(self, batch: list) -> None:
        t0 = time.monotonic()
        for start in range(0, len(batch), MAX_BATCH):
            part = batch[start: start + MAX_BATCH]
            try:
                self.client.log_batch(self.run_id, metrics=part)
                self.metrics_logged += len(part)
            except Exception as exc:  # noqa: BLE001 - metrics are not worth the training run
                self.metrics_dropped += len(part)
                logger.warning("MLflow run %s (%s): %d metrics not logged: %s", self.run_id, self.name, len(part), exc)
            self.writes += 1
        self.write_seconds += time.monotonic() - t0

    def _wait(self) -> None:
        if self._pending is not None:
            t0 = time.monotonic()
            self._pending.result()
            self._pending = None
            self.wait_seconds += time.monotonic() - t0

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Params (nested mappings flattened with dots), in batches of MLflow's limit of 100."""
        from mlflow.entities import Param

        self._wait()
        flat = [Param(k, v[:6000]) for k, v in sorted(flat_params(params))]
        for start in range(0, len(flat), 100):
            self.client.log_batch(self.run_id, params=flat[start: start + 100])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self._wait()
        if tags:
            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in sorted(tags.items())])

    def end(self, status: str = "FINISHED") -> None:
        """Write what is buffered and end the run (end time now)."""
        try:
            self.flush(wait=True)
        finally:
            if self._writer is not None:
                self._writer.shutdown(wait=True)
                self._writer = None
        self.client.set_terminated(self.run_id, status=status, end_time=_now_ms())
        self.status = status
        logger.info("MLflow run %s (%s) %s: %d metrics in %d writes (%.2f s in the writer thread, %.2f s waited)%s",
                    self.run_id, self.name, status, self.metrics_logged, self.writes, self.write_seconds,
                    self.wait_seconds, f", {self.metrics_dropped} dropped" if self.metrics_dropped else "")

    def __enter__(self) -> LiveRun:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        status = end_status(exc)
        if exc is None:
            self.end(status)
            return
        try:
            self.end(status)
        except Exception as err:  # noqa: BLE001 - the work's own error is the one to see
            logger.warning("MLflow run %s (%s) could not be ended %s: %s", self.run_id, self.name, status, err)


class TrainingRun:
    """One parent run per training (``as_of``) and a child run per stage, all in one experiment.

    ``stage(name)`` opens the stage's run when the stage starts and ends it when the stage ends
    (FINISHED, or FAILED / KILLED when it raised); ``runs`` maps each stage to its run id. Every
    run carries ``tags``; a stage's run also ``stage`` = its name."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_root: Path, *, run_name: str,
                 tags: Mapping[str, str] | None = None, flush_seconds: float = FLUSH_SECONDS):
        self.tracking_uri, self.experiment, self.artifact_root = tracking_uri, experiment, artifact_root
        self.tags = dict(tags or {})
        self.flush_seconds = flush_seconds
        self.parent = LiveRun.start(tracking_uri, experiment, artifact_root, run_name, tags=self.tags,
                                    flush_seconds=flush_seconds)
        self.runs: dict[str, str] = {}

    @property
    def run_id(self) -> str:
        return self.parent.run_id

    def stage(self, stage: str, *, run_name: str | None = None, tags: Mapping[str, str] | None = None) -> LiveRun:
        """The stage's run, started now (use it as a context manager around the stage)."""
        run = LiveRun.start(self.tracking_uri, self.experiment, self.artifact_root, run_name or stage,
                            tags=self.tags | {"stage": stage} | dict(tags or {}), parent=self.parent,
                            flush_seconds=self.flush_seconds)
        self.runs[stage] = run.run_id
        return run

    def __enter__(self) -> TrainingRun:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.parent.__exit__(exc_type, exc, tb)


def runs_experiment(tracking_uri: str, run_id: str) -> str:
    """The name of the experiment a run is in."""
    client = _client(tracking_uri)
    return client.get_experiment(client.get_run(run_id).info.experiment_id).name


# --- model stages: a run holding a model directory, registered ----------------------------------


@dataclass(frozen=True)
class RegisteredRun:
    run_id: str
    model_name: str
    model_version: str
    model_uri: str  # models:/<name>/<version>


def flat_params(params: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from flat_params(value, f"{name}.")
        else:
            yield name, str(value)


def log_model_run(
    tracking_uri: str,
    experiment: str,
    artifact_root: Path,
    *,
    run_name: str,
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    model_dir: Path,
    registered_model: str,
    series: Mapping[str, list[float]] | None = None,
    tags: Mapping[str, str] | None = None,
    files: list[Path] | None = None,
) -> RegisteredRun:
    """One MLflow run, logged after the fact, holding ``model_dir`` (as artifact path ``model``),
    registered. For work that ran without a ``LiveRun`` (its times are the logging's, not the
    work's); the training chain logs each stage live (``TrainingRun``) and then ``register_model``.

    ``params`` may nest (flattened with dots); ``series`` are per-step metrics (index = step - 1,
    thinned to at most 1000 points). The model version's source is the run's ``model``
    artifact directory, so ``registered_model_dir`` gets back what ``save_pretrained`` wrote.
    """
    from mlflow.entities import Metric

    run = LiveRun.start(tracking_uri, experiment, artifact_root, run_name, tags=tags)
    with run:
        now = _now_ms()
        finite = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        entries = [Metric(k, v, now, 0) for k, v in sorted(finite.items())]
        for key, values in (series or {}).items():
            stride = max(1, math.ceil(len(values) / 1000))
            entries += [Metric(key, float(v), now, i + 1) for i, v in enumerate(values)
                        if (i + 1) % stride == 0 and math.isfinite(v)]
        run.log_params(params)
        for start in range(0, len(entries), MAX_BATCH):  # MLflow's per-call limit: 1000 metrics
            run.client.log_batch(run.run_id, metrics=entries[start: start + MAX_BATCH])
    return register_model(tracking_uri, run.run_id, model_dir=model_dir, registered_model=registered_model,
                          tags=tags, files=files)


MODEL_TAG = "prodassoc.registered_model"  # a run's tag once it holds a registered model: "name/version"


def holds_model(tracking_uri: str, run_id: str) -> bool:
    """Whether the run already holds a registered model (``register_model`` ran for it)."""
    return MODEL_TAG in _client(tracking_uri).get_run(run_id).data.tags


def register_model(
    tracking_uri: str, run_id: str, *, model_dir: Path, registered_model: str,
    tags: Mapping[str, str] | None = None, files: list[Path] | None = None,
) -> RegisteredRun:
    """Upload ``model_dir`` to the run (artifact path ``model``, plus ``files``) and register it as
    a new version of ``registered_model`` with ``tags``. The run may have ended (its start and end
    times stay the work's); one model per run (``holds_model``)."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    run = client.get_run(run_id)
    client.log_artifacts(run_id, str(model_dir), artifact_path="model")
    for path in files or []:
        client.log_artifact(run_id, str(path))
    try:
        client.create_registered_model(registered_model)
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise
    version = client.create_model_version(
        registered_model, source=f"{run.info.artifact_uri}/model", run_id=run_id, tags=dict(tags or {})
    )
    client.set_tag(run_id, MODEL_TAG, f"{registered_model}/{version.version}")
    logger.info("MLflow run %s registered as %s version %s", run_id, registered_model, version.version)
    return RegisteredRun(run_id, registered_model, str(version.version), f"models:/{registered_model}/{version.version}")


def registered_model_dir(tracking_uri: str, model_uri: str, dst: Path) -> Path:
    """Download a registered model version (``models:/name/version`` or ``models:/name@alias``)
    into ``dst``; returns the directory to hand to ``from_pretrained``."""
    import mlflow

    dst.mkdir(parents=True, exist_ok=True)
    ensure_store(tracking_uri)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        found = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst)))
    finally:
        mlflow.set_tracking_uri(previous)
    if not any(found.iterdir()):  # MLflow copies nothing, without an error, from a local store whose files are gone
        raise FileNotFoundError(f"{model_uri}: the artifact store has no files for it (removed from the store?)")
    return found


# --- aliases: the champion gate's state ---------------------------------------------------------


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    run_id: str
    tags: dict[str, str]

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def aliased_version(tracking_uri: str, name: str, alias: str) -> ModelVersion | None:
    """The version of ``name`` that ``alias`` points to, or None (no model, or no such alias)."""
    if _sqlite_missing(tracking_uri):
        # nothing can be registered in a database that does not exist, and opening it would
        # create it (MLflow's migrations: seconds, paid by every nightly of a fresh data dir)
        return None
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise
    return ModelVersion(mv.name, str(mv.version), mv.run_id, dict(mv.tags or {}))


def model_versions(tracking_uri: str, name: str) -> list[ModelVersion]:
    """Every registered version of ``name`` with its tags, oldest first; [] without the model."""
    if _sqlite_missing(tracking_uri):
        return []
    from mlflow.exceptions import MlflowException

    if "'" in name:
        raise ValueError(f"registered model name {name!r}: quotes are not allowed")
    try:
        found = _client(tracking_uri).search_model_versions(f"name = '{name}'")
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
            return []
        raise
    out = [ModelVersion(mv.name, str(mv.version), mv.run_id, dict(mv.tags or {})) for mv in found]
    return sorted(out, key=lambda v: int(v.version))


def model_version(tracking_uri: str, name: str, version: str) -> ModelVersion | None:
    """One registered version with its tags, or None."""
    from mlflow.exceptions import MlflowException

    try:
        mv = _client(tracking_uri).get_model_version(name, version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise
    return ModelVersion(mv.name, str(mv.version), mv.run_id, dict(mv.tags or {}))


def set_alias(tracking_uri: str, name: str, version: str, alias: str) -> None:
    _client(tracking_uri).set_registered_model_alias(name, alias, version)


def tag_version(tracking_uri: str, name: str, version: str, tags: Mapping[str, Any]) -> None:
    client = _client(tracking_uri)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))


def _sqlite_missing(tracking_uri: str) -> bool:
    """Whether ``tracking_uri`` is ``sqlite:///<file>`` and the file does not exist yet."""
    if not tracking_uri.startswith("sqlite:///"):
        return False
    path = tracking_uri.removeprefix("sqlite:///").split("?", 1)[0]
    return path not in ("", ":memory:") and not Path(path).exists()
