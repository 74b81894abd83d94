"""The warehouse: published tables as Parquet partitioned by run date, plus DuckDB views.

Layout: ``<warehouse>/<table>/run_date=YYYY-MM-DD/data.parquet``. A partition is one
file, written to ``<warehouse>/_tmp`` and moved into place with ``os.replace``: a
reader sees either the previous complete file or the new complete one, never a
half-written file, and a rerun of the same run date replaces its own partition.
Temporary files are named ``<pid>-<random>.parquet``; one left behind by a killed
process (its pid no longer runs) is removed by the next write into the same ``_tmp``.

A run's tables are committed as one: ``<warehouse>/_runs/run_date=YYYY-MM-DD/_COMMITTED``
(JSON: each table's rows and bytes) is written last, after every table's partition, and
withdrawn before a rerun replaces them. The views (``pipeline.refresh_views``), their
``latest_*`` and backfill's "published" read committed run dates only, and only the tables
the commit lists; a run stopped part way leaves its date uncommitted until it is redone.
The published tables' views list their files; every path enters DuckDB with its glob
characters escaped (``duckdb_literal_path``), so a data dir named ``g[x]`` or ``s*t`` reads
only itself.

A write that fails for lack of space or permission (ENOSPC, EDQUOT, EROFS, EACCES, EPERM)
raises ``StorageError``: one line naming the path, the reason and the bytes needed.

Nothing from data becomes SQL text: table and view names must be plain identifiers
(``[A-Za-z_][A-Za-z0-9_]*``), run dates must be dates, and file globs go into SQL only
as quoted string literals.

Fault injection (tests and drills only): ``$PRODASSOC_FAULT`` holds comma-separated
``<point>[@<n>]=<action>`` items. At the n-th time (default: every time) the process
reaches ``fault_point(<point>)`` it writes ``prodassoc fault point <point> reached (pid N)``
to stderr and then: ``raise`` (InjectedFault), ``kill`` (SIGKILL itself), ``block``
(sleeps until killed), ``sleep:<seconds>``, or ``wait:<file>`` (continues once the file
exists). Points: ``write.before_tmp``, ``write.after_tmp``, ``write.before_replace``,
``write.after_replace`` (every ``atomic_write_parquet``), ``commit.before``, ``views.before_replace``
(the view refresh's new DuckDB file is complete), and the pipeline's stage points
(``prodassoc_core.pipeline.stages``). Unset, the hook does nothing.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from prodassoc_core.data.contracts import TableContract

DATA_FILE = "data.parquet"
TMP_DIR = "_tmp"
RUNS_DIR = "_runs"  # <warehouse>/_runs/run_date=YYYY-MM-DD/_COMMITTED: a run's tables, committed as one
COMMIT_FILE = "_COMMITTED"
VIEWS_META = "_prodassoc_views"  # table in the DuckDB file: what the views were built from
FAULT_ENV = "PRODASSOC_FAULT"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class WriteResult:
    table: str
    run_date: date
    path: Path
    rows: int


# --- fault injection ---------------------------------------------------------------------------


class InjectedFault(RuntimeError):
    """Raised at a fault point whose action is ``raise``."""


class ViewsError(ValueError):
    """The DuckDB views cannot be built over the files they list (one is damaged)."""


class StorageError(OSError):
    """A write failed for lack of space or permission; the message names the path and the bytes needed."""


_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def storage_error(exc: OSError, path: Path, needed: int | None) -> StorageError:
    """A one-line StorageError for a failed write of ``needed`` bytes to ``path``."""
    try:
        free = shutil.disk_usage(_existing_parent(path)).free
    except OSError:
        free = None
    what = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
            errno.EROFS: "read-only file system"}.get(exc.errno, "permission denied")
    need = f"; {needed:,} bytes needed" if needed is not None else ""
    have = f", {free:,} free" if free is not None and exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    return StorageError(exc.errno, f"cannot write {path}: {what}{need}{have}")


@contextmanager
def storage_errors(path: Path, needed: int | None = None) -> Iterator[None]:
    """A full disk, a quota or a read-only zone inside the block as a StorageError naming ``path``
    (and the ``needed`` bytes): one line for the operator, also for the writes of libraries (Great
    Expectations' stores and Data Docs), which raise them without a file name."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, StorageError) or exc.errno not in _STORAGE_ERRNOS:
            raise
        raise storage_error(exc, path, needed) from exc


def _existing_parent(path: Path) -> Path:
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


_fault_hits: dict[str, int] = {}
_fault_lock = threading.Lock()


def fault_point(name: str) -> None:
    """Act as ``$PRODASSOC_FAULT`` says when the process reaches point ``name`` (see module doc)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    with _fault_lock:
        hit = _fault_hits[name] = _fault_hits.get(name, 0) + 1
    for item in spec.split(","):
        point, _, action = item.strip().partition("=")
        point, _, nth = point.partition("@")
        if point != name or (nth and int(nth) != hit):
            continue
        print(f"prodassoc fault point {name} reached (pid {os.getpid()})", file=sys.stderr, flush=True)
        kind, _, arg = action.partition(":")
        if kind == "raise":
            raise InjectedFault(f"injected fault at {name}")
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif kind == "block":
            while True:
                time.sleep(3600)
        elif kind == "sleep":
            time.sleep(float(arg))
        elif kind == "wait":
            while not Path(arg).exists():
                time.sleep(0.02)
        else:
            raise ValueError(f"{FAULT_ENV}: unknown action {action!r} for point {name}")


# --- atomic writes ----------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_path(path: Path) -> int:
    """Remove a work file or directory tree (a finished stage's checkpoints, a committed run's
    staged tables); returns the bytes it held, 0 when it is not there. OSError when it cannot."""
    path = Path(path)
    if path.is_dir():
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        shutil.rmtree(path)
        return size
    try:
        size = path.stat().st_size
        path.unlink()
    except FileNotFoundError:
        return 0
    return size


def remove_work(path: Path, what: str) -> int:
    """``remove_path`` for a work file whose loss costs nothing (its contents are kept elsewhere),
    best effort: one that cannot be removed is logged under ``what`` and left (0 bytes freed)."""
    try:
        return remove_path(path)
    except OSError as exc:
        logging.getLogger("prodassoc").warning("%s: %s not removed (%s); it is a work file, safe to delete by hand",
                                               what, path, exc)
        return 0


def remove_stale_temp(directory: Path, pattern: str, pid_of) -> list[Path]:
    """Remove temporary files in ``directory`` matching ``pattern`` whose writer is gone.

    ``pid_of(name)`` gives the writing process's pid from a file name (None: unknown,
    left alone). Files of running processes are kept: they may be mid-write.
    """
    removed = []
    if not Path(directory).is_dir():
        return removed
    for path in Path(directory).glob(pattern):
        pid = pid_of(path.name)
        if pid is not None and pid != os.getpid() and not pid_alive(pid):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _tmp_pid(name: str) -> int | None:
    head = name.split("-", 1)[0]
    return int(head) if head.isdigit() else None


def write_json(path: Path, payload: object) -> None:
    """``payload`` as JSON at ``path``, replaced atomically (a temporary file beside it, renamed over
    it): a reader sees the old file or the new one, never part of one. Values JSON cannot hold are
    written as ``str``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_parquet(table: pa.Table, path: Path, tmp_dir: Path) -> None:
    """Write ``table`` to ``path`` so that readers never see a partial file.

    The temporary file lives in ``tmp_dir`` (same file system as ``path``); stale ones
    of killed writers are removed first. Deterministic: the same table gives the same bytes.
    """
    tmp = tmp_dir / f"{os.getpid()}-{uuid.uuid4().hex}.parquet"
    try:
        tmp_dir.mkdir(parents=True, exist_ok=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temp(tmp_dir, "*.parquet", _tmp_pid)
        fault_point("write.before_tmp")
        pq.write_table(table, tmp, compression="zstd")
        fault_point("write.after_tmp")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        fault_point("write.before_replace")
        os.replace(tmp, path)
        fault_point("write.after_replace")
    except OSError as exc:
        if isinstance(exc, StorageError) or exc.errno not in _STORAGE_ERRNOS:
            raise
        tmp.unlink(missing_ok=True)
        raise storage_error(exc, path, _parquet_size(table)) from exc
    finally:
        tmp.unlink(missing_ok=True)


def _parquet_size(table: pa.Table) -> int:
    """Bytes of ``table`` as the Parquet file ``atomic_write_parquet`` writes (serialized in memory)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().size


# --- partitions -------------------------------------------------------------------------------


def check_identifier(name: str, what: str = "table") -> str:
    """``name`` if it is a plain identifier; ValueError otherwise (no paths, no SQL)."""
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"not a valid {what} name: {name!r} (expected [A-Za-z_][A-Za-z0-9_]*)")
    return name


def partition_dir(warehouse_dir: Path, table: str, run_date: date) -> Path:
    """``<warehouse>/<table>/run_date=YYYY-MM-DD``; rejects names and dates that could leave it."""
    check_identifier(table)
    if not isinstance(run_date, date) or isinstance(run_date, datetime):
        raise ValueError(f"run_date must be a date, got {run_date!r}")
    return Path(warehouse_dir) / table / f"run_date={run_date.isoformat()}"


def write_partition(
    table: pa.Table, contract: TableContract, warehouse_dir: Path, run_date: date
) -> WriteResult:
    """Check ``table`` against its contract and publish it as the ``run_date`` partition."""
    if table.schema != contract.schema:
        table = contract.conform(table)
    path = partition_dir(warehouse_dir, contract.name, run_date) / DATA_FILE
    atomic_write_parquet(table, path, Path(warehouse_dir) / TMP_DIR)
    return WriteResult(contract.name, run_date, path, table.num_rows)


def is_published(warehouse_dir: Path, table: str, run_date: date) -> bool:
    """Whether ``table``'s partition file for ``run_date`` exists (committed or not: see ``committed``)."""
    return (partition_dir(warehouse_dir, table, run_date) / DATA_FILE).is_file()


# --- run commits: a run's tables become visible together ------------------------------------------


def commit_path(warehouse_dir: Path, run_date: date) -> Path:
    """``<warehouse>/_runs/run_date=YYYY-MM-DD/_COMMITTED``."""
    return partition_dir(warehouse_dir, RUNS_DIR, run_date) / COMMIT_FILE


def uncommit(warehouse_dir: Path, run_date: date) -> None:
    """Withdraw ``run_date``'s commit before its tables are replaced (a partial rewrite is never committed)."""
    path = commit_path(warehouse_dir, run_date)
    with storage_errors(path):
        path.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def commit(warehouse_dir: Path, run_date: date, results: Sequence[WriteResult]) -> Path:
    """Write ``run_date``'s commit marker, last: it lists the run's tables with their rows and bytes.

    Readers (the views, ``latest_*``, backfill's "published") see a run date only once this
    file exists, and then only the tables it lists.
    """
    path = commit_path(warehouse_dir, run_date)
    tables = {
        r.table: {"rows": r.rows, "bytes": Path(r.path).stat().st_size}
        for r in sorted(results, key=lambda r: r.table)
    }
    body = json.dumps({"run_date": run_date.isoformat(), "tables": tables}, indent=1, sort_keys=True) + "\n"
    tmp = path.with_name(f".{COMMIT_FILE}.{os.getpid()}.tmp")
    try:
        with storage_errors(path, len(body)):
            path.parent.mkdir(parents=True, exist_ok=True)
            fault_point("commit.before")
            with open(tmp, "w") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_dir(path.parent)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def committed(warehouse_dir: Path, run_date: date) -> dict[str, dict] | None:
    """The tables ``run_date``'s commit lists ({table: {rows, bytes}}), when committed and every
    listed partition file is there with its recorded size; None otherwise."""
    tables = _commit_tables(warehouse_dir, run_date)
    return None if tables is None or damaged_tables(warehouse_dir, run_date, tables) else tables


def _commit_tables(warehouse_dir: Path, run_date: date) -> dict[str, dict] | None:
    try:
        return json.loads(commit_path(warehouse_dir, run_date).read_text())["tables"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def damaged_tables(warehouse_dir: Path, run_date: date, tables: dict[str, dict]) -> list[str]:
    """The tables of a commit whose partition file is missing or not the size it recorded."""
    damaged = []
    for table, info in tables.items():
        data = partition_dir(warehouse_dir, table, run_date) / DATA_FILE
        try:
            if data.stat().st_size != info["bytes"]:
                damaged.append(table)
        except (OSError, KeyError, TypeError):
            damaged.append(table)
    return damaged


def damaged_dates(warehouse_dir: Path) -> dict[date, list[str]]:
    """Run dates committed once whose files have since gone missing or changed (deleted or
    edited by hand): {date: damaged tables}, oldest first. Such a run is no longer committed."""
    out = {}
    for day in _marked_dates(warehouse_dir):
        tables = _commit_tables(warehouse_dir, day)
        damaged = [] if tables is None else damaged_tables(warehouse_dir, day, tables)
        if damaged:
            out[day] = damaged
    return out


def _marked_dates(warehouse_dir: Path) -> list[date]:
    """The run dates with a commit marker directory, oldest first."""
    return _partition_dates(Path(warehouse_dir) / RUNS_DIR)


def _partition_dates(directory: Path) -> list[date]:
    """The dates of the ``run_date=YYYY-MM-DD`` folders in ``directory``, oldest first."""
    days = []
    for d in sorted(directory.iterdir()) if directory.is_dir() else []:
        if not d.name.startswith("run_date="):
            continue
        try:
            days.append(date.fromisoformat(d.name[len("run_date="):]))
        except ValueError:
            continue
    return days


def run_dates(warehouse_dir: Path, tables: Sequence[str]) -> list[date]:
    """Every run date with a commit marker folder or a partition of one of ``tables``, committed
    or not (a run that stopped part way), oldest first."""
    root = Path(warehouse_dir)
    days = set(_marked_dates(root))
    for table in tables:
        days.update(_partition_dates(root / check_identifier(table)))
    return sorted(days)


def remove_run_date(warehouse_dir: Path, run_date: date, tables: Sequence[str]) -> int:
    """Remove ``run_date`` from the warehouse: its commit first (readers stop seeing it), then its
    marker folder and its partition of each of ``tables``. Returns the bytes freed.

    Raises StorageError when the commit cannot be withdrawn (nothing is removed then). After
    that, removal is best effort: a partition that cannot be removed is logged and left
    uncommitted, and the next call removes it."""
    uncommit(warehouse_dir, run_date)
    freed = remove_work(partition_dir(warehouse_dir, RUNS_DIR, run_date), "warehouse retention")
    for table in tables:
        freed += remove_work(partition_dir(warehouse_dir, table, run_date), "warehouse retention")
    return freed


def committed_dates(warehouse_dir: Path) -> dict[date, dict[str, dict]]:
    """Every committed run date with its tables, oldest first."""
    out: dict[date, dict[str, dict]] = {}
    for day in _marked_dates(warehouse_dir):
        tables = committed(warehouse_dir, day)
        if tables is not None:
            out[day] = tables
    return out


def adopt_uncommitted(warehouse_dir: Path, required: Sequence[str], optional: Sequence[str]) -> list[date]:
    """Commit the run dates of a warehouse written before commit markers existed.

    Only for a warehouse with no ``_runs`` directory at all: every date whose ``required``
    tables are all there is committed with those and whichever ``optional`` ones it has.
    Returns the dates committed.
    """
    root = Path(warehouse_dir)
    if (root / RUNS_DIR).exists() or not root.is_dir():
        return []
    days: set[date] = set()
    for table in required:
        for d in (root / check_identifier(table)).glob("run_date=*"):
            try:
                days.add(date.fromisoformat(d.name[len("run_date="):]))
            except ValueError:
                continue
    adopted = []
    for day in sorted(days):
        if all(is_published(root, t, day) for t in required):
            results = [
                WriteResult(t, day, partition_dir(root, t, day) / DATA_FILE, pq.read_metadata(
                    partition_dir(root, t, day) / DATA_FILE).num_rows)
                for t in [*required, *optional] if is_published(root, t, day)
            ]
            commit(root, day, results)
            adopted.append(day)
    (root / RUNS_DIR).mkdir(parents=True, exist_ok=True)
    return adopted


def read_partition(warehouse_dir: Path, contract: TableContract, run_date: date) -> pa.Table:
    """Read one published partition and check it against its contract."""
    path = partition_dir(warehouse_dir, contract.name, run_date) / DATA_FILE
    table = pq.read_table(path)
    if table.schema != contract.schema:
        raise ValueError(
            f"{path}: schema does not match contract {contract.name!r}:\n{table.schema}\nexpected\n{contract.schema}"
        )
    return table


# --- DuckDB views -----------------------------------------------------------------------------


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _quote_identifier(name: str) -> str:
    return '"' + check_identifier(name, "view") + '"'


def duckdb_literal_path(path: Path | str) -> str:
    """``path`` as a DuckDB file name that matches only itself: DuckDB expands ``*``, ``?`` and
    ``[…]`` in every file name it reads, so each is wrapped in a one-character class."""
    return re.sub(r"([*?\[])", r"[\1]", str(path))


def _empty_select(con, schema: pa.Schema) -> str:
    """A SELECT with ``schema``'s columns, typed as DuckDB reads them from Parquet, and no rows."""
    types = con.from_arrow(schema.empty_table()).types
    columns = ", ".join(f"CAST(NULL AS {t}) AS {_quote_identifier(f.name)}" for f, t in zip(schema, types))
    return f"SELECT {columns} WHERE false"


def refresh_views(
    duckdb_path: Path, sources: dict[str, str | Sequence[Path]], meta: dict[str, str] | None = None,
    empty: dict[str, pa.Schema] | None = None,
) -> list[str]:
    """Rebuild the DuckDB file with one view per source that matches files; returns the views made.

    The file holds only these views (and the small table ``_prodassoc_views`` with ``meta``),
    and is replaced whole on every refresh.

    ``sources`` maps view name -> a list of Parquet files (taken literally: glob characters
    in the paths are escaped), or a glob string (expanded by DuckDB). A source whose files
    live in ``run_date=`` partitions also gets ``latest_<name>``, restricted to the newest
    run date. View names must be identifiers; paths enter the SQL as escaped string literals only.
    A source without files gets no view, unless ``empty`` gives its schema: then its view exists
    with those columns and no rows (the quarantine views, before anything was quarantined).
    With a ``catalog`` view, the analysts' views with titles too (``create_analyst_views``); columns
    listed in ``VIEW_COLUMN_RENAMES`` are renamed in their view.
    """
    import duckdb

    for name in sources:
        check_identifier(name, "view")
    made = []
    duckdb_path.parent.mkdir(parents=True, exist_ok=True)
    # Built in a fresh file and moved into place: an analyst's open connection (which holds
    # DuckDB's file lock) keeps reading the old file and never blocks the nightly run.
    tmp = duckdb_path.with_name(f".{duckdb_path.name}.{os.getpid()}.tmp")
    remove_stale_temp(duckdb_path.parent, f".{duckdb_path.name}.*.tmp*", _duckdb_tmp_pid)
    for leftover in (tmp, tmp.with_name(tmp.name + ".wal")):
        leftover.unlink(missing_ok=True)
    # DuckDB reads "?" in a database path as the start of options (and then fails on its WAL):
    # such a file is built in a private temporary directory and copied next to its place.
    build = Path(tempfile.mkdtemp(prefix="prodassoc-views-")) / "views.duckdb" if "?" in str(tmp.absolute()) else tmp
    try:
        with duckdb.connect(str(build)) as con:
            for name, source in sorted(sources.items()):
                view, latest = _quote_identifier(name), _quote_identifier(f"latest_{name}")
                if isinstance(source, str):
                    files = [source] if list(Path("/").glob(source.lstrip("/"))) else []
                    partitioned = "run_date=" in source
                else:
                    files = [duckdb_literal_path(p) for p in source if Path(p).is_file()]
                    partitioned = any("run_date=" in str(p) for p in source)
                if not files:
                    if name in (empty or {}):
                        con.execute(f"CREATE OR REPLACE VIEW {view} AS {_empty_select(con, empty[name])}")
                        made.append(name)
                    continue
                listed = "[" + ", ".join(_quote_literal(f) for f in files) + "]"
                scan = f"read_parquet({listed}, hive_partitioning = true, union_by_name = true)"
                try:
                    con.execute(f"CREATE OR REPLACE VIEW {view} AS SELECT *{_renames(name)} FROM {scan}")
                except duckdb.Error as exc:  # a file under it damaged outside prodassoc (DuckDB names it)
                    raise ViewsError(f"DuckDB view {name} could not be built: {str(exc).splitlines()[0]}; the next "
                                     f"nightly run sets a damaged staged file aside and stages its landed file "
                                     f"again (docs/operations.md)") from exc
                made.append(name)
                if partitioned:
                    con.execute(
                        f"CREATE OR REPLACE VIEW {latest} AS SELECT * FROM {view} "
                        f"WHERE run_date = (SELECT max(run_date) FROM {view})"
                    )
                    made.append(f"latest_{name}")
            if "catalog" in made:  # the analyst views put catalog titles next to ids
                made += create_analyst_views(con, made)
            if meta:
                con.execute(f"CREATE TABLE {VIEWS_META} (key VARCHAR, value VARCHAR)")
                con.executemany(f"INSERT INTO {VIEWS_META} VALUES (?, ?)", sorted(meta.items()))
            con.execute("CHECKPOINT")
        if build != tmp:
            shutil.copyfile(build, tmp)
        fault_point("views.before_replace")
        os.replace(tmp, duckdb_path)
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + ".wal")):
            leftover.unlink(missing_ok=True)
        if build != tmp:
            shutil.rmtree(build.parent, ignore_errors=True)
    return made


