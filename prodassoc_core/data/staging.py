"""Stage (ingest step 5): where accepted and quarantined rows go, written atomically, and read back.

The layout of staging and quarantine is in ``ingest``'s docstring: accepted rows under
``<staging>/<table>/...``, failing rows under ``<quarantine>/<table>/...``, each output named
``<file>-<sha8>.parquet`` after its landed file (the staged catalog is ``catalog.parquet``).
Every write is a temporary file (``.<name>.<pid>.tmp``) renamed into place in the same
directory; temporary files of killed writers are removed by ``remove_stale_temp_files``.
Staged files carry their source file and sha256 in the Parquet key-value metadata.
Downstream reads staged rows through ``read_staged_transactions`` and ``read_staged_catalog``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from prodassoc_core.data import contracts as c
from prodassoc_core.data.contracts import TableContract
from prodassoc_core.data.landing import Landed, partition_dirs, visible_parquet
from prodassoc_core.data.warehouse import remove_stale_temp, storage_errors

CATALOG_FILE = "catalog.parquet"
META_SOURCE = b"prodassoc.source_file"
META_SHA = b"prodassoc.sha256"


# --- atomic writes ----------------------------------------------------------------------


def tmp_pid(name: str) -> int | None:
    """Writer pid of a ``write_atomic`` temporary file (``.<name>.<pid>.tmp``)."""
    parts = name.split(".")
    return int(parts[-2]) if len(parts) >= 3 and parts[-2].isdigit() else None


def remove_stale_temp_files(*roots: Path) -> int:
    """Remove temporary files left under ``roots`` by killed writers; returns how many."""
    n = 0
    for root in roots:
        if Path(root).is_dir():
            for directory in {p.parent for p in Path(root).rglob(".*.tmp")}:
                n += len(remove_stale_temp(directory, ".*.tmp", tmp_pid))
    return n


def write_atomic(path: Path, write) -> None:
    """Call ``write(tmp)`` for a temporary file next to ``path``, then rename it into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with storage_errors(path):  # a full disk or a read-only zone: one line naming the file
            path.parent.mkdir(parents=True, exist_ok=True)
            write(tmp)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_table(path: Path, table: pa.Table) -> None:
    write_atomic(path, lambda tmp: pq.write_table(table, tmp))


def write_frame(path: Path, frame: pl.DataFrame) -> None:
    write_atomic(path, lambda tmp: frame.write_parquet(tmp))


def contract_table(frame: pl.DataFrame, contract: TableContract, source: Landed, sha: str) -> pa.Table:
    """``frame``'s contract columns as the contract's Arrow table, tagged with its source and sha256."""
    table = contract.conform(frame.select(contract.polars_schema.names()).to_arrow())
    return table.replace_schema_metadata({META_SOURCE: source.rel.encode(), META_SHA: sha.encode()})


# --- where outputs go -------------------------------------------------------------------


def output_name(file: Landed, sha: str) -> str:
    return f"{file.path.stem}-{sha[:8]}.parquet"


def output_dir(root: Path, file: Landed) -> Path:
    if file.table == c.TRANSACTIONS.name:
        return root / c.TRANSACTIONS.name / f"dt={file.partition}"
    return root / file.table


def staged_catalog_path(staging_dir: Path) -> Path:
    return Path(staging_dir) / c.CATALOG.name / CATALOG_FILE


def staged_sha(path: Path) -> str | None:
    """The sha256 of the landed file a staged file was built from (its metadata); None if none
    (no file, or one that cannot be read)."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowException):
        return None
    value = meta.get(META_SHA)
    return value.decode() if value else None


def footer_rows(path: Path) -> int | None:
    """The rows a Parquet file's footer records; None when the file is missing or unreadable."""
    try:
        return pq.read_metadata(path).num_rows
    except (OSError, pa.ArrowException):
        return None


def set_aside(path: Path, label: str) -> Path:
    """Move a damaged file to ``<name>.<label>`` beside it (``-2``, ``-3``, ... when taken), out of
    every reader's glob, its bytes kept; returns where it went."""
    base = path.with_name(f"{path.name}.{label}")
    target, n = base, 1
    while target.exists():
        n += 1
        target = base.with_name(f"{base.name}-{n}")
    os.replace(path, target)
    return target


@dataclass(frozen=True)
class Outputs:
    """The staging and quarantine roots of one run: a landed file's output paths."""

    staging: Path
    quarantine: Path

    def staged_path(self, file: Landed, sha: str) -> Path:
        return output_dir(self.staging, file) / output_name(file, sha)

    def quarantine_path(self, file: Landed, sha: str) -> Path:
        return output_dir(self.quarantine, file) / output_name(file, sha)

    def remove(self, file: Landed, sha: str) -> None:
        """Delete the staged and quarantined outputs of ``file`` as of content ``sha``."""
        for root in (self.staging, self.quarantine):
            (output_dir(root, file) / output_name(file, sha)).unlink(missing_ok=True)


# --- readers for downstream ------------------------------------------------------------------


def read_staged_transactions(staging_dir: Path, start: date, end: date) -> pl.LazyFrame:
    """Accepted transactions with partition date in [start, end), as contracts.TRANSACTIONS.

    Lazy: filters and projections reach the Parquet reader. Empty (with the schema) when
    no partition is staged in the window.
    """
    schema = c.TRANSACTIONS.polars_schema
    files = [
        f
        for day, d in partition_dirs(Path(staging_dir) / c.TRANSACTIONS.name)
        if start <= day < end
        for f in visible_parquet(d)
    ]
    if not files:
        return pl.LazyFrame(schema=schema)
    return pl.scan_parquet(files, schema=schema, hive_partitioning=False, glob=False)


def read_staged_catalog(staging_dir: Path) -> pl.DataFrame:
    """The accepted rows of the current catalog snapshot, as contracts.CATALOG."""
    path = staged_catalog_path(staging_dir)
    if not path.exists():
        raise FileNotFoundError(f"no staged catalog at {path}; run ingest first")
    return pl.from_arrow(c.CATALOG.conform(pq.read_table(path)))
