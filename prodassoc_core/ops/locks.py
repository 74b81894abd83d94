"""Exclusive locks between runs that share a data directory (POSIX ``flock``).

Each lock is a file under ``<data_dir>/locks/``:

* ``run-YYYY-MM-DD.lock``: the whole run for one ``as_of`` (ingest, baskets, mining,
  publish). A second run for the same date fails at once with ``RunLockedError``
  naming the date and the holder's pid (``Settings.run_lock_timeout_s`` > 0 makes it
  wait that long first). Runs for different dates proceed side by side.
* ``ingest.lock``: ingestion, data-dir-wide (the manifest, staging and the GE context
  are shared by all dates). A run waits for another run's ingestion, up to
  ``Settings.ingest_lock_timeout_s``, then fails with ``LockTimeoutError``.
* ``views.lock``: refreshing the DuckDB views (one writer on the DuckDB file at a time).
* ``train-YYYY-MM-DD.lock``: a training for one ``as_of`` (``prodassoc train``); a second
  one for the same date fails at once with ``TrainingLockedError``.

The kernel releases a ``flock`` when its holder exits, however it exits (a crash, a
SIGKILL), so a dead run never leaves a stale lock. Lock files are never deleted (that
would race with a process opening them); while held, one holds the holder's pid, host
and purpose, and it is emptied on release. Local file systems only: ``flock`` over NFS
is not reliable.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import date, datetime
from pathlib import Path

logger = logging.getLogger("prodassoc.locks")

_POLL_S = 0.05


class LockBusyError(RuntimeError):
    """A lock is held by another process (or another open of the file in this one)."""

    def __init__(self, message: str, path: Path, holder: str) -> None:
        super().__init__(message)
        self.path = path
        self.holder = holder


class RunLockedError(LockBusyError):
    """Another run for the same as_of date holds the run lock."""


class TrainingLockedError(LockBusyError):
    """Another training for the same as_of date holds the training lock."""


class LockTimeoutError(LockBusyError):
    """Waited ``timeout`` seconds for a lock without getting it."""


def _holder(path: Path) -> str:
    """What the lock file says about its holder: 'pid 123 on host h (purpose) since <mtime>'."""
    try:
        text = path.read_text().strip()
        since = datetime.fromtimestamp(path.stat().st_mtime).isoformat(timespec="seconds")
    except OSError:
        return "an unknown process"
    return f"{text} since {since}" if text else "an unknown process"


def _acquire(path: Path, timeout: float, purpose: str) -> int:
    """An open fd holding an exclusive flock on ``path``; LockBusyError/LockTimeoutError if not had."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
            holder = _holder(path)
            if time.monotonic() >= deadline:
                if timeout > 0:
                    raise LockTimeoutError(
                        f"{purpose}: lock {path} is still held by {holder} after waiting {timeout:g} s",
                        path,
                        holder,
                    )
                raise LockBusyError(f"{purpose}: lock {path} is held by {holder}", path, holder)
            if not waited:
                logger.info("%s: waiting up to %g s for lock %s held by %s", purpose, timeout, path, holder)
                waited = True
            time.sleep(_POLL_S)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()} ({purpose})".encode(), 0)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _release(fd: int) -> None:
    try:
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextmanager
def exclusive(path: Path, *, timeout: float = 0, purpose: str) -> Iterator[Path]:
    """Hold an exclusive ``flock`` on ``path`` for the ``with`` block.

    timeout: seconds to wait for it (0: do not wait). When it is not obtained, raises
    LockTimeoutError (when it waited) or LockBusyError, naming the lock file and its holder.
    """
    path = Path(path)
    fd = _acquire(path, timeout, purpose)
    try:
        yield path
    finally:
        _release(fd)


def _dated_path(locks_dir: Path, kind: str, as_of: date) -> Path:
    if not isinstance(as_of, date) or isinstance(as_of, datetime):
        raise ValueError(f"as_of must be a date, got {as_of!r}")
    return Path(locks_dir) / f"{kind}-{as_of.isoformat()}.lock"


def run_lock_path(locks_dir: Path, as_of: date) -> Path:
    return _dated_path(locks_dir, "run", as_of)


@contextmanager
def _dated_lock(path: Path, timeout: float, what: str, busy: type[LockBusyError], rerun: str) -> Iterator[Path]:
    """Hold ``path`` for the block; ``busy`` names ``what`` and the holder when another has it."""
    try:
        fd = _acquire(path, timeout, what)
    except LockBusyError as exc:
        waited = f" (waited {timeout:g} s)" if timeout > 0 else ""
        raise busy(f"another {what} is in progress: lock {path} is held by {exc.holder}{waited}; "
                   f"this one did nothing. {rerun}", path, exc.holder) from None
    try:
        yield path
    finally:
        _release(fd)


def run_lock(locks_dir: Path, as_of: date, *, timeout: float = 0) -> AbstractContextManager[Path]:
    """The per-date run lock; RunLockedError names the date and the holder's pid."""
    return _dated_lock(run_lock_path(locks_dir, as_of), timeout, f"nightly run for as_of {as_of.isoformat()}",
                       RunLockedError, "Rerun once it has finished (reruns are safe).")


def training_lock(locks_dir: Path, as_of: date) -> AbstractContextManager[Path]:
    """The per-date training lock (``train-YYYY-MM-DD.lock``): one training of a date at a time,
    and the training folders of other dates are only removed while their lock is free."""
    return _dated_lock(_dated_path(locks_dir, "train", as_of), 0, f"training for as_of {as_of.isoformat()}",
                       TrainingLockedError, "Rerun once it has finished (a rerun resumes its stages).")


def ingest_lock(locks_dir: Path, *, timeout: float) -> AbstractContextManager[Path]:
    """The data-dir-wide ingestion lock (waits up to ``timeout`` seconds)."""
    return exclusive(Path(locks_dir) / "ingest.lock", timeout=timeout, purpose="ingest")


def views_lock(locks_dir: Path, *, timeout: float) -> AbstractContextManager[Path]:
    """The data-dir-wide lock around DuckDB view refreshes."""
    return exclusive(Path(locks_dir) / "views.lock", timeout=timeout, purpose="refresh DuckDB views")