def _duckdb_tmp_pid(name: str) -> int | None:
    """Writer pid of a view-refresh temporary file ``.<db>.<pid>.tmp`` (or its ``.wal``)."""
    parts = name.split(".")
    if parts[-1] == "wal":
        parts = parts[:-1]
    return int(parts[-2]) if len(parts) >= 3 and parts[-1] == "tmp" and parts[-2].isdigit() else None


def views_meta(duckdb_path: Path) -> dict[str, str]:
    """The ``meta`` the views in ``duckdb_path`` were built with; {} when absent or unreadable."""
    import duckdb

    try:
        with duckdb.connect(str(duckdb_path), read_only=True) as con:
            return dict(con.execute(f"SELECT key, value FROM {VIEWS_META}").fetchall())
    except (duckdb.Error, OSError):
        return {}


def warehouse_sources(
    warehouse_dir: Path, table_names: list[str], runs: dict[date, dict[str, dict]] | None = None
) -> dict[str, str | list[Path]]:
    """View name -> source for the published tables.

    With ``runs`` (``committed_dates``): the listed partition files of committed run dates
    only. Without: a glob over every partition (committed or not).
    """
    root = Path(warehouse_dir).resolve()
    if runs is None:
        return {check_identifier(name): str(root / name / "run_date=*" / DATA_FILE) for name in table_names}
    return {
        check_identifier(name): [
            partition_dir(root, name, day) / DATA_FILE for day, tables in sorted(runs.items()) if name in tables
        ]
        for name in table_names
    }


