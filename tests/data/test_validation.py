"""Validation rules on tiny frames: every broken row lands in quarantine with its reason."""

from __future__ import annotations

import json
import shutil
from datetime import datetime

import polars as pl
import pytest

from prodassoc_core.data import contracts as c
from prodassoc_core.data.validation import (
    _raised,
    conform,
    data_docs_index,
    gx_suites,
    missing_columns,
    skipped_docs_path,
    stringify_mismatched,
    validate_catalog,
    validate_transactions,
)
from prodassoc_core.ops.settings import ValidationConfig

DAY = datetime(2024, 1, 1, 10, 0)
CFG = ValidationConfig(max_quantity=1000, max_unit_price=500.0)


@pytest.fixture(scope="module")
def gx(tmp_path_factory):
    """One file-backed GE context for the module (GE import + set-up ~4 s, paid once)."""
    return gx_suites(tmp_path_factory.mktemp("gx"))


def _lineage(df: pl.DataFrame, partition: str = "2024-01-01", file: str = "f.parquet") -> pl.DataFrame:
    return df.with_columns(
        pl.lit(file).alias(c.SOURCE_FILE),
        pl.int_range(pl.len(), dtype=pl.Int64).alias(c.SOURCE_ROW),
        pl.lit(partition).alias(c.PARTITION),
    )


def _tx(rows: list[tuple]) -> pl.DataFrame:
    """rows: (order_id, product_id, quantity, unit_price, ordered_at)."""
    return _lineage(
        pl.DataFrame(
            rows,
            schema={
                c.ORDER_ID: pl.String,
                c.PRODUCT_ID: pl.String,
                c.QUANTITY: pl.Int64,
                c.UNIT_PRICE: pl.Float64,
                c.ORDERED_AT: pl.Datetime("us"),
            },
            orient="row",
        ).with_columns(pl.lit("cust").alias(c.CUSTOMER_ID))
    )


def _reasons(outcome) -> dict[str, str]:
    q = outcome.quarantined
    return dict(zip(q[c.ORDER_ID].fill_null("<null>").to_list(), q[c.REASON].to_list()))


def test_each_broken_row_is_quarantined_with_its_reason(gx):
    df = _tx(
        [
            ("ok1", "A", 2, 1.5, DAY),
            ("ok2", "B", -1, None, DAY),  # a return, no price: fine
            (None, "A", 1, 1.0, DAY),
            ("", "A", 1, 1.0, DAY),
            ("nulprod", None, 1, 1.0, DAY),
            ("blankprod", " ", 1, 1.0, DAY),
            ("unknown", "ZZ", 1, 1.0, DAY),
            ("zero", "A", 0, 1.0, DAY),
            ("huge", "A", 1001, 1.0, DAY),
            ("negprice", "A", 1, -0.5, DAY),
            ("dearprice", "A", 1, 500.01, DAY),
            ("nextday", "A", 1, 1.0, datetime(2024, 1, 2, 0, 0)),
            ("nots", "A", 1, 1.0, None),
            ("noqty", "A", None, 1.0, DAY),
        ]
    )
    out = validate_transactions(df, pl.Series(["A", "B"]), CFG, gx=gx, run_name="test")
    assert out.accepted[c.ORDER_ID].to_list() == ["ok1", "ok2"]
    assert _reasons(out) == {
        "<null>": "not_null:order_id",
        "": "not_empty:order_id",
        "nulprod": "not_null:product_id",
        "blankprod": "not_empty:product_id; in_catalog:product_id",
        "unknown": "in_catalog:product_id",
        "zero": "nonzero:quantity",
        "huge": "range:quantity",
        "negprice": "range:unit_price",
        "dearprice": "range:unit_price",
        "nextday": "in_partition:ordered_at",
        "nots": "not_null:ordered_at",
        "noqty": "not_null:quantity",
    }
    assert not out.ge_success
    assert out.stats.row(0, named=True) == {
        c.PARTITION: "2024-01-01",
        c.SOURCE_FILE: "f.parquet",
        "rows_read": 14,
        "rows_accepted": 2,
        "rows_quarantined": 12,
    }
    assert out.rule_counts["range:unit_price"] == 2
    # lineage travels with both outputs; accepted keeps the contract types
    assert out.quarantined.filter(pl.col(c.ORDER_ID) == "zero")[c.SOURCE_ROW].item() == 7
    assert out.accepted.select(c.TRANSACTIONS.polars_schema.names()).schema == c.TRANSACTIONS.polars_schema


