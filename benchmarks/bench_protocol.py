"""The evaluation protocol's table functions against the loops they replaced, side by side.

    .venv/bin/python benchmarks/bench_protocol.py [--repeats 7]

``protocol.fill_with_popular`` and ``protocol.per_product_metrics`` score every method in the
harness, the classic selection (21 settings per choice), the gate and the GNN's validation. Both
now read the table's rows once into per-product lists (then the fill's rule, or rank_metrics, per
product); the peers are the code they replaced: each product's list taken from a polars group of
structs, then filled or scored in Python. (A fill written as polars joins measured 1.5x faster
than the loop and was dropped for it: 9 ms on this table did not pay for the harder-to-read
code.) Both run on the same table: the sample's held-out tail as the classic selection scores it
(1,275 products with relevance sets, the count ranking of the fit baskets), interleaved, best of
--repeats. The outputs must be equal (bit for
bit: tests/mining/test_protocol.py checks the same on random tables against the one-list rules).
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from pathlib import Path

import polars as pl

from prodassoc_core.data import ASSOCIATED_PRODUCT_ID, PRODUCT_ID, baskets, importers
from prodassoc_core.mining import methods, protocol, selection
from prodassoc_core.ops.settings import BasketConfig, Settings

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "online_retail_sample.parquet"
AS_OF = datetime(2011, 11, 8)


def _ranked_lists(associations: pl.DataFrame) -> dict[str, list[tuple[int, str]]]:
    grouped = (associations.select(PRODUCT_ID, ASSOCIATED_PRODUCT_ID, pl.col("rank").cast(pl.Int64))
               .sort(PRODUCT_ID, "rank").group_by(PRODUCT_ID, maintain_order=True)
               .agg(pl.struct("rank", ASSOCIATED_PRODUCT_ID).alias("ranked")))
    return {p: [(r["rank"], r[ASSOCIATED_PRODUCT_ID]) for r in ranked] for p, ranked in grouped.iter_rows()}


def loop_fill(associations: pl.DataFrame, products, popular, k: int) -> pl.DataFrame:
    """fill_with_popular as it was at f36ad70: one product at a time."""
    lists = _ranked_lists(associations)
    pool = list(dict.fromkeys(popular))
    rows = []
    for p in sorted(set(products)):
        chosen = [q for q in dict.fromkeys(q for _, q in lists.get(p, [])) if q != p][:k]
        taken = set(chosen)
        rows.extend((p, q, r, False) for r, q in enumerate(chosen, start=1))
        rank = len(chosen)
        for q in pool:
            if rank >= k:
                break
            if q != p and q not in taken:
                rank += 1
                rows.append((p, q, rank, True))
    return pl.DataFrame(rows, schema={PRODUCT_ID: pl.String, ASSOCIATED_PRODUCT_ID: pl.String, "rank": pl.Int32,
                                      "filled": pl.Boolean}, orient="row")


def loop_metrics(associations: pl.DataFrame, relevant, warm, k: int) -> pl.DataFrame:
    """per_product_metrics as it was at f36ad70: lists grouped in polars, then rank_metrics per product."""
    lists = _ranked_lists(associations)
    rows = []
    for p in sorted(relevant):
        top = [(r, q) for r, q in lists.get(p, []) if r <= k]
        slots: list = [None] * (top[-1][0] if top else 0)
        for r, q in top:
            slots[r - 1] = q
        rows.append((p, p in warm, *protocol.rank_metrics(slots, relevant[p], k)))
    return pl.DataFrame(rows, schema={PRODUCT_ID: pl.String, "warm": pl.Boolean, "hr": pl.Float64,
                                      "recall": pl.Float64, "ndcg": pl.Float64}, orient="row")


def interleaved(ours, peer, repeats: int) -> tuple[float, float, object, object]:
    """Best wall time of each over ``repeats`` rounds, the two run in turn each round."""
    best = [float("inf"), float("inf")]
    outs: list = [None, None]
    for _ in range(repeats):
        for i, fn in enumerate((ours, peer)):
            start = time.perf_counter()
            outs[i] = fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best[0], best[1], outs[0], outs[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    lines = importers.online_retail_lines([SAMPLE])
    frame = baskets.baskets(lines, BasketConfig()).collect().filter(pl.col("ordered_at") < AS_OF)
    cfg = Settings(data_dir="/nonexistent").selection
    fit, tail, cut = selection.tail_split(frame, AS_OF, cfg.validation_days)
    relevant = selection.tail_relevance(tail, cfg)
    fit_items = fit["items"].to_list()
    popular, warm = methods.popular_products(fit_items), {i for b in fit_items for i in b}
    ranking = methods.method_associations("count", fit, cut, 20).filter(pl.col(PRODUCT_ID).is_in(list(relevant)))
    print(f"sample tail: {len(relevant):,} scored products, {ranking.height:,} ranked rows, k={cfg.k}")
    print(f"{'function':<22} {'now (s)':>11} {'before (s)':>13} {'ratio':>7}")
    filled = protocol.fill_with_popular(ranking, relevant, popular, cfg.k)
    for name, ours, peer in (
        ("fill_with_popular", lambda: protocol.fill_with_popular(ranking, relevant, popular, cfg.k),
         lambda: loop_fill(ranking, relevant, popular, cfg.k)),
        ("per_product_metrics", lambda: protocol.per_product_metrics(filled, relevant, warm, cfg.k),
         lambda: loop_metrics(filled, relevant, warm, cfg.k)),
    ):
        t_ours, t_peer, got, want = interleaved(ours, peer, args.repeats)
        assert got.equals(want), f"{name}: the outputs differ"
        print(f"{name:<22} {t_ours:>11.4f} {t_peer:>13.4f} {t_peer / t_ours:>6.1f}x")


if __name__ == "__main__":
    main()
