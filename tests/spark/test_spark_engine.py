"""The spark engine gives the local engine's answers (issue 15): baskets, association_rules,
frequent item sets and product_associations, on an Online Retail slice (the shipped sample) and
on Groceries (../shared/data; skipped when absent), and the whole nightly on a small landing."""

from __future__ import annotations

import math
from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from prodassoc_core.data import baskets as local_baskets
from prodassoc_core.data import importers, ingest, read_basket_csv
from prodassoc_core.data import spark as spark_data
from prodassoc_core.mining import associations, rules, spark_mining
from prodassoc_core.ops import AssociationConfig, BasketConfig, MiningConfig

from conftest import SAMPLE

pytestmark = pytest.mark.spark

REL = 1e-9
# The Online Retail slice: the sample's orders of these days (a few hundred baskets, wholesale
# orders of hundreds of lines among them).
SLICE_START, SLICE_END = date(2011, 10, 2), date(2011, 10, 8)
GROCERIES_BASKETS = 1500


def stage_lines(lines: pl.DataFrame, staging: Path) -> Path:
    """Canonical transaction lines written as the staging zone lays them out (dt= partitions)."""
    for (day,), part in lines.with_columns(_dt=pl.col("ordered_at").dt.date()).group_by("_dt"):
        path = staging / "transactions" / f"dt={day.isoformat()}" / "lines.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        part.drop("_dt").write_parquet(path)
    return staging


@pytest.fixture(scope="module")
def retail_staging(tmp_path_factory) -> Path:
    """A staging zone holding the shipped sample's lines."""
    lines = importers.online_retail_transactions(SAMPLE).collect()
    return stage_lines(lines, tmp_path_factory.mktemp("staging"))


@pytest.fixture(scope="module")
def groceries(shared_data) -> list[list[str]]:
    """The first GROCERIES_BASKETS baskets of Groceries (skips when ../shared/data is absent)."""
    path = shared_data / "groceries" / "groceries.csv"
    if not path.exists():
        pytest.skip(f"{path} is not present")
    return read_basket_csv(path)[:GROCERIES_BASKETS]


def assert_same_table(spark_table: pa.Table, local_table: pa.Table) -> None:
    """Same schema, same rows in the same order; integers and strings exact, floats to 1e-9."""
    assert spark_table.schema == local_table.schema
    assert spark_table.num_rows == local_table.num_rows
    a, b = pl.from_arrow(spark_table), pl.from_arrow(local_table)
    for name in a.columns:
        if a[name].dtype.is_float():
            for x, y in zip(a[name].to_list(), b[name].to_list()):
                assert (x is None and y is None) or math.isclose(x, y, rel_tol=REL, abs_tol=REL), (name, x, y)
        else:
            assert a[name].to_list() == b[name].to_list(), name


@pytest.fixture(scope="module")
def retail(spark, retail_staging):
    """(local baskets frame, Spark baskets frame) of the Online Retail slice, built by each engine
    from the same staged lines."""
    cfg = BasketConfig()
    local = local_baskets.baskets(ingest.read_staged_transactions(retail_staging, SLICE_START, SLICE_END), cfg).collect()
    lines = spark_data.read_staged_transactions(spark, retail_staging, SLICE_START, SLICE_END)
    return local, spark_data.baskets(lines, cfg).cache()


@pytest.fixture(scope="module")
def grocery_frames(spark, groceries):
    return groceries, spark.createDataFrame([(b,) for b in groceries], "items array<string>").cache()


def test_baskets_are_the_local_engines(retail):
    local, on_spark = retail
    assert 100 < local.height < 1500
    assert pl.from_arrow(on_spark.toArrow()).equals(local)


@pytest.mark.parametrize("cancellations", [False, True])
def test_the_lines_each_basket_rule_drops_are_the_local_engines(spark, retail_staging, cancellations):
    cfg = BasketConfig(drop_cancellations=cancellations)
    local = local_baskets.line_account(ingest.read_staged_transactions(retail_staging, SLICE_START, SLICE_END), cfg)
    lines = spark_data.read_staged_transactions(spark, retail_staging, SLICE_START, SLICE_END)
    on_spark = spark_data.line_account(lines, cfg)
    assert on_spark.equals(local.collect())
    rules = set(on_spark["rule"])
    assert {local_baskets.RETURN, local_baskets.NON_PRODUCT, local_baskets.KEPT} <= rules
    assert (local_baskets.CANCELLED in rules) == cancellations
    assert on_spark["lines"].sum() == lines.count()


def test_orders_split_over_days_or_stores_are_the_local_engines(spark, retail_staging):
    """None in Online Retail; so the slice's lines get some: order ids reused on a later day and
    in a second store."""
    lines = ingest.read_staged_transactions(retail_staging, SLICE_START, SLICE_END).collect()
    first = lines.head(200)
    reused = pl.concat([
        lines.with_columns(store_id=pl.lit("s1")),
        first.with_columns(pl.col("ordered_at") + timedelta(days=3), store_id=pl.lit("s1")),
        first.tail(50).with_columns(store_id=pl.lit("s2")),
    ])
    local = local_baskets.split_orders(reused.lazy()).collect()
    orders = reused["order_id"].n_unique()
    on_spark, spark_orders = spark_data.split_orders(spark.createDataFrame(reused.to_arrow()))
    assert on_spark.equals(local) and spark_orders == orders
    assert local.height == first["order_id"].n_unique() and local["stores"].max() == 2