# --- analyst views: names next to ids, a readable manifest -------------------------------------

# Columns of a source whose names need quoting in SQL are renamed in its view (the Parquet keeps them).
VIEW_COLUMN_RENAMES: dict[str, dict[str, str]] = {"manifest": {"table": "table_name"}}

# What ``product_associations.score`` means, per ``method`` (the ``association_methods`` view).
# Scores order one product's list; only where a scale says so do they compare across products.
SCORE_SCALES: dict[str, str] = {
    "popularity": "1 / rank in the window's best sellers (1, 0.5, 0.33, ...); the same list for every product",
    "count": "orders holding both products in the window (an integer >= associations.min_pair_count)",
    "confidence": "share of the product's orders that also hold the associated product, 0..1",
    "jaccard": "orders holding both / orders holding either, 0..1",
    "lift": "confidence / the associated product's share of all orders; 1 = as often as chance, > 1 = more often",
    "decayed_damped": "time-decayed, basket-size-weighted co-purchase weight / (weight of the associated product)"
                      " ** popularity_exponent; >= 0, no upper bound, compare within one product's list only",
    "hybrid": "w_cooc * cooc + w_text * text + w_gnn * gnn (weights sum to 1; cooc 0..1 = share of the product's best"
              " co-purchase score, text and gnn = cosine -1..1); -1..1, compare within one product's list only",
}