def test_every_failed_rule_is_listed_in_suite_order(gx):
    df = _tx([("o", "ZZ", 0, -1.0, datetime(2023, 12, 31, 23, 59))])
    out = validate_transactions(df, ["A"], CFG, gx=gx)
    assert out.quarantined[c.REASON].item() == (
        "nonzero:quantity; range:unit_price; in_partition:ordered_at; in_catalog:product_id"
    )


def test_wrong_types_are_cast_and_failures_named(gx):
    df = _lineage(
        pl.DataFrame(
            {
                c.ORDER_ID: [1, 2, 3, 4, 5],  # ints: lossless as strings
                c.PRODUCT_ID: ["A", "A", "A", "A", "A"],
                c.QUANTITY: ["3", "abc", " 7 ", "", "2.5"],
                c.UNIT_PRICE: ["1.25", "x", None, "2", "3"],
                c.CUSTOMER_ID: [17850.0, 1.5, None, float("nan"), 3.0],
                c.ORDERED_AT: ["2024-01-01 08:00:00", "2024-01-01T09:30", "garbage", "2024-01-01", DAY.isoformat()],
            }
        )
    )
    out = validate_transactions(df, ["A"], CFG, gx=gx)
    assert out.accepted[c.ORDER_ID].to_list() == ["1"]
    reasons = _reasons(out)
    assert reasons["2"] == "type:quantity; type:unit_price; type:customer_id"  # not also not_null:quantity
    assert reasons["3"] == "type:ordered_at"
    assert reasons["4"] == "not_null:quantity"  # blank counts as missing, NaN id as null
    assert reasons["5"] == "type:quantity"  # 2.5 is not an integer quantity
    row1 = out.accepted.row(0, named=True)
    assert row1[c.QUANTITY] == 3 and row1[c.CUSTOMER_ID] == "17850" and row1[c.UNIT_PRICE] == 1.25
    assert row1[c.ORDERED_AT] == datetime(2024, 1, 1, 8, 0)


def test_a_nan_price_is_staged_as_missing_and_an_infinite_one_is_quarantined(gx):
    """A float column already in the contract's type: NaN is a missing price (as in a column cast
    from another type), never a NaN in the clean zone; +-inf fails the price range."""
    nan, inf = float("nan"), float("inf")
    df = _tx([("nan", "A", 1, nan, DAY), ("inf", "A", 1, inf, DAY), ("-inf", "A", 1, -inf, DAY),
              ("ok", "A", 1, 2.5, DAY)])
    assert conform(df, c.TRANSACTIONS)[c.UNIT_PRICE].to_list()[0] is None
    out = validate_transactions(df, ["A"], CFG, gx=gx)
    assert out.accepted[c.ORDER_ID].to_list() == ["nan", "ok"]
    assert out.accepted[c.UNIT_PRICE].to_list() == [None, 2.5]
    assert _reasons(out) == {"inf": "range:unit_price", "-inf": "range:unit_price"}


def test_conform_is_idempotent_and_keeps_earlier_reasons():
    raw = _lineage(pl.DataFrame({c.ORDER_ID: ["1"], c.PRODUCT_ID: ["A"], c.QUANTITY: ["x"], c.UNIT_PRICE: [1.0],
                                 c.CUSTOMER_ID: ["c"], c.ORDERED_AT: [DAY]}))
    once = conform(raw, c.TRANSACTIONS)
    assert once[c.REASON].to_list() == ["type:quantity"]
    assert conform(once, c.TRANSACTIONS).equals(once)
    assert once.columns == [*c.TRANSACTIONS.polars_schema.names(), c.SOURCE_FILE, c.SOURCE_ROW, c.PARTITION, c.REASON]
    assert conform(raw.lazy(), c.TRANSACTIONS).collect().equals(once)
    assert missing_columns(["order_id", "title"], c.CATALOG) == ["product_id"]
    with pytest.raises(ValueError, match="missing required column"):
        conform(raw.drop(c.QUANTITY), c.TRANSACTIONS)
    strings = stringify_mismatched(raw, c.TRANSACTIONS)
    assert strings.schema[c.QUANTITY] == pl.String and strings.schema[c.UNIT_PRICE] == pl.Float64