# One counting pass per data set (spark_mining.count_itemsets) serves every threshold above it:
# the nightly's confidence and lengths (2..4 items), rules of one item ({} => c), the bundles'
# item sets (1..4 items) and a higher support read from the same levels. Unbounded lengths are
# Groceries' (5 levels at 0.005) and the tiny case's.
RETAIL_SUPPORT, RETAIL_MAX_LEN = 0.02, 4
RETAIL_RULES = [MiningConfig(min_support=0.02), MiningConfig(min_support=0.03, min_confidence=0.3, min_len=1)]


def test_association_rules_and_item_sets_are_the_local_engines_on_online_retail(retail):
    local, on_spark = retail
    items = local["items"].to_list()
    counts = spark_mining.count_itemsets(on_spark, RETAIL_SUPPORT, RETAIL_MAX_LEN)
    for cfg in RETAIL_RULES:
        expected = rules.mine_rules(items, cfg)
        assert expected.num_rows > 50, cfg
        assert_same_table(spark_mining.mine_rules(on_spark, cfg, counts=counts), expected)
    for support, max_len, at_least in ((RETAIL_SUPPORT, RETAIL_MAX_LEN, 100), (0.03, 2, 20)):  # bundles' sets
        expected = rules.frequent_itemsets(items, support, min_len=1, max_len=max_len)
        assert expected.num_rows > at_least
        assert_same_table(spark_mining.frequent_itemsets(on_spark, support, min_len=1, max_len=max_len,
                                                         counts=counts), expected)
    with pytest.raises(ValueError, match="does not hold"):  # a pass at 0.02 holds nothing below it
        spark_mining.mine_rules(on_spark, MiningConfig(min_support=0.01), counts=counts)


def test_association_rules_are_the_local_engines_on_groceries(grocery_frames):
    items, on_spark = grocery_frames
    counts = spark_mining.count_itemsets(on_spark, 0.005, None)
    assert len(counts.levels) == 5
    for cfg in (MiningConfig(min_support=0.005, min_confidence=0.2, max_len=3),
                MiningConfig(min_support=0.005, min_confidence=0.2, min_len=1, max_len=None)):
        expected = rules.mine_rules(items, cfg)
        assert expected.num_rows > 1000
        assert_same_table(spark_mining.mine_rules(on_spark, cfg, counts=counts), expected)


def test_frequent_itemsets_at_a_threshold_reached_exactly(spark):
    """min_count's reading of the support (Fraction of its decimal): 0.25 of 8 baskets is 2, and
    sets in exactly 2 baskets are frequent; and an item repeated in a basket counts once."""
    items = [["a", "b"], ["a", "b", "b"], ["a", "c"], ["c"], ["d"], ["a"], ["b", "c"], []]
    frame = spark.createDataFrame([(b,) for b in items], "items array<string>")
    expected = rules.frequent_itemsets(items, 0.25)
    assert expected.num_rows == 4  # a, b, c and {a, b} in 2+ of 8 baskets ({b, c}, {a, c}: 1 each)
    assert_same_table(spark_mining.frequent_itemsets(frame, 0.25), expected)
    cfg = MiningConfig(min_support=0.25, min_confidence=0.5, min_len=1)
    assert_same_table(spark_mining.mine_rules(frame, cfg), rules.mine_rules(items, cfg))


@pytest.mark.parametrize("data", ["retail", "groceries"])
def test_product_associations_are_the_local_engines(request, data):
    if data == "retail":
        local, on_spark = request.getfixturevalue("retail")
        items = local["items"].to_list()
    else:
        items, on_spark = request.getfixturevalue("grocery_frames")
    pairs = spark_mining.pair_counts(on_spark, 2).cache()
    # every method on the slice; on Groceries two (the same Spark code ranks them all)
    for method in spark_mining.PAIR_METHODS if data == "retail" else ("confidence", "jaccard"):
        cfg = AssociationConfig(method=method, top_k=10)
        expected = associations.product_associations(items, cfg)
        assert expected.num_rows > 100
        assert_same_table(spark_mining.rank_pairs(pairs, cfg), expected)


def test_the_nightly_publishes_the_local_engines_tables(spark, tmp_path):
    """The whole nightly (ingest, baskets, rules, associations with the classic method chosen on
    the tail, bundles, publish) with ``engine: spark`` publishes the tables the local engine
    publishes for the same landing (the synthetic one of tests/conftest.py)."""
    import pyarrow.parquet as pq

    from prodassoc_core.data import warehouse
    from prodassoc_core.ops import HybridConfig, Settings, SparkConfig
    from prodassoc_core.pipeline import stages

    from conftest import FIRST, N_DAYS, land

    as_of = FIRST + timedelta(days=N_DAYS)
    published = {}
    for engine in ("local", "spark"):
        settings = Settings(
            data_dir=tmp_path / engine, engine=engine, spark=SparkConfig(master="local[2]", shuffle_partitions=2),
            mining=MiningConfig(min_support=0.05, min_confidence=0.3, min_len=1),
            associations=AssociationConfig(top_k=5),
            hybrid=HybridConfig(enabled=False, bundle_min_support=0.05),
        )
        land(settings.landing_dir)
        result = stages.run_nightly(settings, as_of)
        assert (settings.data_dir / "runs" / f"as_of={as_of}" / stages.BASKETS_FILE).is_dir() == (engine == "spark")
        published[engine] = {
            p.table: pq.read_table(warehouse.partition_dir(settings.warehouse_dir, p.table, as_of) / warehouse.DATA_FILE)
            for p in result.published}
        assert stages.is_published(settings, as_of)
    assert sorted(published["spark"]) == sorted(published["local"]) == ["association_rules", "bundles",
                                                                          "product_associations"]
    for table, expected in published["local"].items():
        assert expected.num_rows > 0 or table == "bundles", table  # 8 products sold at random: no bundle
        assert_same_table(published["spark"][table], expected)