def _renames(name: str) -> str:
    renames = VIEW_COLUMN_RENAMES.get(name)
    if not renames:
        return ""
    pairs = ", ".join(f'"{old}" AS {check_identifier(new, "column")}' for old, new in renames.items())
    return f" RENAME ({pairs})"


_TITLES = "(SELECT product_id, any_value(title) AS title FROM catalog GROUP BY product_id)"

# view name -> (the view it reads, SQL with {src} for that view); a ``latest_`` twin reads ``latest_<src>``.
_NAMED_VIEWS: dict[str, tuple[str, str]] = {
    "association_rules_named": ("association_rules", f"""
        WITH titles AS {_TITLES},
        antecedents AS (
            SELECT a.run_date, a.rule_id,
                   list(coalesce(t.title, a.product_id) ORDER BY a.pos) AS antecedent_titles
            FROM (SELECT run_date, rule_id, unnest(antecedent) AS product_id,
                         unnest(range(len(antecedent))) AS pos FROM {{src}}) a
            LEFT JOIN titles t ON t.product_id = a.product_id
            GROUP BY a.run_date, a.rule_id
        )
        SELECT r.run_date, r.rule_id, a.antecedent_titles, coalesce(c.title, r.consequent) AS consequent_title,
               array_to_string(a.antecedent_titles, ' + ') || ' => ' || coalesce(c.title, r.consequent) AS rule_text,
               r.* EXCLUDE (run_date, rule_id)
        FROM {{src}} r
        JOIN antecedents a USING (run_date, rule_id)
        LEFT JOIN titles c ON c.product_id = r.consequent
    """),
    "product_associations_named": ("product_associations", f"""
        WITH titles AS {_TITLES}
        SELECT a.run_date, a.product_id, p.title AS product_title, a.rank,
               a.associated_product_id, q.title AS associated_title, a.score, a.method, m.score_scale,
               a.* EXCLUDE (run_date, product_id, associated_product_id, rank, score, method)
        FROM {{src}} a
        LEFT JOIN titles p ON p.product_id = a.product_id
        LEFT JOIN titles q ON q.product_id = a.associated_product_id
        LEFT JOIN association_methods m ON m.method = a.method
    """),
    "bundles_named": ("bundles", """
        SELECT run_date, bundle_rank, array_to_string(titles, ' + ') AS bundle_text, * EXCLUDE (run_date, bundle_rank)
        FROM {src}
    """),
}