def test_duplicate_catalog_ids_are_all_quarantined(gx):
    df = _lineage(
        pl.DataFrame(
            {
                c.PRODUCT_ID: ["A", "D", "D", "E", None, ""],
                c.TITLE: ["a", "d1", "d2", None, "n", "e"],
                c.BRAND: ["x"] * 6,
            }
        ),
        partition="cat",
    )
    out = validate_catalog(df, gx=gx)
    assert out.accepted[c.PRODUCT_ID].to_list() == ["A"]
    assert out.quarantined[c.REASON].to_list() == [
        "unique:product_id",
        "unique:product_id",
        "not_null:title",
        "not_null:product_id",
        "not_empty:product_id",
    ]
    assert out.accepted.height + out.quarantined.height == df.height


def test_chunked_runs_map_rows_back(gx):
    rows = [(f"o{i}", "A" if i % 3 else "ZZ", 1, 1.0, DAY) for i in range(10)]
    whole = validate_transactions(_tx(rows), ["A"], CFG, gx=gx)
    chunked = validate_transactions(_tx(rows), ["A"], CFG, gx=gx, chunk_rows=3)
    assert chunked.quarantined.equals(whole.quarantined)
    assert chunked.accepted.equals(whole.accepted)
    assert whole.quarantined[c.ORDER_ID].to_list() == ["o0", "o3", "o6", "o9"]



def test_no_validated_rows_are_kept_after_a_run(gx):
    """GE's execution engine keeps each asset's last batch (the whole validated frame) until that
    asset's next run; the run drops it, so a nightly's later stages do not carry the rows."""
    validate_transactions(_tx([(f"k{i}", "A", 1, 1.0, DAY) for i in range(50)]), ["A"], CFG, gx=gx)
    engine = gx._ctx.data_sources.get("prodassoc").execution_engine
    assert engine.batch_manager.batch_data_cache == {}
    assert engine.batch_manager.active_batch is None


def test_many_partitions_in_one_run(gx):
    a = _tx([("a1", "A", 1, 1.0, DAY)])
    b = _lineage(
        _tx([("b1", "A", 1, 1.0, DAY), ("b2", "A", 1, 1.0, datetime(2024, 1, 2, 5))]).drop(
            c.SOURCE_FILE, c.SOURCE_ROW, c.PARTITION
        ),
        partition="2024-01-02",
        file="g.parquet",
    )
    out = validate_transactions(pl.concat([a, b]), ["A"], CFG, gx=gx)
    assert _reasons(out) == {"b1": "in_partition:ordered_at"}
    assert out.stats[c.PARTITION].to_list() == ["2024-01-01", "2024-01-02"]
    assert out.stats["rows_quarantined"].to_list() == [0, 1]


def test_empty_frame_and_missing_lineage(gx):
    out = validate_transactions(_tx([]), ["A"], CFG, gx=gx)
    assert out.accepted.is_empty() and out.quarantined.is_empty() and out.ge_success
    with pytest.raises(ValueError, match="lineage"):
        validate_transactions(_tx([]).drop(c.PARTITION), ["A"], CFG, gx=gx)


def test_the_context_reads_no_config_variables_file(tmp_path):
    """GE re-reads and re-parses uncommitted/config_variables.yml on every access to its config;
    prodassoc substitutes nothing from it, so its context has no such file to read, a context made
    by GE's defaults (or an older prodassoc) included."""
    import great_expectations as gx
    from great_expectations.core.config_provider import _ConfigurationVariablesConfigurationProvider as FromFile

    made_by_ge = gx.get_context(mode="file", context_root_dir=str(tmp_path / "gx"))
    assert made_by_ge.config_provider.get_provider(FromFile) is not None
    suites = gx_suites(tmp_path / "gx")
    assert suites.context.config_provider.get_provider(FromFile) is None
    reopened = gx.get_context(mode="file", context_root_dir=str(tmp_path / "gx"))  # as a later process opens it
    assert reopened.variables.config_variables_file_path is None
    assert reopened.config_provider.get_provider(FromFile) is None
    assert reopened.suites.get("transactions").expectations  # the suites are there as before


def test_data_docs_are_built_where_documented(gx):
    validate_transactions(_tx([("o", "A", 1, 1.0, DAY)]), ["A"], CFG, gx=gx, run_name="docs")
    index = data_docs_index(gx.gx_dir)
    assert gx.build_docs() == index and index.exists() and gx.data_docs == index
    assert "docs" in index.read_text()  # the run just validated is listed
    urls = gx.context.get_docs_sites_urls()
    assert urls == [{"site_name": "local_site", "site_url": index.resolve().as_uri()}]
    assert (gx.gx_dir / "expectations" / "transactions.json").exists()
    assert (gx.gx_dir / "checkpoints" / "catalog.json").exists()


