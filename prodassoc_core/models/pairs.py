"""Training pairs for the association models: positives from co-purchase, negatives by sampling.

    training baskets --split_fit_validation--> fit baskets, validation baskets (last N days)
    fit baskets --positive_pairs--> unordered pairs bought together often, with lift
    catalog + fit baskets --PairSpace--> product index, co-purchase lookup, hard-negative
                                         groups, popular pool
    PairSpace.negatives(anchor, rng) --> hard, popular and random products never bought with it

Everything is keyed by product index (the catalog's row order); nothing here touches a model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import polars as pl
import scipy.sparse as sp

from prodassoc_core.data import CATEGORY, ITEMS, ORDERED_AT, PRODUCT_ID, TITLE
from prodassoc_core.mining import popular_products, relevant_sets
from prodassoc_core.ops import PairConfig

_WORD = re.compile(r"[a-z][a-z]{2,}")


def split_fit_validation(train: pl.DataFrame, as_of: datetime, validation_days: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(fit, validation): training baskets before ``as_of - validation_days``, and from then on."""
    cut = as_of - timedelta(days=validation_days)
    before = pl.col(ORDERED_AT) < cut
    return train.filter(before), train.filter(~before)


def associated(item_lists: Sequence[Sequence[str]], cfg: PairConfig, min_product_baskets: int) -> dict[str, set[str]]:
    """``{p: products associated with p}`` by the positive rule (count and lift thresholds)."""
    return relevant_sets(item_lists, min_product_baskets, cfg.min_count, cfg.min_lift)


def fit_positives(fit: pl.DataFrame, cut: datetime, cfg: PairConfig) -> dict[str, set[str]]:
    """``{p: its positive partners}`` in the fit baskets (all before ``cut``), by ``cfg.positives``."""
    if cfg.positives == "lift":
        return associated(items_of(fit), cfg, cfg.min_product_baskets)
    from prodassoc_core.mining import DecayedConfig, decayed_associations

    top = decayed_associations(fit, cut, DecayedConfig(min_pair_count=cfg.min_count, top_k=cfg.positive_top_k))
    grouped = top.group_by(PRODUCT_ID).agg(pl.col("associated_product_id")).sort(PRODUCT_ID)
    return {p: set(qs) for p, qs in grouped.iter_rows()}


def positive_pairs(assoc: dict[str, set[str]], index: dict[str, int]) -> np.ndarray:
    """Unordered positive pairs ``[n, 2]`` (int64 product indices, smaller first), sorted.

    Products missing from the catalog index are skipped."""
    pairs = {
        (min(index[p], index[q]), max(index[p], index[q]))
        for p, qs in assoc.items() if p in index
        for q in qs if q in index
    }
    return np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)


def _title_words(title: str) -> set[str]:
    return set(_WORD.findall(title.lower()))


@dataclass
class PairSpace:
    """The catalog as product indices, with what negative sampling needs.

    ``bought``: CSR matrix, nonzero where two products share any fit basket (never a negative).
    ``groups``: per product, the products of its hard-negative groups (same category; without
    categories, products sharing a title word), as index arrays; ``popular``: the pool.
    """

    product_ids: list[str]
    index: dict[str, int]
    bought: sp.csr_matrix
    groups: list[np.ndarray]
    popular: np.ndarray

    @classmethod
    def build(cls, catalog: pl.DataFrame, fit_items: Sequence[Sequence[str]], cfg: PairConfig) -> "PairSpace":
        ids = catalog[PRODUCT_ID].to_list()
        index = {p: i for i, p in enumerate(ids)}
        rows = np.repeat(np.arange(len(fit_items)), [len(b) for b in fit_items])
        cols = np.fromiter((index.get(i, -1) for b in fit_items for i in b), dtype=np.int64, count=len(rows))
        known = cols >= 0
        x = sp.csr_matrix(
            (np.ones(int(known.sum()), dtype=np.int32), (rows[known], cols[known])), shape=(len(fit_items), len(ids))
        )
        x.data[:] = 1
        bought = (x.T @ x).tocsr()
        popular = np.array([index[p] for p in popular_products(fit_items, cfg.popular_pool) if p in index], dtype=np.int64)
        return cls(ids, index, bought, _groups(catalog), popular)

    def bought_with(self, a: int) -> np.ndarray:
        """The products sharing a fit basket with ``a``: its row of ``bought``, read from the CSR
        arrays (scipy's row indexing builds a new matrix per call, most of the cost of sampling)."""
        return self.bought.indices[self.bought.indptr[a]: self.bought.indptr[a + 1]]

    def co_bought(self, a: int, b: np.ndarray) -> np.ndarray:
        """Whether ``a`` shares a fit basket with each of ``b`` (or is it)."""
        return np.isin(b, self.bought_with(a)) | (b == a)

    def negatives(self, anchor: int, cfg: PairConfig, rng: np.random.Generator) -> list[int]:
        """``hard + popular + random`` products never bought with ``anchor`` (fewer if none exist).

        Hard ones come from the anchor's group, popular ones from the pool; random ones from
        the whole catalog. A kind that has no eligible product is topped up with random ones."""
        picked: list[int] = []
        missing = 0
        for pool, n in ((self.groups[anchor], cfg.hard_negatives), (self.popular, cfg.popular_negatives)):
            if n == 0:
                continue
            eligible = pool[~self.co_bought(anchor, pool)] if len(pool) else pool
            eligible = np.setdiff1d(eligible, picked, assume_unique=False)
            take = min(n, len(eligible))
            picked += rng.choice(eligible, size=take, replace=False).tolist() if take else []
            missing += n - take
        want = cfg.random_negatives + missing
        bought = set(self.bought_with(anchor).tolist()) | {anchor}
        for _ in range(want * 20):
            if want == 0:
                break
            c = int(rng.integers(len(self.product_ids)))
            if c not in picked and c not in bought:
                picked.append(c)
                want -= 1
        return picked


