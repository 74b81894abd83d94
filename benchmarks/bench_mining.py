"""Benchmark association-rule mining on the Online Retail baskets, three engines side by side.

    .venv/bin/python benchmarks/bench_mining.py [--repeats 5] [--min-support 0.003]
        [--min-confidence 0.5] [--data-dir ../shared/data/online_retail] [--skip-mlxtend]

(a) ours: prodassoc_core.mining.rules.mine_rules (pyfim + exact integer thresholds + metrics
    table); (b) raw pyfim, the rules alone as Python tuples: the same engine call that
    mine_rules makes (fim.eclat, target 'r') and pyfim's simplified fim.arules;
(c) mlxtend: TransactionEncoder + fpgrowth + association_rules, single-item consequents
    kept. Fast engines report the best of --repeats runs; mlxtend runs once.
All three get the same baskets and must find the same rules (min_len 2, no max_len).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fim

from prodassoc_core.data import baskets, importers
from prodassoc_core.mining.rules import min_count, mine_rules
from prodassoc_core.ops.settings import BasketConfig, MiningConfig

REPO = Path(__file__).resolve().parents[1]
RETAIL_2010_2011 = "online_retail_2010_2011.parquet"  # InvoiceNo, UnitPrice
RETAIL_II_2009_2010 = "online_retail_ii_2009_2010.parquet"  # Invoice, Price


def default_data_dir() -> Path:
    shared = os.environ.get("PRODASSOC_SHARED_DIR")
    return (Path(shared) if shared else REPO.parent / "shared") / "data" / "online_retail"


def load_online_retail_baskets(data_dir: Path, cfg: BasketConfig) -> list[list[str]]:
    """One basket per invoice of both Online Retail files, through the product's own path.

    The importer (one copy of the overlapping December 2010, codes upper-cased) and the
    basket rules (cancellations, returns, price <= 0 and non-product codes dropped) are
    the ones the nightly flow uses.
    """
    lines = importers.online_retail_transactions([data_dir / RETAIL_II_2009_2010, data_dir / RETAIL_2010_2011])
    return baskets.baskets(lines, cfg).collect()[baskets.ITEMS].to_list()


def best_of(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    best, result = math.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def raw_pyfim_eclat(baskets: list[list[str]], cfg: MiningConfig) -> list[tuple]:
    """The engine call inside mine_rules, without padding, exact filters or the table."""
    return fim.eclat(baskets, target="r", supp=-min_count(cfg.min_support, len(baskets)),
                     conf=cfg.min_confidence * 100, zmin=cfg.min_len, report="abh", mode="o")


def raw_pyfim_arules(baskets: list[list[str]], cfg: MiningConfig) -> list[tuple]:
    """pyfim's simplified rule interface, thresholds as a pyfim user would pass them."""
    return fim.arules(baskets, supp=cfg.min_support * 100, conf=cfg.min_confidence * 100,
                      zmin=cfg.min_len, report="abh", mode="o")


def mlxtend_rules(baskets: list[list[str]], cfg: MiningConfig) -> tuple[dict[str, float], Any]:
    import pandas as pd
    from mlxtend.frequent_patterns import association_rules, fpgrowth
    from mlxtend.preprocessing import TransactionEncoder

    times = {}
    start = time.perf_counter()
    encoder = TransactionEncoder()
    onehot = pd.DataFrame(encoder.fit(baskets).transform(baskets), columns=encoder.columns_)
    times["encode"] = time.perf_counter() - start
    start = time.perf_counter()
    itemsets = fpgrowth(onehot, min_support=cfg.min_support, use_colnames=True)
    times["fpgrowth"] = time.perf_counter() - start
    start = time.perf_counter()
    rules = association_rules(itemsets, num_itemsets=len(onehot), metric="confidence",
                              min_threshold=cfg.min_confidence)
    rules = rules[rules["consequents"].map(len) == 1]
    times["association_rules"] = time.perf_counter() - start
    times["total"] = sum(times.values())
    return times, rules


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--min-support", type=float, default=0.003)
    parser.add_argument("--min-confidence", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=5, help="runs of the fast engines; best is reported")
    parser.add_argument("--skip-mlxtend", action="store_true")
    args = parser.parse_args(argv)
    cfg = MiningConfig(min_support=args.min_support, min_confidence=args.min_confidence, max_len=None)

    start = time.perf_counter()
    baskets = load_online_retail_baskets(args.data_dir, BasketConfig())
    load_s = time.perf_counter() - start
    n_items = sum(map(len, baskets))
    print(f"baskets {len(baskets):,}  products {len({i for b in baskets for i in b}):,}  "
          f"mean items/basket {n_items / len(baskets):.2f}  (loaded in {load_s:.2f} s)")
    print(f"min_support {cfg.min_support} (count >= {min_count(cfg.min_support, len(baskets))})  "
          f"min_confidence {cfg.min_confidence}  repeats {args.repeats}  "
          f"cpus {os.cpu_count()}  load avg {os.getloadavg()[0]:.2f}")

    ours_s, ours = best_of(lambda: mine_rules(baskets, cfg), args.repeats)
    eclat_s, eclat = best_of(lambda: raw_pyfim_eclat(baskets, cfg), args.repeats)
    arules_s, arules = best_of(lambda: raw_pyfim_arules(baskets, cfg), args.repeats)
    ours_keys = set(zip(map(tuple, ours["antecedent"].to_pylist()), ours["consequent"].to_pylist()))

    def compare(keys: set) -> str:
        if keys == ours_keys:
            return "same rules"
        return f"DIFFER from ours: {len(keys - ours_keys)} extra, {len(ours_keys - keys)} missing"

    print(f"(a) ours  mine_rules            {ours_s:8.3f} s  {ours.num_rows:>7,} rules (table with metrics)")
    for name, secs, rules in [("fim.eclat target='r'", eclat_s, eclat), ("fim.arules", arules_s, arules)]:
        keys = {(tuple(sorted(body)), head) for head, body, *_ in rules}
        print(f"(b) pyfim {name:<22}{secs:8.3f} s  {len(rules):>7,} rules ({compare(keys)})")
    print(f"ours / pyfim eclat  = {ours_s / eclat_s:.2f}  (target <= 2.0; the engine call mine_rules makes)")
    print(f"ours / pyfim arules = {ours_s / arules_s:.2f}")

    if not args.skip_mlxtend:
        times, rules = mlxtend_rules(baskets, cfg)
        keys = {(tuple(sorted(a)), next(iter(c))) for a, c in zip(rules["antecedents"], rules["consequents"])}
        parts = ", ".join(f"{k} {v:.2f} s" for k, v in times.items() if k != "total")
        print(f"(c) mlxtend fpgrowth+rules      {times['total']:8.3f} s  {len(rules):>7,} rules ({compare(keys)})")
        print(f"    mlxtend parts: {parts}")
        print(f"mlxtend / ours = {times['total'] / ours_s:.1f}  (target >= 20); "
              f"without encoding {(times['total'] - times['encode']) / ours_s:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
