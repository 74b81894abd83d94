"""Object-store (``s3://``) warehouse and landing, through pyarrow's S3 filesystem.

The local data directory stays the working copy: ingestion, staging, the manifest, the
local warehouse and the DuckDB views are unchanged. Two optional locations add the
object store (``object_store_locations``; for now from ``$PRODASSOC_WAREHOUSE_URL`` and
``$PRODASSOC_LANDING_URL``):

* **warehouse** ``s3://bucket/prefix``: ``pipeline.publish`` first publishes every table to
  ``<prefix>/<table>/run_date=YYYY-MM-DD/data.parquet`` (``publish_partition``), then to the
  local warehouse as before. The local partition is written last, so a date counts as
  published (``pipeline.is_published``, backfill skipping) only once the object store has it
  too; a run that failed at the upload republishes on rerun. Both copies are the same bytes.
* **landing** ``s3://bucket/prefix``: ``pipeline.ingest_landing`` first copies new and changed
  objects into the local landing directory (``sync_landing``), under the ingest lock; the
  file-by-file ingestion with its sha256 manifest then runs unchanged. Nothing local is deleted.

Atomic publish on the object store: an S3 object is replaced whole by a completed PUT, a
completed multipart upload or a server-side CopyObject; readers see the previous object or
the new one, never a mix. pyarrow's output stream, however, *completes* its (multipart)
upload when it is closed or garbage-collected, also after an exception part way through
(measured with pyarrow 25: an exception inside ``with fs.open_output_stream(...)`` publishes
the bytes written so far), and it has no abort. So the final key is never written through a
stream: the Parquet file is serialized in memory (the same bytes as the local file), uploaded
to ``<prefix>/_tmp/<host>-<pid>-<random>.parquet``, its size is checked, and it is moved into
place with ``FileSystem.move`` (S3 CopyObject onto the final key, then DeleteObject of the
temporary one). A failure anywhere before the copy leaves the previous partition intact; a
temporary object left by a killed writer is deleted by a later publish once it is
``STALE_TMP_S`` old. CopyObject takes at most 5 GiB per object.

Credentials and endpoint come from the environment: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY`` (and ``AWS_SESSION_TOKEN``), or the AWS config files / instance
metadata as pyarrow resolves them; region from ``AWS_REGION`` or ``AWS_DEFAULT_REGION``; an
S3-compatible server (MinIO, moto) from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``
(``http://host:port``; read here explicitly, whatever pyarrow does with it).

Fault points (``warehouse.fault_point``): ``s3.before_upload``, ``s3.mid_upload`` (half the
bytes written to the temporary object), ``s3.before_copy``, ``s3.after_copy``.

DuckDB: its ``httpfs`` extension is not reachable offline (``INSTALL httpfs`` downloads from
the DuckDB extension site; the PyPI package ``duckdb-extension-httpfs`` is built for DuckDB
1.5.5 and refuses to load in DuckDB 2.0.1). ``connect_analyst`` instead registers the fsspec
filesystem ``s3fs`` (the ``s3`` extra) in a connection and defines views over the published
object-store partitions there. The DuckDB file that ``refresh_views`` writes stays local-only.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import date
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from prodassoc_core.data import warehouse
from prodassoc_core.data.contracts import TableContract

WAREHOUSE_URL_ENV = "PRODASSOC_WAREHOUSE_URL"
LANDING_URL_ENV = "PRODASSOC_LANDING_URL"
ENDPOINT_ENVS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
REGION_ENVS = ("AWS_REGION", "AWS_DEFAULT_REGION")
SYNC_STATE_FILE = "_object_store_sync.json"  # in the local landing dir; ingestion ignores `_` names
STALE_TMP_S = 24 * 3600.0


# --- locations --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Location:
    """``s3://bucket/prefix`` split up; ``path`` is what pyarrow's S3 filesystem takes (``bucket/prefix``)."""

    url: str
    bucket: str
    prefix: str  # no leading or trailing slash; may be empty

    @property
    def path(self) -> str:
        return f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket

    def join(self, *parts: str) -> str:
        return "/".join([self.path, *parts])


def is_object_store_url(value: str | os.PathLike | None) -> bool:
    return isinstance(value, str) and value.lower().startswith("s3://")