def _groups(catalog: pl.DataFrame) -> list[np.ndarray]:
    """Per product, the other products of its category; without categories, those sharing a title word.

    A word shared by more than a fifth of the catalog is too common to mean anything and is ignored."""
    n = catalog.height
    if CATEGORY in catalog.columns and catalog[CATEGORY].null_count() < n:
        keys = [[c] if c else [] for c in catalog[CATEGORY].to_list()]
    else:
        keys = [sorted(_title_words(t or "")) for t in catalog[TITLE].to_list()]
    members: dict[str, list[int]] = {}
    for i, ks in enumerate(keys):
        for k in ks:
            members.setdefault(k, []).append(i)
    common = {k for k, m in members.items() if len(m) > max(1, n // 5)}
    out = []
    for i, ks in enumerate(keys):
        group = {j for k in ks if k not in common for j in members[k]} - {i}
        out.append(np.array(sorted(group), dtype=np.int64))
    return out


def validation_anchors(
    validation_items: Sequence[Sequence[str]], cfg: PairConfig, index: dict[str, int]
) -> dict[str, set[str]]:
    """Held-out relevance: products of the validation baskets and their associated products."""
    assoc = associated(validation_items, cfg, cfg.validation_min_baskets)
    return {p: {q for q in qs if q in index} for p, qs in assoc.items() if p in index}


def items_of(frame: pl.DataFrame) -> list[list[str]]:
    return frame[ITEMS].to_list()


@dataclass
class PairTask:
    """What the teacher and the student learn from: product texts (by index), the fit
    window's positive pairs, and the validation window's relevance sets."""

    space: PairSpace
    texts: list[str]
    positives: np.ndarray
    validation: dict[str, set[str]]
    n_fit_baskets: int
    n_validation_baskets: int

    def summary(self) -> dict[str, int]:
        return {
            "products": len(self.texts),
            "positive_pairs": int(len(self.positives)),
            "fit_baskets": self.n_fit_baskets,
            "validation_baskets": self.n_validation_baskets,
            "validation_anchors": len(self.validation),
        }


def build_task(catalog: pl.DataFrame, texts: Sequence[str], train: pl.DataFrame, as_of: datetime, cfg: PairConfig) -> PairTask:
    """Pairs from the training baskets (all before ``as_of``): fit window -> positives and the
    negative-sampling space; the last ``cfg.validation_days`` -> validation relevance."""
    if train.height and train[ORDERED_AT].max() >= as_of:
        raise ValueError(f"build_task: training baskets must all be before as_of {as_of}")
    fit, held = split_fit_validation(train, as_of, cfg.validation_days)
    fit_items, held_items = items_of(fit), items_of(held)
    space = PairSpace.build(catalog, fit_items, cfg)
    positives = positive_pairs(fit_positives(fit, as_of - timedelta(days=cfg.validation_days), cfg), space.index)
    if not len(positives):
        raise ValueError(
            f"no positive pairs in the fit window ({len(fit_items)} baskets before "
            f"{as_of - timedelta(days=cfg.validation_days)}): lower pairs.min_count / min_lift"
        )
    return PairTask(space, list(texts), positives, validation_anchors(held_items, cfg, space.index),
                    len(fit_items), len(held_items))


def examples(task: PairTask, cfg: PairConfig, rng: np.random.Generator, positives: np.ndarray | None = None) -> np.ndarray:
    """``[m, 3]`` (anchor, other, label): each positive in random orientation, then the
    anchor's negatives; positives in random order."""
    pos = task.positives if positives is None else positives
    out = []
    for k in rng.permutation(len(pos)):
        a, b = (int(pos[k, 0]), int(pos[k, 1])) if rng.random() < 0.5 else (int(pos[k, 1]), int(pos[k, 0]))
        out.append((a, b, 1))
        out.extend((a, n, 0) for n in task.space.negatives(a, cfg, rng))
    return np.array(out, dtype=np.int64).reshape(-1, 3)


def validation_examples(task: PairTask, cfg: PairConfig, seed: int, max_pairs: int) -> np.ndarray:
    """Held-out (anchor, other, label) rows: every validation positive (capped at ``max_pairs``,
    by a seeded choice) and the anchor's sampled negatives, the same for every model."""
    idx = task.space.index
    pos = np.array(sorted((idx[p], idx[q]) for p, qs in task.validation.items() for q in qs), dtype=np.int64)
    pos = pos.reshape(-1, 2)
    rng = np.random.default_rng(seed)
    if len(pos) > max_pairs:
        pos = pos[np.sort(rng.choice(len(pos), size=max_pairs, replace=False))]
    out = []
    for a, b in pos:
        out.append((int(a), int(b), 1))
        out.extend((int(a), n, 0) for n in task.space.negatives(int(a), cfg, rng))
    return np.array(out, dtype=np.int64).reshape(-1, 3)


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half); nan without both classes."""
    from scipy.stats import rankdata

    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
