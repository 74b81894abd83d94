"""Issue 12 item 4: source types convert to the contract only by its documented rules
(prodassoc_core/data/contracts.py); any other type quarantines *that file* with a reason naming the
column and the type, and the other files ingest normally. One time-zone rule for landing and
``import canonical``: local time as written.

Real Parquet files, real Great Expectations, as in tests/data/test_ingest.py.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_ingest import AS_OF, LENIENT, Zone, good, gx_dir  # noqa: F401 - gx_dir is a fixture

from prodassoc_core.data import contracts as c
from prodassoc_core.data import importers
from prodassoc_core.data.ingest import IngestError, read_staged_transactions

DAY = "2024-01-02"
T = datetime(2024, 1, 2, 10)


def _arrow(**columns: pa.Array) -> pa.Table:
    """Three transaction lines for DAY; ``columns`` replace the defaults (typed as the source would)."""
    base = {
        c.ORDER_ID: pa.array(["b1", "b2", "b3"]),
        c.PRODUCT_ID: pa.array(["A", "B", "C"]),
        c.QUANTITY: pa.array([1, 2, 3], pa.int64()),
        c.UNIT_PRICE: pa.array([1.0, 1.0, 1.0]),
        c.CUSTOMER_ID: pa.array(["c1", "c2", "c3"]),
        c.ORDERED_AT: pa.array([T, T, T], pa.timestamp("us")),
    }
    return pa.table({**base, **columns})


REJECTED = {
    "bool_order_id": (
        {c.ORDER_ID: pa.array([True, False, True])}, "unsupported_type:order_id(Boolean)",
    ),
    "struct_customer_id": (
        {c.CUSTOMER_ID: pa.array([{"id": "c1"}, {"id": "c2"}, {"id": "c3"}])},
        "unsupported_type:customer_id(Struct({'id': String}))",
    ),
    "list_product_id": (
        {c.PRODUCT_ID: pa.array([["A"], ["B"], ["C"]], pa.list_(pa.string()))},
        "unsupported_type:product_id(List(String))",
    ),
}


@pytest.fixture
def zone(tmp_path, gx_dir) -> Zone:  # noqa: F811
    z = Zone(tmp_path, gx_dir)
    z.catalog(["A", "B", "C"])
    z.day(DAY, good(DAY), name="good.parquet")  # a good file in the same partition
    z.day("2024-01-03", good("2024-01-03"))
    return z


def _land(zone: Zone, table: pa.Table, name: str = "bad.parquet") -> str:
    path = zone.landing / "transactions" / f"dt={DAY}" / name
    pq.write_table(table, path)
    return f"transactions/dt={DAY}/{name}"


@pytest.mark.parametrize("case", REJECTED)
def test_a_type_the_contract_does_not_convert_quarantines_that_file_only(zone, case):
    columns, rule = REJECTED[case]
    rel = _land(zone, _arrow(**columns))
    column = rule.split(":")[1].split("(")[0]
    with pytest.raises(IngestError) as err:
        zone.ingest(cfg=LENIENT)
    message = str(err.value)
    assert f"{rel} (partition dt={DAY}): column {column}: " in message and "cannot be converted to" in message
    assert "Traceback" not in message
    rows = zone.manifest_rows()
    assert rows[rel]["status"] == "failed" and rows[rel]["rows_quarantined"] == 3
    quarantined = zone.quarantined(DAY)
    assert quarantined[c.REASON].to_list() == [rule] * 3
    assert quarantined[column].dtype == pl.String  # landed values kept, readable
    # the other files, the same day's included, are ingested normally
    assert rows[f"transactions/dt={DAY}/good.parquet"]["status"] == "ingested"
    assert rows["transactions/dt=2024-01-03/part-0.parquet"]["status"] == "ingested"
    staged = read_staged_transactions(zone.staging, datetime(2024, 1, 1).date(), AS_OF).collect()
    assert staged.height == 10 and not staged[c.ORDER_ID].str.starts_with("b").any()


def test_a_catalog_title_of_an_unsupported_type_fails_with_a_clear_message(zone):
    pq.write_table(
        pa.table({c.PRODUCT_ID: ["A", "B"], c.TITLE: pa.array([["x"], ["y"]], pa.list_(pa.string()))}),
        zone.landing / "catalog" / "catalog-2024-01-02.parquet",
    )
    with pytest.raises(IngestError, match=r"catalog snapshot catalog/catalog-2024-01-02\.parquet: column title: "
                       r"List\(String\) cannot be converted to String.*unsupported_type:title\(List\(String\)\)"):
        zone.ingest(cfg=LENIENT)


CONVERTED = {
    "decimal_quantities": (
        {c.QUANTITY: pa.array([Decimal("1"), Decimal("2"), Decimal("3")], pa.decimal128(10, 0))}, {}, [1, 2, 3],
    ),
    "decimal_with_scale": (  # whole values convert; 2.50 is never truncated
        {c.QUANTITY: pa.array([Decimal("1.00"), Decimal("2.50"), Decimal("3.00")], pa.decimal128(10, 2))},
        {"b2": "type:quantity"}, [1, 3],
    ),
    "decimal_order_ids": (
        {c.ORDER_ID: pa.array([Decimal("17"), Decimal("18"), Decimal("19")], pa.decimal128(10, 0))}, {}, [1, 2, 3],
    ),
}


@pytest.mark.parametrize("case", CONVERTED)
def test_types_the_contract_converts_are_ingested(zone, case):
    columns, reasons, quantities = CONVERTED[case]
    rel = _land(zone, _arrow(**columns))
    zone.ingest(cfg=LENIENT)
    row = zone.manifest_rows()[rel]
    assert row["status"] == "ingested" and row["rows_accepted"] == len(quantities)
    staged = pl.concat([pl.read_parquet(p) for p in zone.staged(DAY) if p.name.startswith("bad-")])
    assert staged[c.QUANTITY].to_list() == quantities
    if case == "decimal_order_ids":
        assert staged[c.ORDER_ID].to_list() == ["17", "18", "19"]
    if reasons:
        q = zone.quarantined(DAY)
        assert dict(zip(q[c.ORDER_ID], q[c.REASON])) == reasons


LOCAL = [datetime(2024, 1, 2, 0, 30), datetime(2024, 1, 2, 10), datetime(2024, 1, 2, 23, 30)]


def _zoned(unit: str, zone: str) -> pa.Array:
    """LOCAL as wall-clock times in ``zone`` (a zone-aware Parquet column)."""
    return pl.Series(LOCAL).dt.cast_time_unit(unit).dt.replace_time_zone(zone).to_arrow()


@pytest.mark.parametrize(
    "source",
    [
        _zoned("us", "Europe/Berlin"),  # 00:30 in Berlin is the day before in UTC
        _zoned("ms", "America/New_York"),  # 23:30 in New York is the next day in UTC
        pa.array([f"{t.isoformat()}{z}" for t, z in zip(LOCAL, ["+01:00", "Z", "-0500"])]),
    ],
    ids=["tz_berlin", "tz_new_york_ms", "text_with_offsets"],
)
def test_one_time_zone_rule_for_landing_and_import_canonical(zone, tmp_path, source):
    """ordered_at is the local time as written, in landing and in `import canonical` alike."""
    table = _arrow(**{c.ORDERED_AT: source})
    rel = _land(zone, table)
    zone.ingest(cfg=LENIENT)
    assert zone.manifest_rows()[rel]["rows_accepted"] == 3  # all on their local day: in_partition holds
    staged = pl.concat([pl.read_parquet(p) for p in zone.staged(DAY) if p.name.startswith("bad-")])
    assert staged[c.ORDERED_AT].to_list() == LOCAL

    canonical = tmp_path / "canonical.parquet"
    pq.write_table(table, canonical)
    assert importers.canonical_transactions(canonical).collect()[c.ORDERED_AT].to_list() == LOCAL
    if pa.types.is_string(source.type):
        csv = Path(tmp_path / "canonical.csv")
        pl.from_arrow(table).write_csv(csv)
        assert importers.canonical_transactions(csv).collect()[c.ORDERED_AT].to_list() == LOCAL
