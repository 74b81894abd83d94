from datetime import date

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prodassoc_core.data.contracts import PRODUCT_ASSOCIATIONS
from prodassoc_core.data.warehouse import (
    TMP_DIR, ViewsError, read_partition, refresh_views, warehouse_sources, write_partition,
)
from prodassoc_core.mining.associations import product_associations
from prodassoc_core.ops.settings import AssociationConfig


def table(baskets):
    return product_associations(baskets, AssociationConfig(method="confidence", min_pair_count=1))


def test_rerun_replaces_its_own_partition_and_views_read_it(tmp_path):
    wh = tmp_path / "wh"
    write_partition(table([["a", "b"]]), PRODUCT_ASSOCIATIONS, wh, date(2024, 1, 1))
    write_partition(table([["a", "b"], ["c", "d"]]), PRODUCT_ASSOCIATIONS, wh, date(2024, 1, 2))
    write_partition(table([["x", "y"]]), PRODUCT_ASSOCIATIONS, wh, date(2024, 1, 2))  # rerun
    assert read_partition(wh, PRODUCT_ASSOCIATIONS, date(2024, 1, 2)).num_rows == 2
    assert list((wh / TMP_DIR).iterdir()) == []

    db = tmp_path / "w.duckdb"
    views = refresh_views(db, warehouse_sources(wh, ["product_associations", "association_rules"]))
    assert views == ["latest_product_associations", "product_associations"] or set(views) == {
        "product_associations", "latest_product_associations"
    }
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM product_associations").fetchone()[0] == 4
    latest = con.execute("SELECT DISTINCT product_id FROM latest_product_associations ORDER BY 1").fetchall()
    assert latest == [("x",), ("y",)]


def test_write_rejects_table_off_contract(tmp_path):
    bad = pa.table({"product_id": ["a"]})
    with pytest.raises(ValueError, match="missing required column"):
        write_partition(bad, PRODUCT_ASSOCIATIONS, tmp_path, date(2024, 1, 1))


def test_refresh_while_an_analyst_holds_the_duckdb_file_open(tmp_path):
    wh, db = tmp_path / "wh", tmp_path / "w.duckdb"
    write_partition(table([["a", "b"]]), PRODUCT_ASSOCIATIONS, wh, date(2024, 1, 1))
    refresh_views(db, warehouse_sources(wh, ["product_associations"]))
    analyst = duckdb.connect(str(db), read_only=True)  # holds DuckDB's lock on the file
    write_partition(table([["c", "d"], ["e", "f"]]), PRODUCT_ASSOCIATIONS, wh, date(2024, 1, 2))
    refresh_views(db, warehouse_sources(wh, ["product_associations"]))
    # the open session keeps working; a new one sees the new partition
    assert analyst.execute("SELECT count(*) FROM product_associations").fetchone()[0] == 6
    analyst.close()
    fresh = duckdb.connect(str(db), read_only=True)
    assert fresh.execute("SELECT max(run_date) FROM latest_product_associations").fetchone()[0] == date(2024, 1, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.duckdb", "wh"]


def test_a_damaged_file_under_a_view_is_one_clear_error_naming_it(tmp_path):
    good, bad = tmp_path / "staging" / "a.parquet", tmp_path / "staging" / "b.parquet"
    good.parent.mkdir()
    pq.write_table(pa.table({"x": [1, 2]}), good)
    bad.write_bytes(good.read_bytes()[:40])  # cut short outside prodassoc
    db = tmp_path / "views.duckdb"
    with pytest.raises(ViewsError, match=rf"DuckDB view staged could not be built: .*{bad.name}.*the next nightly run"):
        refresh_views(db, {"staged": f"{good.parent}/*.parquet"})
    assert not db.exists() and not list(tmp_path.glob(".views.duckdb.*"))  # nothing half-built left behind