def parse_location(url: str) -> Location:
    """``s3://bucket[/prefix]`` -> Location; ValueError for anything else (local paths included)."""
    if not is_object_store_url(url):
        raise ValueError(f"not an s3:// URL: {url!r} (local paths are set with PRODASSOC_DATA_DIR)")
    parts = urlsplit(url)
    bucket = parts.netloc
    if not bucket or parts.query or parts.fragment:
        raise ValueError(f"expected s3://bucket/prefix without query or fragment, got {url!r}")
    segments = [s for s in parts.path.split("/") if s]
    for s in segments:
        _check_segment(s, url)
    return Location(url, bucket, "/".join(segments))


def _check_segment(segment: str, what: str) -> None:
    if segment in (".", "..") or "\\" in segment or "\x00" in segment:
        raise ValueError(f"unsafe path segment {segment!r} in {what!r}")


@dataclass(frozen=True)
class ObjectStoreLocations:
    warehouse: Location | None
    landing: Location | None


def object_store_locations(
    warehouse_url: str | None = None, landing_url: str | None = None
) -> ObjectStoreLocations:
    """The configured object-store locations; arguments win over ``$PRODASSOC_WAREHOUSE_URL`` / ``$PRODASSOC_LANDING_URL``.

    Empty or unset means none (local only). A value that is not ``s3://`` is an error.
    """
    wh = warehouse_url or os.environ.get(WAREHOUSE_URL_ENV) or None
    ld = landing_url or os.environ.get(LANDING_URL_ENV) or None
    return ObjectStoreLocations(parse_location(wh) if wh else None, parse_location(ld) if ld else None)


def _first_env(names: tuple[str, ...]) -> str | None:
    return next((os.environ[n] for n in names if os.environ.get(n)), None)


def s3_filesystem() -> pafs.S3FileSystem:
    """pyarrow's S3 filesystem configured from the environment (see module doc)."""
    kwargs: dict = {}
    region = _first_env(REGION_ENVS)
    if region:
        kwargs["region"] = region
    endpoint = _first_env(ENDPOINT_ENVS)
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs["endpoint_override"] = parts.netloc
        kwargs["scheme"] = parts.scheme
    return pafs.S3FileSystem(**kwargs)


# --- warehouse --------------------------------------------------------------------------------


def partition_key(location: Location, table: str, run_date: date) -> str:
    """``bucket/prefix/<table>/run_date=YYYY-MM-DD/data.parquet``; names and dates checked as locally."""
    rel = warehouse.partition_dir(Path("."), table, run_date)  # validates table and run_date
    return location.join(*PurePosixPath(rel.as_posix()).parts, warehouse.DATA_FILE)