def create_analyst_views(con, existing: list[str]) -> list[str]:
    """Views for analysts on an open DuckDB connection; returns the views made.

    ``association_methods`` (method, score_scale); for each published table whose view is in
    ``existing`` (and with a ``catalog`` view for the titles): ``<table>_named`` over all
    run dates and ``latest_<table>_named`` over ``latest_<table>``, with product titles next to
    the ids (a product missing from the catalog shows its id in rules, null in associations).
    """
    rows = ", ".join(f"({_quote_literal(m)}, {_quote_literal(s)})" for m, s in SCORE_SCALES.items())
    con.execute(
        f"CREATE OR REPLACE VIEW association_methods AS SELECT * FROM (VALUES {rows}) v(method, score_scale)"
    )
    made = ["association_methods"]
    have = set(existing)
    for name, (source, sql) in _NAMED_VIEWS.items():
        needs_titles = "titles AS" in sql
        for prefix in ("", "latest_"):
            src = f"{prefix}{source}"
            if src not in have or (needs_titles and "catalog" not in have):
                continue
            view = _quote_identifier(f"{prefix}{name}")
            con.execute(f"CREATE OR REPLACE VIEW {view} AS {sql.format(src=_quote_identifier(src))}")
            made.append(f"{prefix}{name}")
    return made
