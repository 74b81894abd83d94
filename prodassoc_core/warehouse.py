"""The warehouse: published tables as Parquet partitioned by run date, plus DuckDB views.

Layout: ``<warehouse>/<table>/run_date=YYYY-MM-DD/data.parquet``. A partition is one
file, written to ``<warehouse>/_tmp`` and moved into place with ``os.replace``: a
reader sees either the previous complete file or the new complete one, never a
half-written file, and a rerun of the same run date replaces its own partition.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from prodassoc_core.contracts import TableContract

DATA_FILE = "data.parquet"
TMP_DIR = "_tmp"


@dataclass(frozen=True)
class WriteResult:
    table: str
    run_date: date
    path: Path
    rows: int


def partition_dir(warehouse_dir: Path, table: str, run_date: date) -> Path:
    return warehouse_dir / table / f"run_date={run_date.isoformat()}"


def atomic_write_parquet(table: pa.Table, path: Path, tmp_dir: Path) -> None:
    """Write ``table`` to ``path`` so that readers never see a partial file."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f"{uuid.uuid4().hex}.parquet"
    try:
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_partition(
    table: pa.Table, contract: TableContract, warehouse_dir: Path, run_date: date
) -> WriteResult:
    """Check ``table`` against its contract and publish it as the ``run_date`` partition."""
    if table.schema != contract.schema:
        table = contract.conform(table)
    path = partition_dir(warehouse_dir, contract.name, run_date) / DATA_FILE
    atomic_write_parquet(table, path, warehouse_dir / TMP_DIR)
    return WriteResult(contract.name, run_date, path, table.num_rows)


def read_partition(warehouse_dir: Path, contract: TableContract, run_date: date) -> pa.Table:
    """Read one published partition and check it against its contract."""
    path = partition_dir(warehouse_dir, contract.name, run_date) / DATA_FILE
    table = pq.read_table(path)
    if table.schema != contract.schema:
        raise ValueError(
            f"{path}: schema does not match contract {contract.name!r}:\n{table.schema}\nexpected\n{contract.schema}"
        )
    return table


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def refresh_views(duckdb_path: Path, sources: dict[str, str]) -> list[str]:
    """(Re)create one DuckDB view per source glob that matches files; returns the views made.

    ``sources`` maps view name -> Parquet glob. Published tables get a view over all
    run dates plus ``latest_<name>`` restricted to the newest run date.
    """
    import duckdb

    made = []
    duckdb_path.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(duckdb_path)) as con:
        for name, glob in sorted(sources.items()):
            if not name.isidentifier():
                raise ValueError(f"not a valid view name: {name!r}")
            if not list(Path("/").glob(glob.lstrip("/"))):
                con.execute(f"DROP VIEW IF EXISTS {name}")
                continue
            scan = f"read_parquet({_quote_literal(glob)}, hive_partitioning = true, union_by_name = true)"
            con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM {scan}")
            made.append(name)
            if "run_date=" in glob:
                con.execute(
                    f"CREATE OR REPLACE VIEW latest_{name} AS SELECT * FROM {name} "
                    f"WHERE run_date = (SELECT max(run_date) FROM {name})"
                )
                made.append(f"latest_{name}")
    return made


def warehouse_sources(warehouse_dir: Path, table_names: list[str]) -> dict[str, str]:
    """View name -> glob for the published tables."""
    root = warehouse_dir.resolve()
    return {name: str(root / name / "run_date=*" / DATA_FILE) for name in table_names}
