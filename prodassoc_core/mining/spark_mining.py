"""Frequent item sets, rules and pair statistics as Spark jobs (``engine: spark``), with exactly
the local engine's answers (``rules``, ``associations``).

Counting is Spark SQL, level by level (apriori): the frequent items, then each level's item sets
extended by one larger item of the same basket, counted, and kept when the count reaches
``rules.min_count`` (the same integer threshold), up to ``max_len`` items: the work stops where
the local engine's does. Counts are exact integers; MLlib's FPGrowth is not used because it has
no length bound (the default ``max_len`` 4 is what keeps design-series catalogs tractable) and
its rules compare confidence as a float. The confidence threshold is the local engine's exact
integer test (``n_rule * den >= n_antecedent * num``, in decimals so it cannot overflow).

What comes back to the driver is the answer only (rules that passed, each product's top K pairs);
it is finished by the local engine's own code (``rules.rules_table``,
``associations.rank_associations``), so ids, metrics, ranks and order are the same bytes. The
ranking statistic used to cut the top K in Spark is the same float expression as polars'
(IEEE double arithmetic, the same operations in the same order), so the cut keeps the same pairs.

Item order is Spark's string order (UTF-8 bytes), which is Python's and polars' (code points).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

import polars as pl
import pyarrow as pa

from prodassoc_core.data import ASSOCIATED_PRODUCT_ID, ITEMS, PRODUCT_ID
from prodassoc_core.mining.associations import rank_associations
from prodassoc_core.mining.rules import FREQUENT_ITEMSETS_SCHEMA, min_count, rules_table
from prodassoc_core.ops import AssociationConfig, MiningConfig

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

BASKET = "_basket"
ITEM = "item"
ITEMSET = "itemset"
COUNT = "count"
NUMBER = "_number"


def _basket_items(baskets: "DataFrame") -> "DataFrame":
    """(basket, item), each item once per basket; baskets numbered here, and the numbered pairs
    checkpointed (the numbers must not change between the jobs that use them). The checkpoint is
    lazy: the first job that reads the pairs stores them (no job of its own)."""
    from pyspark.sql import functions as F

    numbered = baskets.select(F.monotonically_increasing_id().alias(BASKET), F.array_distinct(ITEMS).alias(ITEMS))
    return numbered.select(BASKET, F.explode(ITEMS).alias(ITEM)).localCheckpoint(eager=False)


@dataclass(frozen=True)
class ItemsetCounts:
    """What one counting pass found (``count_itemsets``): ``levels[k - 1]`` holds (itemset: sorted
    array of k items, count) of every item set of k items in at least ``min_count`` of the ``n``
    baskets, up to ``max_len`` items. Rules (``mine_rules``) and item sets (``frequent_itemsets``)
    at any support >= ``min_count / n`` and length <= ``max_len`` are read from it, so one pass
    serves both."""

    levels: list["DataFrame"]
    n: int
    min_count: int
    max_len: int | None
    names: list[str]  # the item of each item number in the levels (``_levels``)

    def covers(self, min_support: float, max_len: int | None) -> bool:
        """Whether item sets at ``min_support`` up to ``max_len`` items are all in these levels."""
        deep_enough = self.max_len is None or (max_len is not None and max_len <= self.max_len)
        return deep_enough and min_count(min_support, self.n) >= self.min_count


def count_itemsets(baskets: "DataFrame", min_support: float, max_len: int | None,
                   n: int | None = None) -> ItemsetCounts:
    """Count the frequent item sets of ``baskets`` (an ``items`` array column) level by level:
    sets of up to ``max_len`` items in at least ``min_count(min_support, N)`` baskets.

    Each level is checkpointed before the next is built from it: the plan of level k would
    otherwise hold every level below it twice over (the self-join), and Spark's plan strings
    alone exhaust the driver's memory by level 4. The checkpoints are lazy, and each level's one
    job (its ``count``) stores the pairs, extensions and counts it computes: one Spark job per
    level, which is most of the cost on small data, where fixed job overheads dominate.
    """
    n = baskets.count() if n is None else n
    count = min_count(min_support, n)
    levels, names = _levels(baskets, count, max_len)
    return ItemsetCounts(levels, n, count, max_len, names)


def _levels(baskets: "DataFrame", count: int, max_len: int | None) -> tuple[list["DataFrame"], list[str]]:
    """(levels of item sets as sorted arrays of item numbers, the item of each number).

    The frequent items are numbered 0, 1, ... in their string order (Spark's, Python's and polars'
    order: UTF-8 bytes, code points), so a sorted array of numbers is the sorted array of items;
    the levels' joins, shuffles and comparisons then work on integers, not strings. ``decode``
    turns numbers back into items on the driver (only the answer is decoded).

    Every level is counted where the baskets are, without a shuffle join: each basket's sorted
    array of frequent item numbers (``_item_arrays``, stored once) yields its pairs in place
    (``_pairs_in``); the frequent (k-1)-sets found in a basket are extended by the candidates of
    apriori's join (two frequent (k-1)-sets sharing all but their last item: a small table,
    broadcast) whose new item the basket holds. Counts are aggregated before the shuffle, so
    what is shuffled is partial counts of distinct item sets, not every occurrence. A level's
    occurrences are recomputed from the arrays rather than stored (they hold the baskets' arrays)."""
    from pyspark.sql import functions as F

    pairs = _basket_items(baskets)
    counted = pairs.groupBy(ITEM).agg(F.count(F.lit(1)).alias(COUNT)).filter(F.col(COUNT) >= count)
    frequent_items = sorted((r[0], r[1]) for r in counted.collect())  # level 1's one job
    if not frequent_items:
        return [], []
    names = [item for item, _ in frequent_items]
    spark = baskets.sparkSession
    numbers = spark.createDataFrame([(item, i) for i, item in enumerate(names)], f"{ITEM} string, {NUMBER} int")
    levels = [spark.createDataFrame([([i], c) for i, (_, c) in enumerate(frequent_items)],
                                    f"{ITEMSET} array<int>, {COUNT} long")]
    if max_len == 1:
        return levels, names
    in_baskets = _pairs_in(_item_arrays(pairs, numbers), keep_items=True)  # (items, x, y), never stored
    level = (in_baskets.groupBy("x", "y").agg(F.count(F.lit(1)).alias(COUNT)).filter(F.col(COUNT) >= count)
             .select(F.array("x", "y").alias(ITEMSET), COUNT).localCheckpoint(eager=False))
    k, found = 2, level.count()  # level 2's one job: stores the item arrays and the level
    if not found:
        return levels, names
    levels.append(level)
    frequent_pairs = level.select(F.element_at(ITEMSET, 1).alias("x"), F.element_at(ITEMSET, 2).alias("y"))
    occurrences = (in_baskets.join(_small(frequent_pairs, found), ["x", "y"])
                   .select(ITEMS, F.array("x", "y").alias(ITEMSET)))
    while (max_len is None or k < max_len) and found:
        k += 1
        # apriori's join: two frequent (k-1)-sets that share all but their last item
        prev = levels[-1].select(ITEMSET, F.slice(ITEMSET, 1, k - 2).alias("_prefix"),
                                 F.element_at(ITEMSET, k - 1).alias("_last"))
        grown = prev.alias("p").join(prev.alias("q"), (F.col("p._prefix") == F.col("q._prefix"))
                                     & (F.col("p._last") < F.col("q._last")))
        grown = grown.select(F.col(f"p.{ITEMSET}").alias(ITEMSET), F.col("q._last").alias("next")).localCheckpoint()
        n_grown = grown.count()
        if not n_grown:
            break
        extended = (occurrences.join(_small(grown, n_grown), ITEMSET).filter(F.array_contains(ITEMS, F.col("next")))
                    .select(ITEMS, F.concat(ITEMSET, F.array("next")).alias(ITEMSET)))
        level = extended.groupBy(ITEMSET).agg(F.count(F.lit(1)).alias(COUNT)).filter(F.col(COUNT) >= count)
        level = level.localCheckpoint(eager=False)
        found = level.count()  # the level's one job
        if found:
            levels.append(level)
            occurrences = extended.join(_small(level.select(ITEMSET), found), ITEMSET)
    return levels, names


BROADCAST_ROWS = 2_000_000  # a frame of at most this many rows (small ints, short arrays) is broadcast to joins


def _small(frame: "DataFrame", rows: int) -> "DataFrame":
    """``frame`` hinted for a broadcast join when it has at most ``BROADCAST_ROWS`` rows (a
    checkpointed frame has no size estimate, so Spark would shuffle both sides otherwise)."""
    from pyspark.sql import functions as F

    return F.broadcast(frame) if rows <= BROADCAST_ROWS else frame


def _item_arrays(pairs: "DataFrame", numbers: "DataFrame") -> "DataFrame":
    """(items: the sorted numbers of a basket's items in ``numbers``) for the baskets holding at
    least two of them, from ``_basket_items`` pairs; ``numbers``: (item, number), broadcast.
    Checkpointed lazily: the first job that reads the arrays stores them."""
    from pyspark.sql import functions as F

    numbered = pairs.join(F.broadcast(numbers), ITEM).select(BASKET, NUMBER)
    return (numbered.groupBy(BASKET).agg(F.array_sort(F.collect_list(NUMBER)).alias(ITEMS))
            .filter(F.size(ITEMS) >= 2).select(ITEMS).localCheckpoint(eager=False))


def _pairs_in(arrays: "DataFrame", keep_items: bool = False) -> "DataFrame":
    """(x, y): every pair x < y of each basket's sorted ``items`` array, generated in place (no
    join): each item with the items after it; ``keep_items``: with the basket's array."""
    from pyspark.sql import functions as F

    at = arrays.select(ITEMS, F.posexplode(ITEMS).alias("_pos", "x"))
    y = F.explode(F.slice(ITEMS, F.col("_pos") + 2, F.size(ITEMS) - F.col("_pos") - 1)).alias("y")
    return at.select(ITEMS, "x", y) if keep_items else at.select("x", y)


def decode(numbers: pl.Series, names: list[str]) -> pl.Series:
    """Item numbers (ints, or lists of ints) as the items they number (``_levels``)."""
    import numpy as np
    import pyarrow.compute as pc

    lookup = pa.array(names, pa.string())
    arrow = numbers.to_arrow()
    arrow = arrow.combine_chunks() if isinstance(arrow, pa.ChunkedArray) else arrow
    if not pa.types.is_list(arrow.type) and not pa.types.is_large_list(arrow.type):
        return pl.Series(numbers.name, lookup.take(arrow))
    lengths = pc.list_value_length(arrow).to_numpy(zero_copy_only=False).astype(np.int32)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    return pl.Series(numbers.name, pa.ListArray.from_arrays(offsets, lookup.take(arrow.flatten())))


def itemset_counts(baskets: "DataFrame", count: int, max_len: int | None) -> tuple[list["DataFrame"], int]:
    """([level 1, level 2, ...], N) of item sets in at least ``count`` baskets (``count_itemsets``
    with an integer threshold)."""
    n = baskets.count()
    return _levels(baskets, count, max_len)[0], n


def frequent_itemsets(baskets: "DataFrame", min_support: float, *, min_len: int = 1,
                      max_len: int | None = None, counts: ItemsetCounts | None = None) -> pa.Table:
    """``rules.frequent_itemsets`` of a Spark frame of baskets (an ``items`` array column).
    ``counts``: a counting pass that ``covers`` (min_support, max_len), read instead of counting."""
    from pyspark.sql import functions as F

    if counts is None:
        n = baskets.count()
        if n == 0:
            return FREQUENT_ITEMSETS_SCHEMA.empty_table()
        counts = count_itemsets(baskets, min_support, max_len, n)
    elif not counts.covers(min_support, max_len):
        raise ValueError(f"the counting pass (min_count {counts.min_count}, max_len {counts.max_len}) does not "
                         f"hold the item sets at support {min_support}, max_len {max_len}")
    n, count = counts.n, min_count(min_support, counts.n)
    top = len(counts.levels) if max_len is None else min(max_len, len(counts.levels))
    wanted = counts.levels[max(min_len, 1) - 1:top]
    if n == 0 or not wanted:
        return FREQUENT_ITEMSETS_SCHEMA.empty_table()
    union = wanted[0]
    for level in wanted[1:]:
        union = union.unionByName(level)
    if count > counts.min_count:
        union = union.filter(F.col(COUNT) >= count)
    table = union.select(ITEMSET, F.col(COUNT).cast("long").alias(COUNT)).toArrow()
    frame = pl.from_arrow(table)
    if frame.height == 0:
        return FREQUENT_ITEMSETS_SCHEMA.empty_table()
    frame = frame.with_columns(decode(frame[ITEMSET], counts.names))
    frame = frame.with_columns(
        support=pl.Series(frame[COUNT].to_numpy() / n), length=pl.col(ITEMSET).list.len().cast(pl.Int32),
    ).sort([COUNT, "length", ITEMSET], descending=[True, False, False])
    return frame.select(FREQUENT_ITEMSETS_SCHEMA.names).to_arrow().cast(FREQUENT_ITEMSETS_SCHEMA)


def _at_least(n_rule: "Column", n_antecedent: "Column", min_confidence: float) -> "Column":
    """Exact n_rule / n_antecedent >= min_confidence (``rules._meets_confidence``), in decimals."""
    from pyspark.sql import functions as F

    conf = Fraction(str(min_confidence))
    wide = "decimal(38,0)"
    return n_rule.cast(wide) * F.lit(conf.denominator).cast(wide) >= n_antecedent.cast(wide) * F.lit(conf.numerator).cast(wide)


def mine_rules(baskets: "DataFrame", cfg: MiningConfig, counts: ItemsetCounts | None = None) -> pa.Table:
    """``rules.mine_rules`` of a Spark frame of baskets (an ``items`` array column): the same
    ``association_rules`` rows, ids, counts and metrics, in the same order. ``counts``: a
    counting pass that ``covers`` (cfg.min_support, cfg.max_len), read instead of counting."""
    from pyspark.sql import functions as F

    if counts is None:
        n = baskets.count()
        if n == 0:
            return rules_table(pl.DataFrame())
        counts = count_itemsets(baskets, cfg.min_support, cfg.max_len, n)
    elif not counts.covers(cfg.min_support, cfg.max_len):
        raise ValueError(f"the counting pass (min_count {counts.min_count}, max_len {counts.max_len}) does not "
                         f"hold the rules at support {cfg.min_support}, max_len {cfg.max_len}")
    n, levels = counts.n, counts.levels
    if n == 0 or not levels:
        return rules_table(pl.DataFrame())
    count = min_count(cfg.min_support, n)
    top = len(levels) if cfg.max_len is None else min(cfg.max_len, len(levels))
    items = levels[0].select(F.element_at(ITEMSET, 1).alias("consequent"), F.col(COUNT).alias("n_consequent"))
    parts = []
    for k, level in enumerate(levels[:top], start=1):
        if k < 2 or k < cfg.min_len:
            continue
        heads = level.select(F.col(ITEMSET), F.col(COUNT).alias("n_rule"), F.explode(ITEMSET).alias("consequent"))
        heads = heads.withColumn("antecedent", F.filter(ITEMSET, lambda x: x != F.col("consequent")))
        bodies = levels[k - 2].select(F.col(ITEMSET).alias("antecedent"), F.col(COUNT).alias("n_antecedent"))
        parts.append(heads.join(bodies, "antecedent").join(F.broadcast(items), "consequent")
                     .select("antecedent", "consequent", "n_antecedent", "n_consequent", "n_rule"))
    if cfg.min_len <= 1:  # {} => {c}: n_antecedent = N, n_rule = n_consequent
        parts.append(items.select(F.array().cast("array<int>").alias("antecedent"), "consequent",
                                  F.lit(n).cast("long").alias("n_antecedent"), "n_consequent",
                                  F.col("n_consequent").alias("n_rule")))
    if not parts:
        return rules_table(pl.DataFrame())
    found = parts[0]
    for part in parts[1:]:
        found = found.unionByName(part)
    found = found.filter((F.col("n_rule") >= count) & _at_least(F.col("n_rule"), F.col("n_antecedent"), cfg.min_confidence))
    table = found.select(
        "antecedent", "consequent", F.lit(n).cast("long").alias("n_transactions"),
        *[F.col(c).cast("long").alias(c) for c in ("n_antecedent", "n_consequent", "n_rule")],
    ).toArrow()
    found = pl.from_arrow(table)
    return rules_table(found.with_columns(decode(found["antecedent"], counts.names),
                                          decode(found["consequent"], counts.names)))


def pair_counts(baskets: "DataFrame", min_pair_count: int, n: int | None = None) -> "DataFrame":
    """``associations.pair_counts`` as a Spark frame: (product_id, associated_product_id, n_rule,
    n_antecedent, n_consequent, n_transactions) for ordered pairs in >= ``min_pair_count`` baskets."""
    from pyspark.sql import functions as F

    numbered, names = _numbered_pair_counts(baskets, min_pair_count, n)
    numbers = baskets.sparkSession.createDataFrame(list(enumerate(names)), f"{NUMBER} int, {ITEM} string")
    a = F.broadcast(numbers.select(F.col(NUMBER).alias(PRODUCT_ID), F.col(ITEM).alias("_a")))
    b = F.broadcast(numbers.select(F.col(NUMBER).alias(ASSOCIATED_PRODUCT_ID), F.col(ITEM).alias("_b")))
    return (numbered.join(a, PRODUCT_ID).join(b, ASSOCIATED_PRODUCT_ID)
            .select(F.col("_a").alias(PRODUCT_ID), F.col("_b").alias(ASSOCIATED_PRODUCT_ID), "n_rule",
                    "n_antecedent", "n_consequent", "n_transactions"))


def _numbered_pair_counts(baskets: "DataFrame", min_pair_count: int,
                          n: int | None = None) -> tuple["DataFrame", list[str]]:
    """(``pair_counts`` with item numbers for product ids, the item of each number). Only items
    in at least ``min_pair_count`` baskets can be in such a pair: they are numbered in their
    string order (``_levels``), so ordering by number is ordering by id. The pairs are generated
    in each basket's sorted array of numbers and counted before the shuffle (``_pairs_in``)."""
    from pyspark.sql import functions as F

    n = baskets.count() if n is None else n
    lines = _basket_items(baskets)
    counted = lines.groupBy(ITEM).agg(F.count(F.lit(1)).alias(COUNT)).filter(F.col(COUNT) >= min_pair_count)
    items = sorted((r[0], r[1]) for r in counted.collect())
    names = [item for item, _ in items]
    spark = baskets.sparkSession
    numbers = spark.createDataFrame([(item, i, c) for i, (item, c) in enumerate(items)],
                                    f"{ITEM} string, {NUMBER} int, {COUNT} long")
    once = (_pairs_in(_item_arrays(lines, numbers.select(ITEM, NUMBER)))
            .groupBy("x", "y").agg(F.count(F.lit(1)).cast("long").alias("n_rule"))
            .filter(F.col("n_rule") >= min_pair_count))
    # both directions of each pair from one pass over the counts (a union would aggregate twice)
    ordered = F.explode(F.array(F.struct(F.col("x").alias(PRODUCT_ID), F.col("y").alias(ASSOCIATED_PRODUCT_ID)),
                                F.struct(F.col("y").alias(PRODUCT_ID), F.col("x").alias(ASSOCIATED_PRODUCT_ID))))
    both = once.select(ordered.alias("_pair"), "n_rule").select("_pair.*", "n_rule")
    counts_a = F.broadcast(numbers.select(F.col(NUMBER).alias(PRODUCT_ID), F.col(COUNT).alias("n_antecedent")))
    counts_b = F.broadcast(numbers.select(F.col(NUMBER).alias(ASSOCIATED_PRODUCT_ID), F.col(COUNT).alias("n_consequent")))
    pairs = (both.join(counts_a, PRODUCT_ID).join(counts_b, ASSOCIATED_PRODUCT_ID)
             .select(PRODUCT_ID, ASSOCIATED_PRODUCT_ID, "n_rule", "n_antecedent", "n_consequent",
                     F.lit(n).cast("long").alias("n_transactions")))
    return pairs, names


def _scores() -> dict[str, "Column"]:
    """``associations.SCORES`` and lift as Spark expressions: the same double operations as
    ``metrics.rule_metrics`` (so the same bits, and the same order at ties)."""
    from pyspark.sql import functions as F

    n, n_a, n_b, n_ab = (F.col(c).cast("double") for c in ("n_transactions", "n_antecedent", "n_consequent", "n_rule"))
    return {
        "confidence": n_ab / n_a,
        "count": n_ab,
        "lift": n_ab * n / (n_a * n_b),
        "jaccard": n_ab / (n_a + n_b - n_ab),
    }


def top_pairs(pairs: "DataFrame", method: str, top_k: int) -> "DataFrame":
    """Each product's ``top_k`` pairs by ``associations.rank_associations``' order: score, lift,
    n_rule descending, then associated product id."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    scores = _scores()
    if method not in scores:
        raise ValueError(f"the spark engine ranks {sorted(scores)} in Spark, not {method!r}")
    order = Window.partitionBy(PRODUCT_ID).orderBy(
        F.col("_score").desc(), F.col("_lift").desc(), F.col("n_rule").desc(), F.col(ASSOCIATED_PRODUCT_ID).asc())
    return (pairs.withColumn("_score", scores[method]).withColumn("_lift", scores["lift"])
            .withColumn("_rank", F.row_number().over(order)).filter(F.col("_rank") <= top_k)
            .drop("_score", "_lift", "_rank"))


PAIR_METHODS = ("count", "confidence", "jaccard", "lift")


def product_associations(baskets: "DataFrame", cfg: AssociationConfig, n: int | None = None) -> pa.Table:
    """``associations.product_associations`` of a Spark frame of baskets (``n`` of them, counted
    when None), for the pair methods: the same PRODUCT_ASSOCIATIONS rows. Only each product's top
    K pairs reach the driver (as item numbers, decoded there)."""
    pairs, names = _numbered_pair_counts(baskets, cfg.min_pair_count, n)
    return _finish(top_pairs(pairs, cfg.method, cfg.top_k).toArrow(), cfg, names)


def rank_pairs(pairs: "DataFrame", cfg: AssociationConfig) -> pa.Table:
    """``associations.rank_associations`` of Spark pair counts (``pair_counts``, any
    ``min_pair_count``): each product's top K cut in Spark, collected, finished locally."""
    return _finish(top_pairs(pairs, cfg.method, cfg.top_k).toArrow(), cfg)


def _finish(cut: pa.Table, cfg: AssociationConfig, names: list[str] | None = None) -> pa.Table:
    """The collected top-K cut, ids decoded (``names``: they are item numbers), ranked locally."""
    frame = pl.from_arrow(cut).with_columns(pl.col(c).cast(pl.Int64) for c in
                                            ("n_rule", "n_antecedent", "n_consequent", "n_transactions"))
    if names is not None:
        frame = frame.with_columns(decode(frame[PRODUCT_ID], names), decode(frame[ASSOCIATED_PRODUCT_ID], names))
    return rank_associations(frame, cfg)
