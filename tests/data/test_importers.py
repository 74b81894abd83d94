"""Importers: mappings, Online Retail rules, catalog derivation, basket CSV, canonical files, landing."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from prodassoc_core.data import importers as im
from prodassoc_core.data.contracts import CATALOG, TRANSACTIONS

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample" / "online_retail_sample.parquet"


def write_v1(path: Path, rows: list[tuple]) -> Path:
    """A tiny file in the 2010-2011 layout: (invoice, code, description, qty, when, price, customer)."""
    pl.DataFrame(
        rows,
        schema={"InvoiceNo": pl.String, "StockCode": pl.String, "Description": pl.String, "Quantity": pl.Int64,
                "InvoiceDate": pl.Datetime("us"), "UnitPrice": pl.Float64, "CustomerID": pl.Float64},
        orient="row",
    ).with_columns(Country=pl.lit("United Kingdom")).write_parquet(path)
    return path


def write_v2(path: Path, rows: list[tuple]) -> Path:
    """The same in the Online Retail II layout (nanosecond timestamps, as in the real copy)."""
    pl.DataFrame(
        rows,
        schema={"Invoice": pl.String, "StockCode": pl.String, "Description": pl.String, "Quantity": pl.Int64,
                "InvoiceDate": pl.Datetime("ns"), "Price": pl.Float64, "Customer ID": pl.Float64},
        orient="row",
    ).with_columns(Country=pl.lit("France")).write_parquet(path)
    return path


def at(day: int, hour: int = 10) -> datetime:
    return datetime(2010, 12, day, hour)


# --- mappings ------------------------------------------------------------------------------


def test_parse_mapping_and_allow_list():
    m = im.parse_mapping(" order_id = InvoiceNo, product_id=StockCode,customer_id=Customer ID,")
    assert m.as_dict() == {"order_id": "InvoiceNo", "product_id": "StockCode", "customer_id": "Customer ID"}
    assert m.source("quantity") == "quantity"  # unnamed columns map to themselves
    with pytest.raises(ValueError, match="'sku'"):
        im.parse_mapping("sku=StockCode")
    with pytest.raises(ValueError, match="twice"):
        im.parse_mapping("order_id=a,order_id=b")
    with pytest.raises(ValueError, match="canonical=source"):
        im.parse_mapping("order_id")
    with pytest.raises(ValueError, match="'title'"):  # a catalog column is not a transactions column
        im.ColumnMapping(TRANSACTIONS, {"title": "Name"})
    assert im.parse_mapping("title=Name", CATALOG).as_dict() == {"title": "Name"}
    hash(m)  # frozen and hashable


def test_missing_source_column_names_file_and_column(tmp_path):
    path = tmp_path / "tx.csv"
    path.write_text("order_id,product_id,quantity,ordered_at\n1,A,1,2011-01-01 10:00\n")
    with pytest.raises(ValueError, match=r"tx\.csv.*'Sku' \(for product_id\)"):
        im.canonical_transactions(path, "product_id=Sku")
    path.write_text("order_id,quantity,ordered_at\n1,1,2011-01-01 10:00\n")
    with pytest.raises(ValueError, match=r"tx\.csv.*'product_id'"):
        im.canonical_transactions(path)


# --- Online Retail ----------------------------------------------------------------------------


def test_online_retail_overlap_keeps_one_copy_later_file_wins(tmp_path):
    # File II runs 2010-12-01..12-09 (and earlier); file I starts 2010-12-01 10:00.
    ii = write_v2(tmp_path / "ii.parquet", [
        ("500", "A", "OLD A", 1, datetime(2010, 11, 30, 9), 1.0, 1.0),
        ("501", "A", "OLD A", 2, at(1, 9), 1.0, 1.0),        # before file I's first line: file II's
        ("502", "B", "OLD B", 3, at(1, 10), 1.0, 1.0),       # overlap: file I's copy wins
        ("503", "B", "OLD B", 4, at(9, 15), 1.0, None),      # overlap
    ])
    i = write_v1(tmp_path / "i.parquet", [
        ("502", "B", "NEW B", 3, at(1, 10), 1.5, 1.0),
        ("503", "B", "NEW B", 4, at(9, 15), 1.5, None),
        ("C600", "B", "NEW B", -4, at(10, 9), 1.5, 2.0),     # cancellation kept
        ("601", "POST", "POSTAGE", 1, at(10, 9), 18.0, 2.0),  # non-product kept
    ])
    for order in ([i, ii], [ii, i]):  # the order given does not matter: first timestamps decide
        tx = im.online_retail_transactions(order).collect()
        assert tx.columns == TRANSACTIONS.schema.names
        assert tx["order_id"].to_list() == ["500", "501", "502", "503", "C600", "601"]
        assert tx.filter(pl.col("order_id") == "502")["unit_price"].to_list() == [1.5]
        assert tx.filter(pl.col("order_id") == "C600")["quantity"].to_list() == [-4]
        assert tx.schema == TRANSACTIONS.polars_schema


def test_online_retail_values(tmp_path):
    path = write_v1(tmp_path / "i.parquet", [
        ("536365", " 85123A ", "HEART", 6, at(1), 2.55, 17850.0),
        ("536366", "85123a", "heart", 1, at(1), 2.55, None),
    ])
    tx = im.online_retail_transactions(path).collect()
    assert tx["product_id"].to_list() == ["85123A", "85123A"]  # stripped and upper-cased: one product
    assert tx["customer_id"].to_list() == ["17850", None]
    assert tx["ordered_at"].dtype == pl.Datetime("us")


def test_online_retail_detect_rejects_other_files(tmp_path):
    path = tmp_path / "x.parquet"
    pl.DataFrame({"InvoiceNo": ["1"], "StockCode": ["A"]}).write_parquet(path)
    with pytest.raises(ValueError, match=r"x\.parquet: not an Online Retail file.*'Quantity'"):
        im.online_retail_transactions([path])


def test_online_retail_sample_imports(tmp_path):
    summary = im.import_source("online-retail", [SAMPLE], tmp_path)
    raw = pl.read_parquet(SAMPLE)
    assert summary.rows == raw.height
    assert summary.partitions == raw["InvoiceDate"].dt.date().n_unique()
    assert summary.products == raw["StockCode"].str.strip_chars().str.to_uppercase().n_unique()
    landed = pl.read_parquet(tmp_path / "transactions" / "*" / "*.parquet", hive_partitioning=False)
    assert landed.height == raw.height
    assert landed["quantity"].sum() == raw["Quantity"].sum()
    assert (landed["quantity"] < 0).sum() > 0 and landed["order_id"].str.starts_with("C").sum() > 0


# --- catalog derivation ----------------------------------------------------------------------------


def test_derive_catalog_ties_missing_markers_and_fallback():
    lines = pl.DataFrame({
        "product_id": ["A", "A", "A", "A", "B", "B", "B", "C", "C", "C", "D"],
        "description": ["ZEBRA", "APPLE", " ZEBRA ", "APPLE",  # tie 2-2: lexicographically smallest
                        "Unknown", "UNKNOWN", "Mug",           # markers never win
                        None, "nan", "",                       # never described: the id
                        "  "],
    }).lazy()
    cat = im.derive_catalog(lines)
    assert cat.columns == CATALOG.schema.names
    assert cat["product_id"].to_list() == ["A", "B", "C", "D"]
    assert cat["title"].to_list() == ["APPLE", "Mug", "C", "D"]
    assert cat["description"].null_count() == 4
    assert im.derive_catalog(lines, None)["title"].to_list() == ["A", "B", "C", "D"]


def test_derive_catalog_most_frequent_wins():
    lines = pl.DataFrame({"product_id": ["A"] * 3, "description": ["B TITLE", "B TITLE", "A TITLE"]}).lazy()
    assert im.derive_catalog(lines)["title"].to_list() == ["B TITLE"]


# --- basket CSV ----------------------------------------------------------------------------------


def test_basket_csv(tmp_path):
    path = tmp_path / "baskets.csv"
    path.write_text("citrus fruit, margarine ,,ready soups\n\nwhole milk\nyogurt,yogurt,\"a, b\"\n")
    assert im.read_basket_csv(path) == [
        ["citrus fruit", "margarine", "ready soups"], ["whole milk"], ["yogurt", "a, b"],
    ]
    tx = im.basket_csv_transactions(path, date(2011, 3, 1)).collect()
    assert tx.schema == TRANSACTIONS.polars_schema
    assert tx["order_id"].to_list() == ["1", "1", "1", "3", "4", "4"]  # file line numbers
    assert tx["quantity"].to_list() == [1] * 6
    assert tx["ordered_at"].unique().to_list() == [datetime(2011, 3, 1)]
    assert tx["unit_price"].null_count() == 6 and tx["customer_id"].null_count() == 6
    spread = im.basket_csv_transactions(path, date(2011, 3, 1), timedelta(hours=1)).collect()
    assert spread["ordered_at"].unique(maintain_order=True).to_list() == [
        datetime(2011, 3, 1, h) for h in range(3)
    ]

    info = tmp_path / "info.csv"
    info.write_text("labels,level2,level1\nwhole milk,dairy produce,fresh products\nyogurt,dairy produce,fresh products\n")
    cat = im.basket_csv_catalog(tx.lazy(), info)
    assert cat["product_id"].to_list() == sorted(tx["product_id"].unique().to_list())
    assert (cat["title"] == cat["product_id"]).all()
    assert dict(zip(cat["product_id"], cat["category"])) == {
        "a, b": None, "citrus fruit": None, "margarine": None, "ready soups": None,
        "whole milk": "dairy produce", "yogurt": "dairy produce",
    }
    assert im.basket_csv_catalog(tx.lazy(), info, "level1")["category"].drop_nulls().unique().to_list() == [
        "fresh products"
    ]
    with pytest.raises(ValueError, match="needs a start date"):
        im.import_source("basket_csv", [path], tmp_path / "land")


def test_basket_csv_spread_over_days_gives_a_history_to_split(tmp_path):
    """A basket file has no times: --spread-days lays its baskets, in file order, evenly over the
    days from --date, so the temporal holdout, the classic choice and the gate have a past."""
    from flows.cli import main

    path = tmp_path / "baskets.csv"
    path.write_text("".join(f"i{k % 5},i{(k + 1) % 5}\n" for k in range(20)))
    args = ["--data-dir", str(tmp_path / "d"), "import", "basket-csv", str(path), "--date", "2024-01-01"]
    assert main([*args, "--spread-days", "10"]) == 0
    landed = pl.read_parquet(tmp_path / "d" / "landing" / "transactions" / "**" / "*.parquet")
    days = landed.group_by(pl.col("ordered_at").dt.date()).agg(pl.col("order_id").n_unique()).sort("ordered_at")
    assert days["ordered_at"].to_list() == [date(2024, 1, d) for d in range(1, 11)]
    assert days["order_id"].to_list() == [2] * 10  # evenly, in file order
    with pytest.raises(SystemExit) as refused:
        main([*args, "--spread-days", "0"])
    assert refused.value.code == 2


# --- canonical files --------------------------------------------------------------------------------


def test_canonical_import_with_mapping(tmp_path):
    tx = tmp_path / "sales.csv"
    tx.write_text(
        "Invoice,SKU,Qty,Price,Cust,When\n"
        "0001,00123, 2 ,1.50,17850,2011-01-02 10:00:00\n"
        "0002,00123,3.0,,,2011-01-03 11:00:00\n"
    )
    cat = tmp_path / "products.csv"
    cat.write_text("SKU,Name,Brand\n00123,Mug,Acme\n")
    summary = im.import_source(
        "canonical", [tx], tmp_path / "land", catalog=cat,
        mapping="order_id=Invoice,product_id=SKU,quantity=Qty,unit_price=Price,customer_id=Cust,ordered_at=When",
        catalog_mapping={"product_id": "SKU", "title": "Name", "brand": "Brand"},
    )
    assert (summary.rows, summary.partitions, summary.products) == (2, 2, 1)
    landed = pl.read_parquet(summary.paths, hive_partitioning=False)
    assert landed["order_id"].to_list() == ["0001", "0002"]  # text ids keep leading zeros
    assert landed["product_id"].to_list() == ["00123", "00123"]
    assert landed["quantity"].to_list() == [2, 3]
    assert landed["unit_price"].to_list() == [1.5, None]
    assert landed["customer_id"].to_list() == ["17850", None]
    catalog = pl.read_parquet(summary.catalog_path)
    assert catalog.row(0) == ("00123", "Mug", None, None, "Acme")
    assert summary.catalog_path.name == "catalog-2011-01-03.parquet"


def test_canonical_parquet_without_mapping_or_catalog(tmp_path):
    path = tmp_path / "tx.parquet"
    pl.DataFrame({
        "order_id": [1, 2], "product_id": ["A", "B"], "quantity": [1, 2], "unit_price": [1.0, 2.0],
        "customer_id": [17850.0, None], "ordered_at": [datetime(2011, 1, 1, 23, 30)] * 2,
    }).write_parquet(path)
    summary = im.import_source("canonical", [path], tmp_path / "land")
    landed = pl.read_parquet(summary.paths[0], hive_partitioning=False)
    assert landed["order_id"].to_list() == ["1", "2"] and landed["customer_id"].to_list() == ["17850", None]
    assert pl.read_parquet(summary.catalog_path)["title"].to_list() == ["A", "B"]


def test_cast_failure_names_file_column_value_and_count(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(
        "order_id,product_id,quantity,unit_price,customer_id,ordered_at\n"
        "1,A,2,,,2011-01-01 10:00\n1,B,two,,,2011-01-01 10:00\n1,C,2.5,,,2011-01-01 10:00\n"
    )
    with pytest.raises(ValueError, match=r"bad\.csv: column 'quantity'.*2 value\(s\) cannot be read.*'two' at data row 2"):
        im.canonical_transactions(path)
    path.write_text(
        "order_id,product_id,quantity,unit_price,customer_id,ordered_at\n1,A,2,,,2011-01-01 10:00\n1,,2,,,2011-01-01 10:00\n"
    )
    with pytest.raises(ValueError, match=r"bad\.csv: column 'product_id'.*1 missing value"):
        im.canonical_transactions(path)
    path.write_text("order_id,product_id,quantity,unit_price,customer_id,ordered_at\n1,A,2,,,01/13/2011\n")
    with pytest.raises(ValueError, match=r"column 'ordered_at'.*'01/13/2011'"):
        im.canonical_transactions(path, datetime_format="%d/%m/%Y")
    assert im.canonical_transactions(path, datetime_format="%m/%d/%Y").collect()["ordered_at"].to_list() == [
        datetime(2011, 1, 13)
    ]
    path.write_text("order_id,product_id,quantity,unit_price,customer_id,ordered_at\n1,A,2,,,2011-01-13T10:00:00+02:00\n")
    assert im.canonical_transactions(path).collect()["ordered_at"].to_list() == [datetime(2011, 1, 13, 10)]  # local time as written


def test_import_source_rejects_options_of_other_kinds(tmp_path):
    with pytest.raises(ValueError, match="does not take \\['mapping'\\]"):
        im.import_source("online_retail", [SAMPLE], tmp_path, mapping="order_id=x")
    with pytest.raises(ValueError, match="unknown source kind"):
        im.import_source("excel", [SAMPLE], tmp_path)


# --- landing ---------------------------------------------------------------------------------------


def test_write_landing_layout_order_and_idempotent_rerun(tmp_path):
    rows = [
        ("2", "B", 1, at(2, 9)), ("1", "Z", 1, at(1, 10)), ("1", "A", 5, at(1, 10)),
        ("1", "A", 6, at(1, 10)), ("0", "Q", 1, at(1, 11)),
    ]
    tx = pl.DataFrame(
        [{"order_id": o, "product_id": p, "quantity": q, "ordered_at": t} for o, p, q, t in rows]
    ).with_columns(unit_price=pl.lit(1.0), customer_id=pl.lit(None, pl.String), store_id=pl.lit(None, pl.String))
    cat = im.derive_catalog(tx.lazy(), None)
    land = tmp_path / "landing"
    (land / "transactions" / "dt=2010-12-01").mkdir(parents=True)
    (land / "transactions" / "dt=2010-12-01" / "old-part.parquet").write_bytes(b"stale")
    (land / "transactions" / "dt=2010-11-01").mkdir(parents=True)
    (land / "transactions" / "dt=2010-11-01" / "part-0.parquet").write_bytes(b"other day")

    first = im.write_landing(tx.lazy(), cat, land)
    assert (first.rows, first.partitions, first.products) == (5, 2, 4)
    assert [p.relative_to(land).as_posix() for p in first.paths] == [
        "transactions/dt=2010-12-01/part-0.parquet", "transactions/dt=2010-12-02/part-0.parquet",
    ]
    assert first.catalog_path == land / "catalog" / "catalog-2010-12-02.parquet"
    day1 = pq.read_table(first.paths[0])
    assert day1.schema == TRANSACTIONS.schema
    # (ordered_at, order_id, product_id), then incoming order for the two ("1", "A") lines
    assert list(zip(day1["order_id"].to_pylist(), day1["product_id"].to_pylist(), day1["quantity"].to_pylist())) == [
        ("1", "A", 5), ("1", "A", 6), ("1", "Z", 1), ("0", "Q", 1),
    ]
    assert pq.read_schema(first.catalog_path) == CATALOG.schema
    assert not (land / "transactions" / "dt=2010-12-01" / "old-part.parquet").exists()
    assert (land / "transactions" / "dt=2010-11-01" / "part-0.parquet").read_bytes() == b"other day"

    before = {p: p.read_bytes() for p in (*first.paths, first.catalog_path)}
    second = im.write_landing(tx.lazy(), cat, land)
    assert second == first
    assert {p: p.read_bytes() for p in (*second.paths, second.catalog_path)} == before  # same bytes
    assert [f.name for f in land.rglob("*") if f.is_file() and ".tmp" in f.name] == []  # no temp files left


def test_write_landing_rejects_missing_required_values(tmp_path):
    tx = pl.DataFrame(
        {"order_id": ["1"], "product_id": [None], "quantity": [1], "unit_price": [1.0],
         "customer_id": [None], "ordered_at": [at(1)], "store_id": [None]},
        schema=TRANSACTIONS.polars_schema,
    )
    with pytest.raises(ValueError, match="product_id"):
        im.write_landing(tx.lazy(), pl.DataFrame({"product_id": ["A"], "title": ["A"]}), tmp_path)


# --- the full shared data ----------------------------------------------------------------------------


@pytest.mark.shared
def test_full_online_retail_import_keeps_one_copy_of_the_overlap(shared_data, tmp_path):
    folder = shared_data / "online_retail"
    one, two = folder / "online_retail_2010_2011.parquet", folder / "online_retail_ii_2009_2010.parquet"
    if not (one.is_file() and two.is_file()):
        pytest.skip("Online Retail files are not in the shared data")
    rows_one = pq.read_metadata(one).num_rows
    rows_two_before = (
        pl.scan_parquet(two).filter(pl.col("InvoiceDate") < datetime(2010, 12, 1)).select(pl.len()).collect().item()
    )
    summary = im.import_source("online_retail", [one, two], tmp_path)
    assert summary.rows == rows_one + rows_two_before
    assert (summary.first_date, summary.last_date) == (date(2009, 12, 1), date(2011, 12, 9))
    assert summary.catalog_path.name == "catalog-2011-12-09.parquet"
    assert sum(summary.partition_rows.values()) == summary.rows


@pytest.mark.shared
def test_groceries_basket_csv(shared_data, tmp_path):
    folder = shared_data / "groceries"
    if not (folder / "groceries.csv").is_file():
        pytest.skip("Groceries is not in the shared data")
    baskets = im.read_basket_csv(folder / "groceries.csv")
    assert len(baskets) == 9835 and sum(map(len, baskets)) == 43367  # arules' Groceries summary
    summary = im.import_source(
        "basket-csv", [folder / "groceries.csv"], tmp_path, item_info=folder / "groceries_iteminfo.csv",
        start=date(2000, 1, 1),
    )
    assert (summary.rows, summary.partitions, summary.products) == (43367, 1, 169)
    assert pl.read_parquet(summary.catalog_path)["category"].null_count() == 0
