"""Choosing what to serve per catalog, on the held-out tail of its own training window.

    training baskets (all before as_of) --tail_split--> fit baskets | tail baskets (last days)
    tail baskets --tail_relevance--> {p: products bought with p in the tail} (EVAL.md's rule)
    fit baskets + candidate settings --rankings--> one ranking per candidate
    rankings, relevance --select_classic--> the candidate with the best NDCG@k on the tail

Parameters that win on one catalog lose on another (EVAL.md: decayed_damped with Online
Retail's parameters scored 0.312 against plain count's 0.407 on a grocery catalog), so the
classic method and its parameters are chosen per catalog, and plain ``count`` is always among
the candidates: what is chosen never loses to ``count`` on the catalog's own tail. Another
candidate replaces ``count`` only when it wins by at least ``min_gain`` (tail noise otherwise
picks a setting at random). With too few scored products the choice stays ``count``.

Pure: frames in, small dataclasses out; no I/O, no clock (``as_of`` is explicit).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import polars as pl

from prodassoc_core.data import ITEMS, ORDERED_AT, PRODUCT_ID
from prodassoc_core.mining import methods, protocol
from prodassoc_core.mining.associations import pair_counts
from prodassoc_core.ops import AssociationConfig, SelectionConfig

FLOOR = "count"
PAIR_CANDIDATES = ("count", "confidence", "jaccard")


def tail_days(train: pl.DataFrame, as_of: datetime, validation_days: int) -> int:
    """The tail's length: ``validation_days``, at most a quarter of the span the baskets cover
    (a short history keeps three quarters of it to fit on), at least one day."""
    if train.height == 0:
        return validation_days
    span = (as_of - train[ORDERED_AT].min()).days
    return max(1, min(validation_days, span // 4))


def tail_split(train: pl.DataFrame, as_of: datetime, validation_days: int) -> tuple[pl.DataFrame, pl.DataFrame, datetime]:
    """(fit baskets, tail baskets, cut): the tail is the last ``tail_days`` before ``as_of``."""
    if train.height and train[ORDERED_AT].max() >= as_of:
        raise ValueError(f"tail_split: training baskets must all be before as_of {as_of}")
    cut = as_of - timedelta(days=tail_days(train, as_of, validation_days))
    before = pl.col(ORDERED_AT) < cut
    return train.filter(before), train.filter(~before), cut


def tail_relevance(tail: pl.DataFrame, cfg: SelectionConfig) -> dict[str, set[str]]:
    """EVAL.md's relevance on the tail: products in >= ``min_baskets`` tail baskets and the
    products bought with them in >= ``min_pair_baskets`` baskets at lift >= ``min_lift``."""
    return protocol.relevant_sets(tail[ITEMS].to_list(), cfg.min_baskets, cfg.min_pair_baskets, cfg.min_lift)


def split_queries(products: Sequence[str]) -> tuple[list[str], list[str]]:
    """(tune, gate): a fixed half of the products by a hash of their id. Whatever is tuned
    (weights, a classic setting) is tuned on one half and judged on the other, so the judgement
    is not the tuning's own optimism."""
    tune, gate = [], []
    for p in sorted(products):
        (tune if hashlib.sha256(p.encode()).digest()[0] % 2 == 0 else gate).append(p)
    return tune, gate


def candidates(base: AssociationConfig, cfg: SelectionConfig) -> list[AssociationConfig]:
    """``count`` first (the floor), the other pair statistics, then decayed_damped over the grid."""
    out = [base.model_copy(update={"method": m}) for m in PAIR_CANDIDATES]
    for half_life in cfg.half_lives:
        for size in cfg.size_exponents:
            for pop in cfg.popularity_exponents:
                out.append(base.model_copy(update={
                    "method": "decayed_damped", "half_life_days": half_life, "size_exponent": size,
                    "popularity_exponent": pop,
                }))
    return out


def label(cfg: AssociationConfig) -> str:
    """``count`` or ``decayed_damped(half_life=120,size=0.5,pop=0.25)``."""
    if cfg.method != "decayed_damped":
        return cfg.method
    half = "none" if cfg.half_life_days is None else f"{cfg.half_life_days:g}"
    return f"decayed_damped(half_life={half},size={cfg.size_exponent:g},pop={cfg.popularity_exponent:g})"


def rankings(fit: pl.DataFrame, cut: datetime, configs: Sequence[AssociationConfig],
             queries: Sequence[str] | None = None) -> list[pl.DataFrame]:
    """Each setting's ranking from the fit baskets (pair counts and decayed counts computed once),
    of ``queries`` only when given (scoring needs the scored products' lists, not the catalog's)."""
    items = fit[ITEMS].to_list()
    min_counts = {c.min_pair_count for c in configs}
    pairs = {m: pair_counts(items, m) for m in min_counts}
    if queries is not None:
        wanted = pl.Series(list(queries), dtype=pl.String)
        pairs = {m: p.filter(pl.col(PRODUCT_ID).is_in(wanted)) for m, p in pairs.items()}
    decayed = [c for c in configs if c.method == "decayed_damped"]
    by_count: dict[int, list[AssociationConfig]] = {}
    for c in decayed:
        by_count.setdefault(c.min_pair_count, []).append(c)
    decayed_out: dict[int, pl.DataFrame] = {}
    for group in by_count.values():
        for c, frame in zip(group, methods.decayed_grid(fit, cut, [methods.decayed_config(c) for c in group],
                                                        queries=queries)):
            decayed_out[id(c)] = frame
    out = []
    for c in configs:
        if c.method == "decayed_damped":
            out.append(decayed_out[id(c)])
        else:
            out.append(methods.method_associations(c.method, fit, cut, c.top_k, min_pair_count=c.min_pair_count,
                                                   pairs=pairs[c.min_pair_count]))
    return out


