"""Classic association-rule mining over in-memory baskets, with arules' apriori semantics.

The frequent item sets and candidate rules come from Christian Borgelt's C
implementation (pyfim, ``import fim``); the thresholds are then applied again, exactly,
on integer counts, and the metrics are computed vectorised (``prodassoc_core.mining.metrics``).

Semantics (as arules ``apriori(..., parameter = list(target = "rules"))``):
- a rule is A => {c} with a single-item consequent; its length is |A| + 1, and
  ``min_len`` / ``max_len`` count the items of the whole rule (``max_len=None`` is
  unbounded, unlike arules' default ``maxlen = 10``). ``min_len=1`` admits rules with an
  empty antecedent, {} => {c}, whose confidence is the support of c;
- rule support is the support of A ∪ {c} (Borgelt's "original" definition, pyfim ``mode='o'``);
- ``n_rule >= ceil(min_support * N)``, where min_support is read as the decimal it was
  written as (``Fraction(str(0.001))`` = 1/1000, so 0.001 * 9835 gives 10, not 9.835...);
- ``n_rule / n_antecedent >= min_confidence`` is tested as
  ``n_rule * den >= num * n_antecedent`` with ``num / den = Fraction(str(min_confidence))``,
  so a rule with confidence exactly 4/5 passes 0.8 (a float test drops some of them).
An item listed twice in a basket counts once; empty baskets count in N.

pyfim 6.28 does not report an item set whose support equals the number of transactions
(with ``[["a", "b"], ["a", "b"]]`` it finds nothing at all). Every call here therefore
appends one empty transaction: no item set's count changes, none reaches the padded
total, and all supports and confidences are computed from the true N. Rules with an
empty antecedent (whose body count would be the padded total) are built from item counts.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from fractions import Fraction
from itertools import chain, compress
from typing import TYPE_CHECKING, Protocol

import fim
import numpy as np
import polars as pl
import pyarrow as pa

from prodassoc_core.data import ASSOCIATION_RULES
from prodassoc_core.mining.metrics import rule_metrics

if TYPE_CHECKING:
    from prodassoc_core.ops import MiningConfig


class RuleThresholds(Protocol):
    """What mining reads of a ``MiningConfig`` (which has these, validated); `prodassoc rules` passes
    its checked options without building one, so that it never imports pydantic."""

    min_support: float
    min_confidence: float
    min_len: int
    max_len: int | None

# Output of ``frequent_itemsets``: a working table, not a published one.
FREQUENT_ITEMSETS_SCHEMA = pa.schema(
    [
        pa.field("itemset", pa.list_(pa.string()), nullable=False),
        pa.field("length", pa.int32(), nullable=False),
        pa.field("count", pa.int64(), nullable=False),
        pa.field("support", pa.float64(), nullable=False),
    ]
)

# pyfim is asked for candidates at a confidence this far (in percent) below the
# requested one; the exact integer test then decides. Float rounding in pyfim's own
# comparison is ~1e-14 %, so no rule at the boundary is lost.
_CONF_SLACK_PERCENT = 1e-6
_INT64_MAX = 2**63 - 1


def min_count(min_support: float, n_transactions: int) -> int:
    """Smallest basket count that meets ``min_support``: ceil(Fraction(str(min_support)) * N).

    At least 1, so that an item set has to occur to be frequent.
    """
    return max(1, math.ceil(Fraction(str(min_support)) * n_transactions))


def rule_id(antecedent: Sequence[str], consequent: str) -> str:
    """Stable 16-hex-digit id of the rule ``antecedent => consequent``.

    BLAKE2b (64 bit) of the length-prefixed, sorted antecedent items and the consequent:
    the same rule gets the same id in every run, process and version.
    """
    return _rule_id(sorted(antecedent), consequent)


def _rule_id(sorted_antecedent: Sequence[str], consequent: str) -> str:
    # Length-prefixed items: unambiguous whatever characters the item ids contain.
    key = "".join(f"{len(item)}:{item}," for item in sorted_antecedent) + f"=>{len(consequent)}:{consequent}"
    return _hash_key(key)


def _rule_key(antecedent: pl.Expr, consequent: pl.Expr) -> pl.Expr:
    """The key string of ``_rule_id``, vectorised (antecedent already sorted)."""

    def prefixed(item: pl.Expr) -> pl.Expr:
        return item.str.len_chars().cast(pl.String) + ":" + item

    items = antecedent.list.eval(prefixed(pl.element()) + ",").list.join("")
    return items + "=>" + prefixed(consequent)


def _hash_key(key: str) -> str:
    return hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


def _transactions(baskets: Sequence[Sequence[str]]) -> list[Sequence[str]]:
    """The baskets plus the empty padding transaction (see module doc).

    Not deduplicated here: pyfim reduces each transaction to its set of items while
    reading it (tests pin this), and doing it again in Python would cost ~40% of the run.
    """
    return [*baskets, ()]


def _int_array(values: np.ndarray) -> pa.Array:
    """An int64 Arrow array over a numpy array's buffer (``pa.array`` would import pandas)."""
    values = np.ascontiguousarray(values, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), len(values), [None, pa.py_buffer(values)])