def test_the_data_docs_index_lists_only_the_newest_results(tmp_path):
    """A Data Docs build reads every result its index lists: the index keeps the newest
    ``docs_index_results``, so a year of nights does not slow each build; older pages stay."""
    gx = gx_suites(tmp_path / "gx", docs_index_results=2)
    for night in ("night-1", "night-2", "night-3"):
        validate_transactions(_tx([("o", "A", 1, 1.0, DAY)]), ["A"], CFG, gx=gx, run_name=night)
        gx.build_docs()
    index = data_docs_index(gx.gx_dir).read_text()
    assert "night-1" not in index and "night-2" in index and "night-3" in index
    assert len(list((gx.gx_dir / "uncommitted" / "data_docs" / "local_site" / "validations").rglob("*.html"))) == 3
    assert gx_suites(tmp_path / "gx", docs_index_results=5) is gx  # a new limit is saved with the context
    site = gx.context.variables.data_docs_sites["local_site"]
    assert site["site_index_builder"]["validation_results_limit"] == 5


def _pages(site) -> list[str]:
    return sorted(p.relative_to(site / "validations").parts[1] for p in (site / "validations").rglob("*.html"))


def _night_2_with_a_file_in_the_way(tmp_path, folder: str):
    """A context whose Data Docs show night-1, night-2 validated since, and the site's ``folder``
    moved aside with a file in its place (what a full disk does to GE's writes there)."""
    gx = gx_suites(tmp_path / "gx")
    site = data_docs_index(gx.gx_dir).parent
    validate_transactions(_tx([("o", "A", 1, 1.0, DAY)]), ["A"], CFG, gx=gx, run_name="night-1")
    gx.build_docs()
    validate_transactions(_tx([("o", "A", 1, 1.0, DAY)]), ["A"], CFG, gx=gx, run_name="night-2")
    shutil.move(site / folder, tmp_path / folder)
    (site / folder).write_text("in the way")
    return gx, site


def _recorded_runs(gx) -> list[str]:
    """The runs recorded for the next build (what a new process, the next night's, renders first)."""
    return [run for _, run, _, _ in json.loads(skipped_docs_path(gx.gx_dir).read_text())]


def test_a_data_docs_build_that_failed_is_redone_by_the_next(tmp_path):
    """A build that fails (the site's static assets cannot be copied) records the results it did
    not render; the next build renders them."""
    gx, site = _night_2_with_a_file_in_the_way(tmp_path, "static")
    with pytest.raises(OSError):
        gx.build_docs()
    (site / "static").unlink()
    assert _recorded_runs(gx) == ["night-2"]
    gx.build_docs()
    assert not skipped_docs_path(gx.gx_dir).exists() and (site / "static").is_dir()
    assert _pages(site) == ["night-1", "night-2"] and "night-2" in data_docs_index(gx.gx_dir).read_text()


def test_a_result_page_that_could_not_be_written_is_rendered_by_the_next_build(tmp_path):
    """Great Expectations logs a page it cannot write and finishes the build: the result is
    recorded, and the next build renders it."""
    gx, site = _night_2_with_a_file_in_the_way(tmp_path, "validations")
    gx.build_docs()  # no error: GE logged the page's
    (site / "validations").unlink()
    shutil.move(tmp_path / "validations", site / "validations")
    assert _recorded_runs(gx) == ["night-2"] and _pages(site) == ["night-1"]
    gx.build_docs()
    assert not skipped_docs_path(gx.gx_dir).exists() and _pages(site) == ["night-1", "night-2"]


def test_data_docs_without_an_index_are_rebuilt_from_every_stored_result(tmp_path):
    """The Data Docs folder removed (or a first build that failed before the index): the next
    build renders every stored result, not only the newest run's."""
    gx = gx_suites(tmp_path / "gx")
    site = data_docs_index(gx.gx_dir).parent
    for night in ("night-1", "night-2"):
        validate_transactions(_tx([("o", "A", 1, 1.0, DAY)]), ["A"], CFG, gx=gx, run_name=night)
        gx.build_docs()
    shutil.rmtree(site.parent)
    assert gx.build_docs() == data_docs_index(gx.gx_dir)  # nothing validated since: rebuilt all the same
    assert _pages(site) == ["night-1", "night-2"]
    assert "night-1" in data_docs_index(gx.gx_dir).read_text()


def test_ge_exception_info_is_detected():
    assert _raised({"raised_exception": False, "exception_message": None}) is None
    nested = {"MetricConfigurationID(...)": {"raised_exception": True, "exception_message": "boom"}}
    assert _raised(nested) == "boom"
