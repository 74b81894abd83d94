"""Bad input matrix: each case gives a clear error naming the file and rule, or quarantine with
a reason; counts reconcile; nothing outside the case's own outputs changes.

Cases already covered elsewhere are not repeated here: null/empty keys, unknown products,
zero quantity, negative price, timestamps outside the partition, strings in numeric
columns, duplicate catalog ids (tests/data/test_validation.py, tests/data/test_ingest.py), a
corrupt (non-Parquet) file and a missing column (tests/data/test_ingest.py).

Each case starts from a copy of one ingested landing zone (catalog + dt=2024-01-01),
lands its bad input, ingests again for as_of 2024-01-04 and compares.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Callable

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_ingest import AS_OF, LENIENT, Zone, good, orders

from prodassoc_core.data import baskets as b
from prodassoc_core.data import contracts as c
from prodassoc_core.data.ingest import IngestError, read_staged_transactions
from prodassoc_core.data.validation import gx_suites
from prodassoc_core.mining.associations import pair_counts
from prodassoc_core.ops.settings import BasketConfig

DAY = "2024-01-02"
PRODUCTS = ["A", "B", "C", *[f"P{i:03d}" for i in range(300)]]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Zone:
    """Catalog (A, B, C, P000..P299) and dt=2024-01-01, ingested once; cases copy it."""
    gx_dir = tmp_path_factory.mktemp("gx")
    gx_suites(gx_dir)
    zone = Zone(tmp_path_factory.mktemp("base"), gx_dir)
    zone.catalog(PRODUCTS)
    zone.day("2024-01-01", good("2024-01-01"))
    zone.ingest()
    return zone


@pytest.fixture
def zone(base, tmp_path) -> Zone:
    shutil.copytree(base.root, tmp_path / "z")
    return Zone(tmp_path / "z", base.gx_dir)


# --- landing bad input --------------------------------------------------------------------------


def tx_path(zone: Zone, name: str, day: str = DAY) -> Path:
    path = zone.landing / "transactions" / f"dt={day}" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def truncated(zone: Zone) -> str:
    path = zone.day(DAY, good(DAY, n=50), name="trunc.parquet")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a copy interrupted half way
    return "transactions/dt=2024-01-02/trunc.parquet"


def renamed_column(zone: Zone) -> str:
    zone.day(DAY, good(DAY).rename({c.QUANTITY: "qty"}), name="renamed.parquet")
    return "transactions/dt=2024-01-02/renamed.parquet"


def timestamps_as_integers(zone: Zone) -> str:
    frame = good(DAY, n=3).with_columns(pl.col(c.ORDERED_AT).dt.epoch("s"))
    zone.day(DAY, frame, name="int_ts.parquet")
    return "transactions/dt=2024-01-02/int_ts.parquet"


def future_timestamps(zone: Zone) -> str:
    frame = pl.concat(
        [
            orders(DAY, [("ok", "A", 1)]),
            orders("2024-01-03", [("next_day", "A", 1)]),  # after the partition, before as_of
            orders("2024-01-04", [("at_as_of", "A", 1)], hour=0),  # ordered_at == as_of midnight
            orders("2024-01-09", [("future", "A", 1)]),
        ]
    )
    zone.day(DAY, frame, name="future.parquet")
    return "transactions/dt=2024-01-02/future.parquet"


def returns_and_free_lines(zone: Zone) -> str:
    frame = orders(DAY, [("ret", "A", -2), ("free", "B", 1), ("paid", "C", 1)]).with_columns(
        pl.Series(c.UNIT_PRICE, [1.0, 0.0, 2.0])
    )
    zone.day(DAY, frame, name="returns.parquet")
    return "transactions/dt=2024-01-02/returns.parquet"


def long_ids(zone: Zone) -> str:
    frame = orders(DAY, [("x" * 1001, "A", 1), ("ok", "A", 1)]).with_columns(
        pl.Series(c.CUSTOMER_ID, ["c", "y" * 5000])
    )
    zone.day(DAY, frame, name="long.parquet")
    return "transactions/dt=2024-01-02/long.parquet"


def invalid_utf8_ids(zone: Zone) -> str:
    raw = pa.array([b"o1", b"o\xff2"], pa.binary())
    table = good(DAY, n=2).to_arrow().set_column(0, c.ORDER_ID, pa.Array.from_buffers(pa.string(), 2, raw.buffers()))
    pq.write_table(table, tx_path(zone, "utf8.parquet"))
    return "transactions/dt=2024-01-02/utf8.parquet"


def empty_file(zone: Zone) -> str:
    zone.day(DAY, good(DAY).clear(), name="empty.parquet")
    return "transactions/dt=2024-01-02/empty.parquet"


def big_basket(zone: Zone) -> str:
    lines = [("big", PRODUCTS[3 + i % 300], 1 + i % 7) for i in range(3000)]  # 300 products, 10 lines each
    zone.day(DAY, orders(DAY, lines), name="big.parquet")
    return "transactions/dt=2024-01-02/big.parquet"


def misplaced_partitions(zone: Zone) -> None:
    for name in ("2024-01-02", "dt=2024-1-2", "dt=20240102"):
        path = zone.landing / "transactions" / name / "part-0.parquet"
        path.parent.mkdir(parents=True)
        good(DAY).write_parquet(path)
    good(DAY).write_parquet(zone.landing / "transactions" / "loose.parquet")
    (zone.landing / "transactions" / "_tmp").mkdir()  # underscore / hidden names are not data
    (zone.landing / "transactions" / "README.txt").write_text("not data")
    return None


# --- catalog bad input ------------------------------------------------------------------------------

NEW_CATALOG = "catalog-2024-01-02.parquet"


def catalog_path(zone: Zone) -> Path:
    return zone.landing / "catalog" / NEW_CATALOG


def empty_catalog(zone: Zone) -> str:
    pl.DataFrame(schema={c.PRODUCT_ID: pl.String, c.TITLE: pl.String}).write_parquet(catalog_path(zone))
    return f"catalog/{NEW_CATALOG}"


def truncated_catalog(zone: Zone) -> str:
    zone.catalog(PRODUCTS, name=NEW_CATALOG)
    data = catalog_path(zone).read_bytes()
    catalog_path(zone).write_bytes(data[:-10])
    return f"catalog/{NEW_CATALOG}"


def catalog_renamed_title(zone: Zone) -> str:
    pl.DataFrame({c.PRODUCT_ID: PRODUCTS, "name": PRODUCTS}).write_parquet(catalog_path(zone))
    return f"catalog/{NEW_CATALOG}"


def catalog_invalid_utf8(zone: Zone) -> str:
    titles = pa.array([p.encode() for p in PRODUCTS[:-1]] + [b"caf\xe9"], pa.binary())
    as_string = pa.Array.from_buffers(pa.string(), len(PRODUCTS), titles.buffers())  # invalid UTF-8 inside
    table = pa.table({c.PRODUCT_ID: PRODUCTS, c.TITLE: as_string})
    pq.write_table(table, catalog_path(zone))
    return f"catalog/{NEW_CATALOG}"


def partial_catalog(zone: Zone) -> str:
    """A snapshot of 3 products where 303 are staged: a partial export, or a delta taken for a snapshot."""
    zone.catalog(["A", "B", "C"], name=NEW_CATALOG)
    return f"catalog/{NEW_CATALOG}"


def catalog_dirty_titles(zone: Zone) -> str:
    """Control characters, a 1001-character title, Latin-1 bytes in a binary column, fine Unicode."""
    extra = {
        "CTRL_TAB": b"mug\twith tab",
        "CTRL_NUL": b"mug\x00",
        "CTRL_C1": "mug\u0085".encode(),
        "LONG": b"t" * 1001,
        "LATIN1": "café".encode("latin-1"),
        "UNICODE": "Tasse café 漢字 ✓".encode(),
    }
    ids = PRODUCTS + list(extra)
    titles = [p.encode() for p in PRODUCTS] + list(extra.values())
    pq.write_table(pa.table({c.PRODUCT_ID: ids, c.TITLE: pa.array(titles, pa.binary())}), catalog_path(zone))
    return f"catalog/{NEW_CATALOG}"


# --- the matrix ---------------------------------------------------------------------------------------


@dataclass
class Case:
    land: Callable[[Zone], str | None]  # writes the bad input; returns its manifest `file`
    error: str | None = None  # regex the IngestError must match (file and rule/reason)
    status: str | None = None  # the case file's manifest status
    counts: tuple[int, int, int] | None = None  # its rows_read, rows_accepted, rows_quarantined
    reasons: dict[str, str] = field(default_factory=dict)  # key -> _reason in its quarantine file
    check: Callable[[Zone], None] | None = None  # extra assertions


def _staged_rows(zone: Zone, day: str = DAY) -> pl.DataFrame:
    return read_staged_transactions(zone.staging, date.fromisoformat(day), AS_OF).collect()


def _check_returns(zone: Zone) -> None:
    staged = _staged_rows(zone)
    assert sorted(staged[c.ORDER_ID]) == ["free", "paid", "ret"]  # a return and a free line are valid rows
    kept = b.baskets(staged.lazy(), BasketConfig()).collect()
    assert kept[c.ORDER_ID].to_list() == ["paid"]  # ... that the basket rules then drop


def _check_big_basket(zone: Zone) -> None:
    staged = _staged_rows(zone)
    assert staged.height == 3000 and staged[c.QUANTITY].sum() == sum(1 + i % 7 for i in range(3000))
    baskets = b.baskets(staged.lazy(), BasketConfig()).collect()
    assert baskets.height == 1 and len(baskets[b.ITEMS][0]) == 300  # a product on 10 lines counts once
    pairs = pair_counts(baskets[b.ITEMS].to_list(), min_pair_count=1)
    assert pairs.height == 300 * 299
    assert set(pairs["n_rule"]) == set(pairs["n_antecedent"]) == {1}


def _check_empty(zone: Zone) -> None:
    assert zone.staged(DAY) == [] and zone.quarantined(DAY).is_empty()


def _check_dirty_titles_quarantine_keeps_bytes(zone: Zone) -> None:
    q = pl.read_parquet(next((zone.quarantine / "catalog").glob("catalog-2024-01-02-*.parquet")))
    assert q.filter(pl.col(c.PRODUCT_ID) == "LATIN1")[c.TITLE].item() == "caf\\xe9"  # bytes kept, escaped


CASES = {
    "truncated_parquet": Case(
        truncated, error=r"transactions/dt=2024-01-02/trunc\.parquet \(partition dt=2024-01-02\): unreadable Parquet",
        status="unreadable", counts=(0, 0, 0),
    ),
    "renamed_column": Case(
        renamed_column,
        error=r"transactions/dt=2024-01-02/renamed\.parquet .*missing required column\(s\) quantity"
        r".*missing_column:quantity",
        status="failed", counts=(5, 0, 5), reasons={f"o{i}": "missing_column:quantity" for i in range(5)},
    ),
    "wrong_type_column": Case(  # integers are not a timestamp type the contract converts: the file, not each row
        timestamps_as_integers,
        error=r"transactions/dt=2024-01-02/int_ts\.parquet .*column ordered_at: Int64 cannot be converted to Datetime"
        r".*unsupported_type:ordered_at\(Int64\)",
        status="failed", counts=(3, 0, 3), reasons={f"o{i}": "unsupported_type:ordered_at(Int64)" for i in range(3)},
    ),
    "timestamps_in_the_future": Case(
        future_timestamps, status="ingested", counts=(4, 1, 3),
        reasons={
            "next_day": "in_partition:ordered_at",
            "at_as_of": "in_partition:ordered_at; not_future:ordered_at",
            "future": "in_partition:ordered_at; not_future:ordered_at",
        },
    ),
    "returns_and_zero_prices": Case(returns_and_free_lines, status="ingested", counts=(3, 3, 0), check=_check_returns),
    "extremely_long_strings": Case(
        long_ids, status="ingested", counts=(2, 0, 2),
        reasons={"x" * 1001: "max_length:order_id", "ok": "max_length:customer_id"},
    ),
    "invalid_utf8_in_a_string_column": Case(
        invalid_utf8_ids,
        error=r"transactions/dt=2024-01-02/utf8\.parquet .*unreadable Parquet: .*UTF-8",
        status="unreadable", counts=(0, 0, 0),
    ),
    "empty_partition_file": Case(empty_file, status="ingested", counts=(0, 0, 0), check=_check_empty),
    "one_basket_with_3000_lines": Case(big_basket, status="ingested", counts=(3000, 3000, 0), check=_check_big_basket),
    "misplaced_partition_directories": Case(
        misplaced_partitions,
        error=r"(?s)transactions/2024-01-02: not in a dt=YYYY-MM-DD partition.*transactions/dt=2024-1-2: .*"
        r"transactions/dt=20240102: .*transactions/loose\.parquet: not in a dt=YYYY-MM-DD partition",
    ),
    "empty_catalog": Case(
        empty_catalog, error=r"catalog snapshot catalog/catalog-2024-01-02\.parquet has no rows",
        status="failed", counts=(0, 0, 0),
    ),
    "truncated_catalog": Case(
        truncated_catalog, error=r"catalog snapshot catalog/catalog-2024-01-02\.parquet: unreadable Parquet",
        status="unreadable", counts=(0, 0, 0),
    ),
    "catalog_renamed_column": Case(
        catalog_renamed_title,
        error=r"catalog snapshot catalog/catalog-2024-01-02\.parquet: missing required column\(s\) title; "
        r".*missing_column:title=303",
        status="failed", counts=(303, 0, 303),
    ),
    "catalog_invalid_utf8": Case(
        catalog_invalid_utf8,
        error=r"catalog snapshot catalog/catalog-2024-01-02\.parquet: unreadable Parquet: .*UTF-8",
        status="unreadable", counts=(0, 0, 0),
    ),
    "partial_catalog": Case(
        partial_catalog,
        error=r"catalog snapshot catalog/catalog-2024-01-02\.parquet lists 3 products: 300 of the staged catalog's 303 "
        r"\(99\.0%\) are not in it, more than validation\.max_catalog_shrink 50\.0%.*staged catalog left unchanged",
        status="failed", counts=(3, 3, 0),
    ),
    "catalog_control_chars_long_and_non_utf8_titles": Case(
        catalog_dirty_titles, status="ingested", counts=(309, 304, 5),
        reasons={
            "CTRL_TAB": "printable:title", "CTRL_NUL": "printable:title", "CTRL_C1": "printable:title",
            "LONG": "max_length:title", "LATIN1": "type:title",
        },
        check=_check_dirty_titles_quarantine_keeps_bytes,
    ),
}


def _fingerprint(zone: Zone) -> dict[str, str]:
    """sha256 of every file in staging and quarantine, by path relative to the zone."""
    return {
        p.relative_to(zone.root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for root in (zone.staging, zone.quarantine)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("name", CASES)
def test_bad_input(zone, name):
    case = CASES[name]
    before_files, before_manifest = _fingerprint(zone), zone.manifest_rows()
    rel = case.land(zone)

    if case.error:
        with pytest.raises(IngestError, match=case.error) as err:
            zone.ingest(cfg=LENIENT)
        report = err.value.report
        assert report is not None
    else:
        report = zone.ingest(cfg=LENIENT)
    assert report.rows_read == report.rows_accepted + report.rows_quarantined

    manifest = zone.manifest_rows()
    for row in manifest.values():  # counts reconcile for every file
        assert row["rows_read"] == row["rows_accepted"] + row["rows_quarantined"], row
    if rel is not None:
        row = manifest[rel]
        assert row["status"] == case.status
        assert (row["rows_read"], row["rows_accepted"], row["rows_quarantined"]) == case.counts
        stem = Path(rel).stem
        is_catalog = rel.startswith("catalog/")
        q_dir = zone.quarantine / ("catalog" if is_catalog else f"transactions/dt={DAY}")
        q_files = sorted(q_dir.glob(f"{stem}-*.parquet"))
        q = pl.concat([pl.read_parquet(f) for f in q_files], how="diagonal_relaxed") if q_files else pl.DataFrame()
        assert q.height == row["rows_quarantined"]
        if case.reasons:
            key = c.PRODUCT_ID if is_catalog else c.ORDER_ID
            assert dict(zip(q[key].to_list(), q[c.REASON].to_list())) == case.reasons
            assert set(q[c.SOURCE_FILE]) == {rel}
        if is_catalog and row["status"] == "ingested":
            staged = pl.read_parquet(zone.staging / "catalog" / "catalog.parquet")
            assert staged.height == row["rows_accepted"]
        elif not is_catalog:
            staged = sorted((zone.staging / "transactions" / f"dt={DAY}").glob(f"{stem}-*.parquet"))
            n_staged = sum(pl.read_parquet(f).height for f in staged)
            assert n_staged == (row["rows_accepted"] if row["status"] == "ingested" else 0)

    # nothing else changed: earlier partitions, their manifest rows, the staged catalog (unless replaced)
    after_files = _fingerprint(zone)
    own = f"{Path(rel).stem}-" if rel else None
    replaced_catalog = rel is not None and rel.startswith("catalog/") and manifest[rel]["status"] == "ingested"
    for path, digest in before_files.items():
        if replaced_catalog and path == "staging/catalog/catalog.parquet":
            continue
        assert after_files.get(path) == digest, f"{path} changed"
    for path in after_files.keys() - before_files.keys():
        assert own and Path(path).name.startswith(own), f"unexpected new file {path}"
    assert {k: v for k, v in manifest.items() if k != rel} == before_manifest
    if case.check:
        case.check(zone)
