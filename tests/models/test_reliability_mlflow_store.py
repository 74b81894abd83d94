"""Issue 12 item 2: MLflow's sqlite store is created once, whole, and survives kills and races.

Real MLflow on sqlite, real processes, real SIGKILL.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prodassoc_core.models import tracking

from conftest import REPO

CHILD = """
import sys, time
from pathlib import Path
import mlflow.entities, mlflow.tracking
from prodassoc_core.models import tracking
uri, go = sys.argv[1], Path(sys.argv[2])
print("ready", flush=True)  # imported: what is left is the store
while not go.exists():
    time.sleep(0.01)
print(tracking.log_run(uri, "race", Path(sys.argv[3]), "r", {"p": 1}, {"m": 1.0}))
"""

# What MLflow does on its own (and what every run did before): create the store in place.
PLAIN = """
import sys
from mlflow.tracking import MlflowClient
MlflowClient(tracking_uri=sys.argv[1]).search_experiments()
"""


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def _uri(tmp_path: Path) -> str:
    return f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"


def _tables(db: Path) -> set[str]:
    con = sqlite3.connect(db)
    try:
        return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        con.close()


def _complete(db: Path) -> bool:
    """Alembic recorded a version and left no half-done table copy."""
    tables = _tables(db)
    if "alembic_version" not in tables or any(t.startswith("_alembic_tmp_") for t in tables):
        return False
    con = sqlite3.connect(db)
    try:
        return bool(con.execute("SELECT version_num FROM alembic_version").fetchall()) and "registered_models" in tables
    finally:
        con.close()


def _kill_mid_migration(cmd: list[str], directory: Path, pattern: str, env: dict[str, str], when: str = "alembic_version") -> None:
    """Start ``cmd``, SIGKILL it once a file ``directory/pattern`` holds Alembic's bookkeeping
    (the migrations have started) but before they finish."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if any(any(t.startswith(when) for t in _tables(db)) for db in directory.glob(pattern)):
                    break
            except sqlite3.DatabaseError:
                pass
            time.sleep(0.005)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.mark.parametrize("when", ["_alembic_tmp_"])
def test_a_store_half_created_by_a_killed_process_is_rebuilt(tmp_path, when):
    """Killed by SIGKILL as MLflow creates the store in place: once migrations started, or
    in the middle of a batch migration (a ``_alembic_tmp_*`` table copy exists)."""
    db = tmp_path / "mlflow.db"
    _kill_mid_migration([sys.executable, "-c", PLAIN, _uri(tmp_path)], tmp_path, "mlflow.db", _env(), when)
    assert not _complete(db), "the kill came after MLflow had finished"
    assert db.exists(), "the kill came before MLflow created anything"
    run_id = tracking.log_run(_uri(tmp_path), "after-kill", tmp_path / "art", "r", {"p": 1}, {"m": 1.0})
    assert [r.info.run_id for r in tracking.runs(_uri(tmp_path), "after-kill")] == [run_id]
    assert not any(t.startswith("_alembic_tmp_") for t in _tables(db))


@pytest.mark.parametrize("fault", ["mlflow.create=kill", None])
def test_a_kill_while_this_code_creates_the_store_leaves_nothing_half_made(tmp_path, fault):
    db = tmp_path / "mlflow.db"
    go = tmp_path / "go"
    go.touch()
    cmd = [sys.executable, "-c", CHILD, _uri(tmp_path), str(go), str(tmp_path / "art")]
    if fault:
        proc = subprocess.run(cmd, env=_env(PRODASSOC_FAULT=fault), capture_output=True, timeout=120)
        assert proc.returncode == -signal.SIGKILL
    else:  # killed at a random moment inside the migrations
        _kill_mid_migration(cmd, tmp_path, ".mlflow.db.*.tmp", _env())
        assert list(tmp_path.glob(".mlflow.db.*.tmp")), "the kill came after the store was complete"
    assert not db.exists() or _complete(db)
    # the next run (this process: a new one would pay MLflow's imports again, ~2.5 s of CPU) finds a
    # whole store or none, removes the dead creator's temporary file and logs
    tracking.log_run(_uri(tmp_path), "race", tmp_path / "art", "r", {"p": 1}, {"m": 1.0})
    assert _complete(db) and len(tracking.runs(_uri(tmp_path), "race")) == 1
    assert not list(tmp_path.glob(".mlflow.db.*.tmp"))


def test_two_first_runs_at_once_share_one_store(tmp_path):
    go = tmp_path / "go"
    cmd = [sys.executable, "-c", CHILD, _uri(tmp_path), str(go), str(tmp_path / "art")]
    procs = [subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    assert [p.stdout.readline() for p in procs] == ["ready\n"] * 2  # both imported, both waiting
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outs]
    assert len(tracking.runs(_uri(tmp_path), "race")) == 2


def test_an_incomplete_store_holding_data_is_never_rebuilt(tmp_path):
    """A store with runs whose schema is not complete (an old store mid-upgrade) is left as it is."""
    uri = _uri(tmp_path)
    tracking.log_run(uri, "keep", tmp_path / "art", "r", {"p": 1}, {"m": 1.0})
    db = tmp_path / "mlflow.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE _alembic_tmp_runs (x INTEGER)")  # as a killed migration leaves it
    con.commit()
    con.close()
    tracking._READY.clear()  # a new process
    before = db.read_bytes()
    with pytest.raises(tracking.StoreError, match=r"incomplete .* holds data, so it is not rebuilt.*mlflow db upgrade"):
        tracking.ensure_store(uri)
    assert db.read_bytes() == before


def test_a_second_store_in_a_process_is_a_copy_with_its_own_artifact_location(tmp_path):
    """The migrations run once per process; a later store is a copy of the first, complete, whose
    default experiment keeps its artifacts beside it (as MLflow would have created it)."""
    from mlflow.tracking import MlflowClient

    first, second = tmp_path / "a", tmp_path / "b"
    for d in (first, second):
        tracking.ensure_store(_uri(d))
        assert _complete(d / "mlflow.db")
    assert tracking._TEMPLATE is not None
    for d in (first, second):
        default = MlflowClient(tracking_uri=_uri(d)).get_experiment("0")
        assert default.artifact_location == (d / "mlartifacts").resolve().as_uri() + "/0"
    run_id = tracking.log_run(_uri(second), "copy", tmp_path / "art", "r", {"p": 1}, {"m": 1.0})
    assert [r.info.run_id for r in tracking.runs(_uri(second), "copy")] == [run_id]
    assert tracking.runs(_uri(first), "copy") == []
