"""Safety of inputs: nothing from data or paths becomes SQL text or code, and names from data or
config cannot write outside the data directory.

(Column mappings are checked against the contract's allow-list in tests/data/test_importers.py;
landing directories not named dt=YYYY-MM-DD are rejected in tests/data/test_reliability_bad_input.py.)
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import duckdb
import polars as pl
import pytest

from prodassoc_core.data import contracts as c
from prodassoc_core.data import warehouse
from prodassoc_core.ops.settings import Settings
from prodassoc_core.pipeline import stages

from conftest import land

EVIL = "x'); DROP VIEW catalog; --"


def test_quotes_in_paths_and_sql_in_data_are_only_data(tmp_path):
    settings = Settings(data_dir=tmp_path / "it's a \"data\" dir; DROP TABLE x")
    land(settings.landing_dir, n_days=3)
    # a product whose id and title look like SQL, bought in every order of one day
    catalog = settings.landing_dir / "catalog" / "catalog-2024-01-01.parquet"
    frame = pl.read_parquet(catalog)
    pl.concat([frame, pl.DataFrame({c.PRODUCT_ID: [EVIL], c.TITLE: [EVIL]})]).write_parquet(catalog)
    day = settings.landing_dir / "transactions" / "dt=2024-01-02" / "part-0.parquet"
    orders = pl.read_parquet(day)
    extra = orders.unique(c.ORDER_ID, keep="first", maintain_order=True).with_columns(pl.lit(EVIL).alias(c.PRODUCT_ID))
    pl.concat([orders, extra]).write_parquet(day)

    stages.run_nightly(settings, date(2024, 1, 4))
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
        assert {"catalog", "transactions", "latest_product_associations", "manifest"} <= views
        assert con.execute("SELECT title FROM catalog WHERE product_id = ?", [EVIL]).fetchone() == (EVIL,)
        n = con.execute("SELECT count(*) FROM transactions WHERE product_id = ?", [EVIL]).fetchone()[0]
        assert n == 12
        top = con.execute(
            "SELECT count(*) FROM latest_product_associations WHERE product_id = ?", [EVIL]
        ).fetchone()[0]
        assert top > 0


@pytest.mark.parametrize("name", ["../x", "a/b", "", "x; DROP TABLE y", "name'", "1abc", "tab\tle"])
def test_table_and_view_names_must_be_identifiers(tmp_path, name):
    with pytest.raises(ValueError, match="not a valid table name"):
        warehouse.partition_dir(tmp_path, name, date(2024, 1, 1))
    with pytest.raises(ValueError, match="not a valid"):
        warehouse.warehouse_sources(tmp_path, [name])
    with pytest.raises(ValueError, match="not a valid view name"):
        warehouse.refresh_views(tmp_path / "w.duckdb", {"ok": str(tmp_path / "*.parquet"), name: "x"})
    assert not (tmp_path / "w.duckdb").exists()  # rejected before anything was written


@pytest.mark.parametrize("run_date", ["../../etc", "2024-01-01", None])
def test_run_dates_must_be_dates(tmp_path, run_date):
    with pytest.raises(ValueError, match="run_date must be a date"):
        warehouse.partition_dir(tmp_path, "association_rules", run_date)


def test_every_configured_path_lies_inside_the_data_dir(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    root = settings.data_dir.resolve()
    paths = {name: getattr(settings, name) for name, attr in vars(Settings).items() if isinstance(attr, property)}
    assert {"landing_dir", "warehouse_dir", "duckdb_path", "manifest_path", "locks_dir"} <= paths.keys()
    for name, value in paths.items():
        if isinstance(value, str):  # a local URI (e.g. sqlite:///<data_dir>/x.db); remote ones are not paths
            prefix = next((p for p in ("sqlite:///", "file://") if value.startswith(p)), None)
            if prefix is None:
                continue
            value = Path(value[len(prefix):])
        assert isinstance(value, Path) and value.resolve().is_relative_to(root), name
    run = stages.run_dir(settings, date(2024, 1, 1))
    assert run.resolve().is_relative_to(root)


def test_fault_hook_is_inert_unless_set(monkeypatch):
    monkeypatch.delenv(warehouse.FAULT_ENV, raising=False)
    warehouse.fault_point("mine")  # nothing happens
    monkeypatch.setenv(warehouse.FAULT_ENV, "mine@2=raise, other=bogus")
    warehouse._fault_hits.clear()
    warehouse.fault_point("mine")  # first time: not yet
    with pytest.raises(warehouse.InjectedFault, match="injected fault at mine"):
        warehouse.fault_point("mine")
    with pytest.raises(ValueError, match="unknown action 'bogus'"):
        warehouse.fault_point("other")
    warehouse._fault_hits.clear()
