"""The nightly stages as plain functions from paths to paths (no orchestration here).

Each stage reads what the previous one wrote under the run's work directory
``<data>/runs/as_of=YYYY-MM-DD/`` and writes its own output there; ``publish``
moves the finished tables into the warehouse. Prefect tasks wrap these one to one
(tasks/nightly.py), and the CLI's ad-hoc commands call them directly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from prodassoc_core import associations, baskets, ingest, mining, warehouse
from prodassoc_core.contracts import ASSOCIATION_RULES, PRODUCT_ASSOCIATIONS, PUBLISHED_TABLES, TRANSACTIONS
from prodassoc_core.settings import BasketConfig, Settings

log = logging.getLogger("prodassoc.pipeline")

BASKETS_FILE = "baskets.parquet"


@dataclass(frozen=True)
class Window:
    """The training window [start, end): everything before as_of, bounded by the lookback."""

    start: date
    end: date

    @classmethod
    def before(cls, as_of: date, lookback_days: int) -> "Window":
        return cls(as_of - timedelta(days=lookback_days), as_of)


def run_dir(settings: Settings, as_of: date) -> Path:
    path = settings.data_dir / "runs" / f"as_of={as_of.isoformat()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def ingest_landing(settings: Settings, as_of: date) -> ingest.IngestReport:
    """Validate and stage every landed file not yet ingested (partitions before as_of)."""
    return ingest.ingest(
        landing_dir=settings.landing_dir,
        staging_dir=settings.staging_dir,
        quarantine_dir=settings.quarantine_dir,
        manifest_path=settings.manifest_path,
        gx_dir=settings.gx_dir,
        cfg=settings.validation,
        as_of=as_of,
    )


def build_baskets(settings: Settings, as_of: date) -> Path:
    """Baskets of the training window, written to the run directory."""
    window = Window.before(as_of, settings.lookback_days)
    lines = ingest.read_staged_transactions(settings.staging_dir, window.start, window.end)
    out = run_dir(settings, as_of) / BASKETS_FILE
    frame = baskets.baskets(lines, settings.baskets).collect()
    warehouse.atomic_write_parquet(frame.to_arrow(), out, out.parent / warehouse.TMP_DIR)
    log.info("baskets: %d orders in [%s, %s)", frame.height, window.start, window.end)
    return out


def read_baskets(path: Path) -> list[list[str]]:
    return pl.read_parquet(path, columns=[baskets.ITEMS])[baskets.ITEMS].to_list()


def _stage(table: pa.Table, name: str, baskets_path: Path) -> Path:
    """Write a finished table next to the run's baskets, ready for publish."""
    out = baskets_path.parent / f"{name}.parquet"
    warehouse.atomic_write_parquet(table, out, out.parent / warehouse.TMP_DIR)
    log.info("%s: %d rows", name, table.num_rows)
    return out


def mine(settings: Settings, baskets_path: Path, as_of: date) -> Path:
    """Association rules of the training window's baskets."""
    rules = mining.mine_rules(read_baskets(baskets_path), settings.mining)
    return _stage(rules, ASSOCIATION_RULES.name, baskets_path)


def associate(settings: Settings, baskets_path: Path, as_of: date) -> Path:
    """Top-K associated products per product from co-purchase statistics."""
    table = associations.product_associations(read_baskets(baskets_path), settings.associations)
    return _stage(table, PRODUCT_ASSOCIATIONS.name, baskets_path)


def publish(settings: Settings, as_of: date, staged: dict[str, Path]) -> list[warehouse.WriteResult]:
    """Move finished tables into the warehouse partition for as_of and refresh the DuckDB views."""
    results = [
        warehouse.write_partition(pq.read_table(path), PUBLISHED_TABLES[name], settings.warehouse_dir, as_of)
        for name, path in sorted(staged.items())
    ]
    refresh_views(settings)
    return results


def refresh_views(settings: Settings) -> list[str]:
    """DuckDB views over the published tables and the staged, quarantined and manifest data."""
    sources = warehouse.warehouse_sources(settings.warehouse_dir, sorted(PUBLISHED_TABLES))
    staging, quarantine = settings.staging_dir.resolve(), settings.quarantine_dir.resolve()
    sources |= {
        "transactions": str(staging / "transactions" / "dt=*" / "*.parquet"),
        "catalog": str(staging / "catalog" / "*.parquet"),
        "quarantine_transactions": str(quarantine / "transactions" / "dt=*" / "*.parquet"),
        "quarantine_catalog": str(quarantine / "catalog" / "*.parquet"),
        "manifest": str(settings.manifest_path.resolve()),
    }
    return warehouse.refresh_views(settings.duckdb_path, sources)


def load_baskets_file(path: Path, cfg: BasketConfig | None = None) -> list[list[str]]:
    """Baskets from a basket CSV (one basket per line) or a canonical transactions Parquet.

    Transactions go through the same basket rules as the nightly flow.
    """
    if not path.exists():
        raise FileNotFoundError(f"no such input: {path}")
    if path.suffix.lower() == ".parquet":
        lines = pl.from_arrow(TRANSACTIONS.conform(pq.read_table(path))).lazy()
        return baskets.baskets(lines, cfg or BasketConfig()).collect()[baskets.ITEMS].to_list()
    from prodassoc_core.importers import read_basket_csv

    return read_basket_csv(path)