def _item_lists(
    groups: Sequence[Sequence], heads: Sequence = (), items: Sequence[str] | None = None
) -> tuple[pl.Series, pl.Series]:
    """(each group's items as a sorted list<string> Series, ``heads`` (one item each) as a string Series).

    Groups and heads hold item ids, or, with ``items``, integer codes: code k stands for
    ``items[k]``, in any order. Everything after coding is vectorised: Python's ``sorted`` per
    group, polars' row-by-row list construction and its ``list.sort()`` on strings are each
    slower than the mining itself.
    """
    sizes = np.fromiter(map(len, groups), dtype=np.int64, count=len(groups))
    total = int(sizes.sum())
    if items is None:  # code the ids by first appearance
        index: dict = {}
        head_codes = np.fromiter((index.setdefault(h, len(index)) for h in heads), np.int64, count=len(heads))
        flat = np.fromiter((index.setdefault(i, len(index)) for i in chain.from_iterable(groups)), np.int64, count=total)
        items = list(index)
    else:
        head_codes = np.fromiter(heads, np.int64, count=len(heads))
        flat = np.fromiter(chain.from_iterable(groups), np.int64, count=total)
    vocabulary = pl.Series(values=items, dtype=pl.String)
    rank = np.empty(len(vocabulary), dtype=np.int64)  # each code's place in the ids' sort order
    rank[vocabulary.arg_sort().to_numpy()] = np.arange(len(vocabulary), dtype=np.int64)
    rows = np.repeat(np.arange(len(groups), dtype=np.int64), sizes)
    flat = flat[np.lexsort((rank[flat], rows))]  # by group, then by id within the group
    offsets = np.zeros(len(groups) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    values = vocabulary.gather(flat).to_arrow()
    lists = pl.Series(values=pa.LargeListArray.from_arrays(_int_array(offsets), values))
    return lists, vocabulary.gather(head_codes)


def _length_bounds(min_len: int, max_len: int | None) -> dict[str, int]:
    # pyfim rejects zmax=None; leaving it out means unbounded.
    return {"zmin": min_len} if max_len is None else {"zmin": min_len, "zmax": max_len}


def frequent_itemset_counts(
    baskets: Sequence[Sequence[str]],
    min_support: float,
    *,
    min_len: int = 1,
    max_len: int | None = None,
) -> list[tuple[tuple[str, ...], int]]:
    """``frequent_itemsets`` as pyfim reports them: (item set, in no order; count) pairs, not
    sorted, no table. For a caller that filters most of them away (``hybrid.bundles``)."""
    if not baskets:
        return []
    return fim.eclat(
        _transactions(baskets),
        target="s",
        supp=-min_count(min_support, len(baskets)),
        report="a",
        **_length_bounds(min_len, max_len),
    )


def frequent_itemsets(
    baskets: Sequence[Sequence[str]],
    min_support: float,
    *,
    min_len: int = 1,
    max_len: int | None = None,
) -> pa.Table:
    """All item sets with count >= ``min_count(min_support, N)`` and min_len..max_len items.

    Returns a table with ``FREQUENT_ITEMSETS_SCHEMA`` (itemset: sorted list of items,
    length, count, support), sorted by count desc, then length, then itemset.
    """
    n = len(baskets)
    raw = frequent_itemset_counts(baskets, min_support, min_len=min_len, max_len=max_len)
    if not raw:
        return pa.Table.from_batches([], schema=FREQUENT_ITEMSETS_SCHEMA)
    itemsets, counts = zip(*raw)
    counts = np.array(counts, dtype=np.int64)
    frame = pl.DataFrame(
        {
            "itemset": _item_lists(itemsets)[0],
            "count": counts,
            "support": counts / n,  # numpy divides exactly; polars' array / scalar multiplies by 1/n
        }
    ).with_columns(length=pl.col("itemset").list.len().cast(pl.Int32))
    frame = frame.sort(["count", "length", "itemset"], descending=[True, False, False])
    return frame.select(FREQUENT_ITEMSETS_SCHEMA.names).to_arrow().cast(FREQUENT_ITEMSETS_SCHEMA)


def _meets_confidence(n_rule: np.ndarray, n_antecedent: np.ndarray, min_confidence: float) -> np.ndarray:
    """Exact n_rule / n_antecedent >= min_confidence on integers (Python ints if int64 would overflow)."""
    conf = Fraction(str(min_confidence))
    num, den = conf.numerator, conf.denominator
    if n_rule.size == 0:
        return np.zeros(0, dtype=bool)
    if den * int(n_rule.max()) <= _INT64_MAX and num * int(n_antecedent.max()) <= _INT64_MAX:
        return n_rule * den >= n_antecedent * num
    return np.array([r * den >= a * num for r, a in zip(n_rule.tolist(), n_antecedent.tolist())], dtype=bool)


class MiningTooLargeError(ValueError):
    """The thresholds admit more candidate rules than the caller's bound (``mine_rules(max_candidates=…)``)."""


def candidate_counts(baskets: Sequence[Sequence[str]], cfg: MiningConfig | RuleThresholds) -> tuple[int, int]:
    """(frequent item sets of 2..max_len items, candidate rules) for ``cfg``, exactly, before mining.

    An item set of k items gives k candidate rules (one per consequent) before the confidence
    filter. Counted from pyfim's pattern spectrum (``report="#"``: counts per size and support,
    no item set is materialised), which takes about a second where mining would take hours:
    a 300-item basket has 330 million 4-item subsets.
    """
    n = len(baskets)
    if n == 0 or (cfg.max_len is not None and cfg.max_len < 2):
        return 0, 0
    spectrum = fim.eclat(
        _transactions(baskets), target="s", supp=-min_count(cfg.min_support, n), report="#", algo="o",
        **_length_bounds(max(2, cfg.min_len), cfg.max_len),
    )
    itemsets = sum(int(v) for v in spectrum.values())
    rules = sum(int(size) * int(v) for (size, _), v in spectrum.items())
    return itemsets, rules


def mine_rules(
    baskets: Sequence[Sequence[str]] | Sequence[Sequence[int]],
    cfg: MiningConfig | RuleThresholds,
    *,
    max_candidates: int | None = None,
    items: Sequence[str] | None = None,
) -> pa.Table:
    """Association rules A => c of ``baskets`` (each a sequence of item ids), arules semantics.

    Returns a table conforming to ``contracts.ASSOCIATION_RULES`` (one row per rule:
    rule_id, antecedent as a sorted list, consequent, length, counts and metrics), sorted
    by lift desc, confidence desc, rule_id. Empty (with that schema) when no rule qualifies.

    ``max_candidates``: refuse (MiningTooLargeError, before mining) when the thresholds admit
    more candidate rules than this (``candidate_counts``); None: no bound.

    ``items``: the baskets hold integer codes instead of ids, code k standing for ``items[k]``
    (``data.baskets.load_basket_codes``). The rules are the same as for the baskets of ids;
    pyfim reads and hashes integers faster than strings.
    """
    n = len(baskets)
    if n == 0:
        return ASSOCIATION_RULES.empty_table()
    if max_candidates is not None:
        itemsets, candidates = candidate_counts(baskets, cfg)
        if candidates > max_candidates:
            max_len = "none" if cfg.max_len is None else cfg.max_len
            raise MiningTooLargeError(
                f"min_support {cfg.min_support:g}, max_len {max_len} admit {itemsets:,} frequent item sets "
                f"({candidates:,} candidate rules before the confidence filter) in {n:,} baskets, more than the "
                f"bound of {max_candidates:,}: raise the minimum support, lower the maximum length, or raise the bound"
            )
    count = min_count(cfg.min_support, n)
    tracts = _transactions(baskets)

    heads: list = []
    bodies: list[tuple] = []
    n_rule = n_ante = n_cons = np.zeros(0, dtype=np.int64)
    if cfg.max_len is None or cfg.max_len >= 2:
        raw = fim.eclat(
            tracts,
            target="r",
            supp=-count,
            conf=max(0.0, float(cfg.min_confidence) * 100.0 - _CONF_SLACK_PERCENT),
            report="abh",  # absolute counts of A ∪ {c}, A, {c}
            mode="o",  # rule support = support of A ∪ {c}, as arules
            **_length_bounds(max(2, cfg.min_len), cfg.max_len),
        )
        if raw:
            heads, bodies, r, a, c = zip(*raw)
            heads, bodies = list(heads), list(bodies)
            n_rule, n_ante, n_cons = (np.fromiter(col, dtype=np.int64, count=len(col)) for col in (r, a, c))
        del raw
    if cfg.min_len <= 1:
        # {} => {c}: n_antecedent = N, n_rule = n_consequent = count of c.
        frequent_items = fim.eclat(tracts, target="s", supp=-count, zmin=1, zmax=1, report="a")
        if frequent_items:
            singles, single_counts = zip(*frequent_items)
            single_counts = np.array(single_counts, dtype=np.int64)
            heads += [s[0] for s in singles]
            bodies += [()] * len(singles)
            n_rule = np.concatenate([n_rule, single_counts])
            n_ante = np.concatenate([n_ante, np.full(len(singles), n, dtype=np.int64)])
            n_cons = np.concatenate([n_cons, single_counts])

    # pyfim applied both thresholds, looser; these are the exact ones.
    keep = (n_rule >= count) & _meets_confidence(n_rule, n_ante, cfg.min_confidence)
    if not keep.any():
        return ASSOCIATION_RULES.empty_table()

    if not keep.all():
        heads, bodies = list(compress(heads, keep)), list(compress(bodies, keep))
        n_rule, n_ante, n_cons = n_rule[keep], n_ante[keep], n_cons[keep]
    antecedent, consequent = _item_lists(bodies, heads, items)
    counts = pl.DataFrame(
        {
            "antecedent": antecedent,
            "consequent": consequent,
            "n_transactions": np.full(len(heads), n, dtype=np.int64),
            "n_antecedent": n_ante,
            "n_consequent": n_cons,
            "n_rule": n_rule,
        }
    )
    return rules_table(counts)


def rules_table(counts: pl.DataFrame) -> pa.Table:
    """The ``association_rules`` table of rules given by their counts: ids, metrics, order.

    ``counts``: one row per rule that passed both thresholds, with antecedent (list of items,
    sorted), consequent, n_transactions, n_antecedent, n_consequent, n_rule. Every engine
    (this module, ``spark_mining``) finishes its rules here, so ids, metrics and order agree.
    """
    if counts.height == 0:
        return ASSOCIATION_RULES.schema.empty_table()
    keys = counts.select(_rule_key(pl.col("antecedent"), pl.col("consequent"))).to_series()
    ids = [_hash_key(key) for key in keys.to_list()]
    rules = (
        rule_metrics(counts.with_columns(rule_id=pl.Series(values=ids, dtype=pl.String)).lazy())
        .with_columns(length=(pl.col("antecedent").list.len() + 1).cast(pl.Int32))
        .sort(["lift", "confidence", "rule_id"], descending=[True, True, False])
        .collect()
    )
    return ASSOCIATION_RULES.conform(rules.to_arrow())
