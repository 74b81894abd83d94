"""EVAL.md's temporal-holdout protocol on Online Retail I + II, every method side by side.

    .venv/bin/python benchmarks/eval_online_retail.py [--as-of 2011-09-01] [--k 10]
        [--top-k 20] [--seed 0] [--methods popularity,count,...] [--select]
        [--data-dir ../shared/data/online_retail]

Baskets come through the product's own path (importer: one copy of the overlapping
December 2010, codes upper-cased; basket rules: cancellations, returns, price <= 0 and
non-product codes dropped). Training = baskets before --as-of, test = from it on. Each
method ranks top --top-k per product from the training baskets only (the published table
keeps 20); the top --k of each scored product's list, padded with the most popular
training products, is scored against the test relevant sets; basket completion hides
one item of every test basket (--seed) and ranks it back from the rest.

--select reruns the choice of ``decayed_damped``'s settings: a grid scored on three
validation folds cut from the training window only (the 3 months before --as-of, the 3
months before those, and the test window's length one year before --as-of, the same
season), each fold trained on the baskets before it. The test window plays no part.

Temporary home of the protocol until the CLI wires it.
"""

from __future__ import annotations

import argparse
import itertools
import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from prodassoc_core.data import baskets, importers
from prodassoc_core.mining import methods as assoc_methods
from prodassoc_core.mining import protocol
from prodassoc_core.mining.associations import pair_counts
from prodassoc_core.ops.settings import BasketConfig

REPO = Path(__file__).resolve().parents[1]
FILES = ("online_retail_ii_2009_2010.parquet", "online_retail_2010_2011.parquet")

# EVAL.md's baseline rows: NDCG@10 all, warm, cold, HR@10 all.
EVAL_MD = {
    "popularity": (0.454, 0.466, 0.323, 0.880),
    "count": (0.699, 0.734, 0.323, 0.961),
    "confidence": (0.699, 0.734, 0.323, 0.961),  # EVAL.md: count = confidence ranking
    "jaccard": (0.642, 0.672, 0.323, 0.938),
    "lift": (0.276, 0.271, 0.323, 0.726),
}
EVAL_MD_SCORED = (2350, 2149, 201)

GRID = {
    "half_life_days": (None, 365.0, 180.0, 120.0),
    "size_exponent": (0.0, 0.5),
    "popularity_exponent": (0.0, 0.1, 0.15, 0.2, 0.25, 0.3),
}


def default_data_dir() -> Path:
    shared = os.environ.get("PRODASSOC_SHARED_DIR")
    return (Path(shared) if shared else REPO.parent / "shared") / "data" / "online_retail"


def load_baskets(data_dir: Path) -> pl.DataFrame:
    lines = importers.online_retail_transactions([data_dir / f for f in FILES])
    return baskets.baskets(lines, BasketConfig()).collect()