def parquet_bytes(table: pa.Table) -> pa.Buffer:
    """The Parquet file ``warehouse.atomic_write_parquet`` writes for ``table``, in memory."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def _remove_stale_tmp(fs: pafs.FileSystem, tmp_dir: str, now: float) -> None:
    for info in fs.get_file_info(pafs.FileSelector(tmp_dir, allow_not_found=True)):
        if info.type == pafs.FileType.File and info.mtime and now - info.mtime.timestamp() > STALE_TMP_S:
            try:
                fs.delete_file(info.path)
            except OSError:
                pass  # another writer removed it


def _upload(fs: pafs.FileSystem, key: str, data: pa.Buffer) -> None:
    """Write ``data`` to ``key`` (a temporary key: a failure may leave a partial object there)."""
    stream = fs.open_output_stream(key)
    try:
        half = data.size // 2
        stream.write(data.slice(0, half))
        warehouse.fault_point("s3.mid_upload")
        stream.write(data.slice(half))
    finally:
        stream.close()  # completes the upload, also after an exception: hence the temporary key


def publish_partition(
    table: pa.Table,
    contract: TableContract,
    warehouse_url: str | Location,
    run_date: date,
    fs: pafs.FileSystem | None = None,
) -> warehouse.WriteResult:
    """Check ``table`` against its contract and publish it as the object store's ``run_date`` partition.

    Readers of the final key see the previous complete object or the new one (module doc).
    ``WriteResult.path`` holds the ``s3://`` URL of the partition file.
    """
    if table.schema != contract.schema:
        table = contract.conform(table)
    location = warehouse_url if isinstance(warehouse_url, Location) else parse_location(warehouse_url)
    fs = fs or s3_filesystem()
    key = partition_key(location, contract.name, run_date)
    tmp_dir = location.join(warehouse.TMP_DIR)
    data = parquet_bytes(table)
    _remove_stale_tmp(fs, tmp_dir, time.time())
    tmp = f"{tmp_dir}/{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex}.parquet"
    try:
        warehouse.fault_point("s3.before_upload")
        _upload(fs, tmp, data)
        size = fs.get_file_info(tmp).size
        if size != data.size:
            raise OSError(f"s3://{tmp}: uploaded {size} bytes, expected {data.size}")
        warehouse.fault_point("s3.before_copy")
        fs.move(tmp, key)  # CopyObject onto the final key, then DeleteObject of tmp
        warehouse.fault_point("s3.after_copy")
    finally:
        try:
            if fs.get_file_info(tmp).type != pafs.FileType.NotFound:
                fs.delete_file(tmp)
        except OSError:
            pass  # best effort: a later publish removes it once stale
    return warehouse.WriteResult(contract.name, run_date, f"s3://{key}", table.num_rows)  # type: ignore[arg-type]


def is_published(warehouse_url: str | Location, table: str, run_date: date, fs: pafs.FileSystem | None = None) -> bool:
    location = warehouse_url if isinstance(warehouse_url, Location) else parse_location(warehouse_url)
    fs = fs or s3_filesystem()
    return fs.get_file_info(partition_key(location, table, run_date)).type == pafs.FileType.File


def read_partition(
    warehouse_url: str | Location, contract: TableContract, run_date: date, fs: pafs.FileSystem | None = None
) -> pa.Table:
    """Read one object-store partition and check it against its contract."""
    location = warehouse_url if isinstance(warehouse_url, Location) else parse_location(warehouse_url)
    fs = fs or s3_filesystem()
    key = partition_key(location, contract.name, run_date)
    with fs.open_input_file(key) as f:
        table = pq.read_table(f)
    if table.schema != contract.schema:
        raise ValueError(
            f"s3://{key}: schema does not match contract {contract.name!r}:\n{table.schema}\nexpected\n{contract.schema}"
        )
    return table


# --- landing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyncReport:
    copied: list[str]  # relative paths (POSIX) downloaded this time
    unchanged: int


def _load_state(path: Path, url: str) -> dict[str, list]:
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return state.get("objects", {}) if state.get("url") == url else {}


def _save_state(path: Path, url: str, objects: dict[str, list]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"url": url, "objects": objects}, indent=0, sort_keys=True))
    os.replace(tmp, path)


def sync_landing(
    landing_url: str | Location, local_landing_dir: Path, fs: pafs.FileSystem | None = None
) -> SyncReport:
    """Copy new and changed Parquet objects under ``landing_url`` into ``local_landing_dir``.

    The relative layout is kept (``transactions/dt=.../*.parquet``, ``catalog/*.parquet``).
    An object is copied when its local file is missing, or its size or last-modified time
    differs from what the previous sync recorded (``_object_store_sync.json`` in the landing
    dir; S3's last-modified has one-second resolution). Names with a hidden or temporary part
    (``.x``, ``_x``) are skipped, as ingestion skips them. Each file is downloaded to a
    temporary name next to it and renamed into place; local files are never deleted.
    """
    location = landing_url if isinstance(landing_url, Location) else parse_location(landing_url)
    fs = fs or s3_filesystem()
    local = Path(local_landing_dir)
    local.mkdir(parents=True, exist_ok=True)
    state_path = local / SYNC_STATE_FILE
    state = _load_state(state_path, location.url)
    copied, unchanged = [], 0
    infos = fs.get_file_info(pafs.FileSelector(location.path, recursive=True, allow_not_found=True))
    for info in sorted(infos, key=lambda i: i.path):
        if info.type != pafs.FileType.File or not info.path.endswith(".parquet"):
            continue
        rel = PurePosixPath(info.path).relative_to(location.path)
        if any(part.startswith((".", "_")) for part in rel.parts):
            continue
        for part in rel.parts:
            _check_segment(part, info.path)
        target = local.joinpath(*rel.parts)
        stamp = [info.size, info.mtime_ns]
        if state.get(rel.as_posix()) == stamp and target.is_file() and target.stat().st_size == info.size:
            unchanged += 1
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            with fs.open_input_stream(info.path) as src, open(tmp, "wb") as dst:
                while chunk := src.read(1 << 22):
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
            if tmp.stat().st_size != info.size:
                raise OSError(f"s3://{info.path}: downloaded {tmp.stat().st_size} bytes, expected {info.size}")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        state[rel.as_posix()] = stamp
        _save_state(state_path, location.url, state)
        copied.append(rel.as_posix())
    return SyncReport(copied, unchanged)


# --- pipeline hooks ---------------------------------------------------------------------------


def sync_configured_landing(local_landing_dir: Path, landing_url: str | None = None) -> SyncReport | None:
    """``sync_landing`` from the configured landing URL; None (nothing done) when there is none."""
    location = object_store_locations(landing_url=landing_url).landing
    return sync_landing(location, local_landing_dir) if location else None


def publish_configured(
    staged: dict[str, Path], run_date: date, warehouse_url: str | None = None
) -> list[warehouse.WriteResult]:
    """Publish staged tables ``{name: parquet path}`` to the configured object-store warehouse.

    Nothing is read or done (returns []) when no object-store warehouse is configured.
    """
    from prodassoc_core.data.contracts import ALL_TABLES

    location = object_store_locations(warehouse_url=warehouse_url).warehouse
    if location is None:
        return []
    fs = s3_filesystem()
    return [
        publish_partition(pq.read_table(path), ALL_TABLES[name], location, run_date, fs)
        for name, path in sorted(staged.items())
    ]


# --- analysts ---------------------------------------------------------------------------------


def s3fs_filesystem():
    """An ``s3fs`` (fsspec) filesystem configured like ``s3_filesystem`` (needs the ``s3`` extra)."""
    try:
        import s3fs
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("DuckDB views over s3:// need s3fs: pip install 'prodassoc[s3]'") from exc
    client_kwargs = {}
    region = _first_env(REGION_ENVS)
    if region:
        client_kwargs["region_name"] = region
    return s3fs.S3FileSystem(endpoint_url=_first_env(ENDPOINT_ENVS), client_kwargs=client_kwargs)


def connect_analyst(duckdb_path: Path | None = None, warehouse_url: str | None = None, tables=None):
    """A DuckDB connection with views over the object-store warehouse.

    Opens ``duckdb_path`` read-only (its local views stay usable) or an in-memory database,
    registers ``s3fs`` for ``s3://`` and creates temporary views ``s3_<table>`` (all run
    dates, with ``run_date``) and ``s3_latest_<table>`` for each published table that has a
    partition in the object store. The views live in this connection only: other
    connections cannot read ``s3://`` without the filesystem registered.
    """
    import duckdb

    from prodassoc_core.data.contracts import ALL_TABLES

    location = object_store_locations(warehouse_url=warehouse_url).warehouse
    if location is None:
        raise ValueError(f"no object-store warehouse configured (${WAREHOUSE_URL_ENV} or warehouse_url)")
    con = duckdb.connect(str(duckdb_path), read_only=True) if duckdb_path else duckdb.connect()
    fsspec_fs = s3fs_filesystem()
    con.register_filesystem(fsspec_fs)
    for name in sorted(tables or ALL_TABLES):
        warehouse.check_identifier(name)
        if not fsspec_fs.glob(f"{location.path}/{name}/run_date=*/{warehouse.DATA_FILE}"):
            continue
        glob = f"s3://{location.path}/{name}/run_date=*/{warehouse.DATA_FILE}"
        view, latest = f'"s3_{name}"', f'"s3_latest_{name}"'
        con.execute(
            f"CREATE OR REPLACE TEMP VIEW {view} AS SELECT * FROM "
            f"read_parquet({warehouse._quote_literal(glob)}, hive_partitioning = true, union_by_name = true)"
        )
        con.execute(
            f"CREATE OR REPLACE TEMP VIEW {latest} AS SELECT * FROM {view} "
            f"WHERE run_date = (SELECT max(run_date) FROM {view})"
        )
    return con


__all__ = [
    "Location",
    "ObjectStoreLocations",
    "SyncReport",
    "connect_analyst",
    "is_object_store_url",
    "is_published",
    "object_store_locations",
    "parse_location",
    "parquet_bytes",
    "partition_key",
    "publish_configured",
    "publish_partition",
    "read_partition",
    "s3_filesystem",
    "sync_configured_landing",
    "sync_landing",
]