def per_product(ranking: pl.DataFrame, relevant: Mapping[str, set[str]], warm: set[str], popular: Sequence[str],
                k: int) -> pl.DataFrame:
    """Per scored product: warm, hr, recall, ndcg of ``ranking`` padded with ``popular``
    (every method gets the same fallback, as in the harness)."""
    wanted = pl.Series(sorted(relevant), dtype=pl.String)  # the scored products' lists only
    filled = protocol.fill_with_popular(ranking.filter(pl.col(PRODUCT_ID).is_in(wanted)), relevant, popular, k)
    return protocol.per_product_metrics(filled, relevant, warm, k)


@dataclass(frozen=True)
class Selection:
    chosen: AssociationConfig
    scores: pl.DataFrame  # label, ndcg (mean over the scored products), in candidate order
    n_products: int
    reason: str

    @property
    def label(self) -> str:
        return label(self.chosen)

    @property
    def floor_ndcg(self) -> float:
        return float(self.scores.filter(pl.col("label") == FLOOR)["ndcg"][0]) if self.scores.height else math.nan

    @property
    def chosen_ndcg(self) -> float:
        row = self.scores.filter(pl.col("label") == self.label)
        return float(row["ndcg"][0]) if row.height else math.nan


def select_classic(
    train: pl.DataFrame, as_of: datetime, base: AssociationConfig, cfg: SelectionConfig,
    queries: Sequence[str] | None = None,
) -> Selection:
    """The classic setting for this catalog, chosen on the tail of ``train`` (``select_on``)."""
    fit, tail, cut = tail_split(train, as_of, cfg.validation_days)
    relevant = tail_relevance(tail, cfg)
    if queries is not None:
        wanted = set(queries)
        relevant = {p: qs for p, qs in relevant.items() if p in wanted}
    return select_on(fit, cut, relevant, base, cfg)


def select_on(
    fit: pl.DataFrame, cut: datetime, relevant: Mapping[str, set[str]], base: AssociationConfig, cfg: SelectionConfig,
    configs: Sequence[AssociationConfig] | None = None,
) -> Selection:
    """The best of ``configs`` (default: ``candidates``; the first is the floor) by mean NDCG@k
    on ``relevant`` from the fit baskets (all before ``cut``): the floor unless another beats it
    by ``cfg.min_gain``, the floor when fewer than ``cfg.min_products`` products can be scored."""
    configs = list(configs or candidates(base, cfg))
    if fit.is_empty():
        return Selection(configs[0], pl.DataFrame(schema={"label": pl.String, "ndcg": pl.Float64}), len(relevant),
                         f"no baskets before the tail (from {cut.date()}) to score the candidates on: "
                         f"{label(configs[0])}, the floor")
    if len(relevant) < cfg.min_products:
        return Selection(configs[0], pl.DataFrame(schema={"label": pl.String, "ndcg": pl.Float64}), len(relevant),
                         f"{len(relevant)} products scorable on the tail (< {cfg.min_products}): "
                         f"{label(configs[0])}, the floor")
    fit_items = fit[ITEMS].to_list()
    warm = {i for b in fit_items for i in b}
    popular = methods.popular_products(fit_items)
    scores = [
        float(per_product(r, relevant, warm, popular, cfg.k)["ndcg"].mean())
        for r in rankings(fit, cut, configs, queries=sorted(relevant))
    ]
    table = pl.DataFrame({"label": [label(c) for c in configs], "ndcg": scores})
    best = max(range(len(configs)), key=lambda i: (scores[i], -i))  # ties: the earlier candidate
    gain = scores[best] - scores[0]
    pick = best if gain >= cfg.min_gain else 0
    floor = label(configs[0])
    why = f"beats {floor} by {gain:.4f}" if pick else f"nothing beats {floor} by {cfg.min_gain:g} or more"
    return Selection(configs[pick], table, len(relevant),
                     f"{label(configs[pick])}: NDCG@{cfg.k} {scores[pick]:.4f} on {len(relevant)} tail products ({why})")


def best_decayed(fit: pl.DataFrame, cut: datetime, relevant: Mapping[str, set[str]], cfg: SelectionConfig,
                 base: AssociationConfig | None = None) -> methods.DecayedConfig:
    """The decayed_damped setting of the grid that ranks best on ``relevant`` (the hybrid's
    co-purchase signal); the count-like setting (no decay, no weights) is the floor."""
    base = base or AssociationConfig()
    floor = base.model_copy(update={"method": "decayed_damped", "half_life_days": None, "size_exponent": 0.0,
                                    "popularity_exponent": 0.0})
    grid = [floor] + [c for c in candidates(base, cfg) if c.method == "decayed_damped" and c != floor]
    return methods.decayed_config(select_on(fit, cut, relevant, base, cfg, grid).chosen)