def months_before(d: datetime, months: int) -> datetime:
    """The same day-of-month ``months`` earlier (the day clipped to 28 to stay valid)."""
    total = d.year * 12 + d.month - 1 - months
    return d.replace(year=total // 12, month=total % 12 + 1, day=min(d.day, 28))


def validation_folds(as_of: datetime, test_end: datetime) -> list[tuple[datetime, datetime]]:
    """[start, end) validation windows inside the training window (all end on or before as_of)."""
    test_days = math.ceil((test_end - as_of) / timedelta(days=1))
    year_ago = months_before(as_of, 12)
    return [
        (months_before(as_of, 3), as_of),
        (months_before(as_of, 6), months_before(as_of, 3)),
        (year_ago, min(year_ago + timedelta(days=test_days), as_of)),
    ]


def evaluate_method(
    method: str,
    train: pl.DataFrame,
    test_items: list[list[str]],
    as_of: datetime,
    relevant: dict[str, set[str]],
    warm: set[str],
    popular: list[str],
    *,
    k: int,
    top_k: int,
    seed: int,
    pairs: pl.DataFrame | None = None,
    decayed: assoc_methods.DecayedConfig | None = None,
) -> dict[str, float | int]:
    """One method: ranking metrics on the scored products plus basket completion (bc_*)."""
    table = assoc_methods.method_associations(method, train, as_of, top_k, pairs=pairs, decayed=decayed)
    filled = protocol.fill_with_popular(table, relevant, popular, k)
    out = protocol.score_associations(filled, relevant, warm, k)
    bc = protocol.basket_completion(test_items, table, popular, seed, k)
    return out | {"bc_hr": bc["hr"], "bc_ndcg": bc["ndcg"], "bc_n": bc["n"]}


_FOLDS: list[dict] = []  # per fold: train, start, relevant, warm, popular; set in each worker


def _init_worker(folds: list[dict]) -> None:
    _FOLDS[:] = folds


def _fold_score(job: tuple[int, dict, int]) -> tuple[int, dict, float]:
    fold, config, k = job
    f = _FOLDS[fold]
    table = assoc_methods.decayed_associations(f["train"], f["start"], assoc_methods.DecayedConfig(**config, top_k=k))
    filled = protocol.fill_with_popular(table, f["relevant"], f["popular"], k)
    return fold, config, protocol.score_associations(filled, f["relevant"], f["warm"], k)["ndcg_all"]


def select_decayed(all_baskets: pl.DataFrame, as_of: datetime, test_end: datetime, k: int) -> dict:
    """Grid over DecayedConfig on the training-window folds; prints the ranking, returns the best."""
    train_all, _ = protocol.split_baskets(all_baskets, as_of)
    folds = validation_folds(as_of, test_end)
    fold_data = []
    for f, (start, end) in enumerate(folds):
        train, rest = protocol.split_baskets(train_all, start)
        val, _ = protocol.split_baskets(rest, end)
        items = train[baskets.ITEMS].to_list()
        relevant = protocol.relevant_sets(val[baskets.ITEMS].to_list())
        warm = {i for b in items for i in b}
        fold_data.append(dict(train=train, start=start, relevant=relevant, warm=warm,
                           popular=assoc_methods.popular_products(items)))
        print(f"fold {f}: train {train.height:,} baskets before {start:%Y-%m-%d}, validate on {val.height:,} "
              f"in [{start:%Y-%m-%d}, {end:%Y-%m-%d}): {len(relevant):,} scored products")
    jobs = [(f, dict(zip(GRID, values)), k) for f in range(len(folds)) for values in itertools.product(*GRID.values())]
    t0 = time.perf_counter()
    results: dict[tuple, list[float]] = {}
    # spawn, not fork: a forked child can deadlock on the parent's polars thread pool.
    # Each worker gets the folds once, through the initializer, not with every job.
    with ProcessPoolExecutor(
        max_workers=max(1, min(4, os.cpu_count() or 1)),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(fold_data,),
    ) as pool:
        for fold, config, ndcg in pool.map(_fold_score, jobs):
            results.setdefault(tuple(config.items()), [math.nan] * len(folds))[fold] = ndcg
    ranked = sorted(results.items(), key=lambda kv: -sum(kv[1]) / len(kv[1]))
    print(f"grid of {len(results)} settings x {len(folds)} folds in {time.perf_counter() - t0:.0f}s; "
          f"NDCG@{k} all per fold, ranked by their mean:")
    for config, scores in ranked[:10]:
        print(f"  {dict(config)}  " + " ".join(f"{s:.4f}" for s in scores) + f"  mean {sum(scores) / len(scores):.4f}")
    count_like = dict(half_life_days=None, size_exponent=0.0, popularity_exponent=0.0)
    scores = results[tuple(count_like.items())]
    print(f"  (co-purchase count, {count_like})  " + " ".join(f"{s:.4f}" for s in scores)
          + f"  mean {sum(scores) / len(scores):.4f}")
    return dict(ranked[0][0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--as-of", type=datetime.fromisoformat, default=datetime(2011, 9, 1))
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--top-k", type=int, default=20, help="ranking depth kept per product (the published table's)")
    parser.add_argument("--seed", type=int, default=0, help="basket completion's hidden-item seed")
    parser.add_argument("--methods", default=",".join(assoc_methods.METHODS))
    parser.add_argument("--select", action="store_true", help="rerun decayed_damped's validation grid first")
    args = parser.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in assoc_methods.METHODS]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {list(assoc_methods.METHODS)}")
    if args.top_k < args.k:
        parser.error("--top-k must be >= --k")

    t0 = time.perf_counter()
    all_baskets = load_baskets(args.data_dir)
    train, test = protocol.split_baskets(all_baskets, args.as_of)
    train_items, test_items = train[baskets.ITEMS].to_list(), test[baskets.ITEMS].to_list()
    relevant = protocol.relevant_sets(test_items)
    warm = {i for b in train_items for i in b}
    popular = assoc_methods.popular_products(train_items)
    n_warm = sum(p in warm for p in relevant)
    print(f"{all_baskets.height:,} baskets: {train.height:,} train before {args.as_of:%Y-%m-%d}, "
          f"{test.height:,} test; scored products {len(relevant):,} ({n_warm:,} warm, {len(relevant) - n_warm:,} cold); "
          f"EVAL.md: {EVAL_MD_SCORED[0]:,} ({EVAL_MD_SCORED[1]:,} warm, {EVAL_MD_SCORED[2]:,} cold); "
          f"prepared in {time.perf_counter() - t0:.1f}s")

    decayed = assoc_methods.DecayedConfig()
    if args.select and "decayed_damped" in methods:
        best = select_decayed(all_baskets, args.as_of, test["ordered_at"].max(), args.k)
        print(f"selected on validation: {best} (default DecayedConfig: "
              f"{ {f: getattr(decayed, f) for f in GRID} })")
        decayed = assoc_methods.DecayedConfig(**best)

    pairs = pair_counts(train_items, 2) if set(methods) & set(assoc_methods.PAIR_METHODS) else None
    k = args.k
    header = (f"{'method':<15} {'NDCG@%d all' % k:>11} {'warm':>6} {'cold':>6} {'HR@%d all' % k:>9} "
              f"{'Rec@%d all' % k:>10} {'scored':>6} | {'BC HR@%d' % k:>8} {'BC NDCG@%d' % k:>10} {'BC n':>6} "
              f"| {'EVAL.md ndcg all/warm/cold, hr':>31} {'max |d|':>7} {'sec':>5}")
    print(header)
    print("-" * len(header))
    for method in methods:
        t = time.perf_counter()
        s = evaluate_method(method, train, test_items, args.as_of, relevant, warm, popular,
                            k=k, top_k=args.top_k, seed=args.seed, pairs=pairs, decayed=decayed)
        ref = EVAL_MD.get(method)
        ref_text, delta = "", ""
        if ref is not None:
            ours = (s["ndcg_all"], s["ndcg_warm"], s["ndcg_cold"], s["hr_all"])
            ref_text = "/".join(f"{r:.3f}" for r in ref)
            delta = f"{max(abs(o - r) for o, r in zip(ours[:3], ref[:3])):.3f}"
        print(f"{method:<15} {s['ndcg_all']:>11.3f} {s['ndcg_warm']:>6.3f} {s['ndcg_cold']:>6.3f} {s['hr_all']:>9.3f} "
              f"{s['recall_all']:>10.3f} {s['n_all']:>6,} | {s['bc_hr']:>8.3f} {s['bc_ndcg']:>10.3f} {s['bc_n']:>6,} "
              f"| {ref_text:>31} {delta:>7} {time.perf_counter() - t:>5.1f}", flush=True)
    print(f"total {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
