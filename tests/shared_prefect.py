"""One Prefect API server for all the pytest-xdist workers of a run.

Prefect's test harness (``prefect_test_harness``) starts a server in each process that uses it, on a
new SQLite database that the server first migrates: about 9 s of CPU per worker, on a 2-core
machine where the workers' CPU is the suite's wall time. Under xdist the controller makes a folder
for one such server (``ENV``) and removes it, stopping the server, when the run ends. The first
worker that needs Prefect starts the server there, under a file lock, on the harness's own command
and environment; once it answers, it copies the migrated, still empty database (the template of
``migrated_prefect_db``) and marks it ready. Every worker then points Prefect's client at it
(``worker_settings``). Without xdist (a single file, ``-n 0``) each process uses Prefect's harness.

The runs of all workers share one database: a test that reads runs back filters them by what its
own flows made (names, ids, artifact keys), as it already must for other modules on its worker.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENV = "PRODASSOC_TEST_PREFECT_SERVER"  # the controller's folder for the server, inherited by the workers
STARTUP_TIMEOUT_S = 180


def make_folder() -> Path:
    """The controller's folder for the run's server (nothing is started until a worker needs it)."""
    return Path(tempfile.mkdtemp(prefix="prodassoc-prefect-server-"))


def stop(folder: Path) -> None:
    """Stop the server started in ``folder``, if one was, and what it started; remove the folder."""
    state = folder / "state.json"
    if state.exists():
        pid = json.loads(state.read_text())["pid"]
        for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 0.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
    shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def server(folder: Path) -> tuple[str, Path]:
    """(API URL, the migrated empty database) of the run's server, started by the first caller."""
    with open(folder / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the other workers wait here while the first starts it
        if not (folder / "ready").exists():
            _start(folder)
    return json.loads((folder / "state.json").read_text())["url"], folder / "migrated.db"


def _start(folder: Path) -> None:
    from conftest import free_port, wait_http  # loaded by now (it imports this module)

    db, port = folder / "prefect.db", free_port()
    url = f"http://127.0.0.1:{port}/api"
    prefect_dir = Path(importlib.util.find_spec("prefect").origin).parent
    env = os.environ | {
        # what prefect.server.api.server.SubprocessASGIServer (the harness's server) runs with
        "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{db}",
    }
    cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect_dir.parent), "--factory",
           "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "error", "--lifespan", "on"]
    log = folder / "server.log"
    with open(log, "ab") as out:  # its own session: it outlives this worker; the controller stops it
        process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    (folder / "state.json").write_text(json.dumps({"url": url, "pid": process.pid}))
    wait_http(f"{url}/health", process, log, timeout_s=STARTUP_TIMEOUT_S)
    with sqlite3.connect(db) as src, sqlite3.connect(folder / "migrated.db") as dst:
        src.backup(dst)  # before any flow ran: nothing but the schema
    (folder / "ready").touch()


@contextlib.contextmanager
def worker_settings(url: str):
    """Prefect's client pointed at ``url`` as the harness points it at its own server (also as the
    process-global settings context); the log and event workers drained on exit."""
    import inspect

    import prefect.context
    import prefect.settings
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        with contextlib.suppress(RuntimeError):  # not started
            result = APILogWorker.instance().drain()
            if inspect.isawaitable(result):
                await result
        result = EventsWorker.drain_all()
        if inspect.isawaitable(result):
            await result

    with prefect.settings.temporary_settings(updates={prefect.settings.PREFECT_API_URL: url}):
        with prefect.context._temporary_global_settings_context(prefect.context.get_settings_context()):
            yield
            run_coro_as_sync(drain())
