"""Concurrency: two runs for the same date at once, with real processes. One proceeds; a second
that does not wait fails at once naming the date and the holder's pid, having done nothing; one
that waits runs after it (and finds nothing left to ingest). Runs for other dates are not
blocked, ingestion is serialised data-dir-wide, and no writes interleave.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import date

import pytest
from test_reliability_faults import wait_for
from test_reliability_reruns import assert_no_duplicates, land, published_bytes

from prodassoc_core.data import ingest, warehouse
from prodassoc_core.ops import locks
from prodassoc_core.ops.settings import Settings
from prodassoc_core.pipeline import stages

from conftest import REPO

AS_OF = date(2024, 1, 5)

CHILD = """
import sys
from datetime import date
from pathlib import Path
from prodassoc_core.pipeline import stages
from prodassoc_core.ops.settings import Settings
result = stages.run_nightly(Settings(data_dir=Path(sys.argv[1])), date.fromisoformat(sys.argv[2]))
print("done: files_ingested", result.ingest.files_ingested, file=sys.stderr, flush=True)
"""


def start(settings: Settings, as_of: date, fault: str | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != warehouse.FAULT_ENV}
    if fault:
        env[warehouse.FAULT_ENV] = fault
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(settings.data_dir), as_of.isoformat()],
        cwd=REPO, env=env, stderr=subprocess.PIPE, text=True,
    )


def test_two_runs_for_the_same_date(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    land(settings.landing_dir)
    go = tmp_path / "go"
    first = start(settings, AS_OF, fault=f"run.locked=wait:{go}")  # holds the lock, pauses
    wait_for(first, "fault point run.locked")

    # a second process for the same date: fails at once, clearly, without touching anything
    second = subprocess.run(
        [sys.executable, "-c", CHILD, str(settings.data_dir), AS_OF.isoformat()],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert second.returncode == 1
    assert "RunLockedError: another nightly run for as_of 2024-01-05 is in progress" in second.stderr
    assert f"pid {first.pid} on host" in second.stderr
    assert not settings.manifest_path.exists() and not settings.warehouse_dir.exists()

    # a run for another date is not blocked by it
    other = stages.run_nightly(settings, date(2024, 1, 3))
    assert other.ingest.files_ingested == 3

    # a third run for the same date that waits: runs once the first has finished
    third: dict = {}
    waiting = Settings(data_dir=settings.data_dir, run_lock_timeout_s=120)
    thread = threading.Thread(target=lambda: third.update(result=stages.run_nightly(waiting, AS_OF)))
    thread.start()
    time.sleep(0.3)
    assert thread.is_alive()  # waiting for the lock
    go.touch()
    assert "files_ingested 2" in wait_for(first, "done")  # dt=2024-01-03 and -04: the rest was ingested
    assert first.wait(timeout=60) == 0
    thread.join(timeout=120)
    assert third["result"].ingest.files_ingested == 0  # serialised: nothing left to ingest
    assert stages.is_published(settings, AS_OF) and stages.is_published(settings, date(2024, 1, 3))
    assert len(published_bytes(settings)) == 6  # 2 dates x (rules, associations, bundles)
    assert_no_duplicates(settings)


def test_ingestion_is_serialised_across_dates(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", ingest_lock_timeout_s=0.2)
    land(settings.landing_dir)
    with locks.ingest_lock(settings.locks_dir, timeout=0):  # another run is ingesting
        held = rf"ingest: lock .*ingest\.lock is still held by pid {os.getpid()}"
        with pytest.raises(locks.LockTimeoutError, match=held):
            stages.ingest_landing(settings, AS_OF)
    assert not settings.manifest_path.exists()

    patient = Settings(data_dir=settings.data_dir, ingest_lock_timeout_s=60)
    holder = locks.ingest_lock(settings.locks_dir, timeout=0)
    holder.__enter__()
    threading.Timer(0.3, holder.__exit__, (None, None, None)).start()
    started = time.monotonic()
    report = stages.ingest_landing(patient, AS_OF)  # waits for the holder, then ingests
    assert time.monotonic() - started >= 0.25 and report.files_ingested == 5
    assert ingest.read_manifest(settings.manifest_path).height == 5


def test_lock_files_name_their_holder_and_are_emptied(tmp_path):
    path = locks.run_lock_path(tmp_path, AS_OF)
    with locks.run_lock(tmp_path, AS_OF):
        assert path.read_text().startswith(f"pid {os.getpid()} on host ")
        with pytest.raises(locks.RunLockedError, match=r"as_of 2024-01-05 .*waited 0\.1 s"):
            with locks.run_lock(tmp_path, AS_OF, timeout=0.1):
                pass
    assert path.read_text() == ""
    with pytest.raises(ValueError, match="must be a date"):
        locks.run_lock_path(tmp_path, "../../etc")
