"""Benchmark association-rule mining on the Online Retail baskets, three engines side by side.

    .venv/bin/python benchmarks/bench_mining.py [--repeats 5] [--min-support 0.003]
        [--min-confidence 0.5] [--data-dir ../shared/data/online_retail] [--skip-mlxtend]
        [--process-repeats 3] [--sample-min-support 0.01]

In process, the mining alone: (a) ours: prodassoc_core.mining.rules.mine_rules (pyfim + exact
    integer thresholds + metrics table); (b) raw pyfim, the rules alone as Python tuples: the
    same engine call that mine_rules makes (fim.eclat, target 'r') and pyfim's simplified
    fim.arules; (c) mlxtend: TransactionEncoder + fpgrowth + association_rules, single-item
    consequents kept. Fast engines report the best of --repeats runs; mlxtend runs once.
    All three get the same baskets and must find the same rules (min_len 2, no max_len).
Whole processes (issue 14 item 8), from process start to exit with the rules written:
    `prodassoc rules --input transactions.parquet --max-len none` against its peers in
    benchmarks/rules_peers.py (plain Python processes that read the same Parquet, make the
    same baskets, mine with pyfim's arules or eclat, or mlxtend, and write the rules to
    Parquet; its docstring defines them). Each runs --process-repeats times, interleaved
    (the order rotates each round); medians of wall time are compared, CPU time is
    shown beside them (steadier on a loaded machine). The peers must write the same rules as ours.
The data: both UCI Online Retail files under --data-dir (skipped, with a line saying so, when
they are not there), then the shipped sample (data/sample) at --sample-min-support.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fim
import polars as pl

from prodassoc_core.data import baskets, importers
from prodassoc_core.mining.rules import min_count, mine_rules
from prodassoc_core.ops.settings import BasketConfig, MiningConfig

REPO = Path(__file__).resolve().parents[1]
RETAIL_2010_2011 = "online_retail_2010_2011.parquet"  # InvoiceNo, UnitPrice
RETAIL_II_2009_2010 = "online_retail_ii_2009_2010.parquet"  # Invoice, Price
SAMPLE = REPO / "data" / "sample" / "online_retail_sample.parquet"
PEERS = REPO / "benchmarks" / "rules_peers.py"
TARGET_VS_ARULES = 1.5  # prodassoc rules / pyfim arules, whole processes: at most
TARGET_VS_MLXTEND = 20.0  # mlxtend / prodassoc rules, whole processes: at least


def default_data_dir() -> Path:
    shared = os.environ.get("PRODASSOC_SHARED_DIR")
    return (Path(shared) if shared else REPO.parent / "shared") / "data" / "online_retail"


def online_retail_lines(sources: list[Path]) -> pl.DataFrame:
    """Canonical transaction lines of Online Retail files through the product's importer: one copy
    of the overlapping December 2010, codes upper-cased."""
    return importers.online_retail_transactions(sources).collect()


def load_online_retail_baskets(lines: pl.DataFrame, cfg: BasketConfig) -> list[list[str]]:
    """One basket per invoice, through the basket rules the nightly flow uses (cancellations,
    returns, price <= 0 and non-product codes dropped)."""
    return baskets.baskets(lines.lazy(), cfg).collect()[baskets.ITEMS].to_list()


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


def run_process(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall s, CPU s (user + system)) of one child process, start to exit."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {err.read().decode()[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime


def rule_keys(path: Path) -> set[tuple[tuple[str, ...], str]]:
    """(sorted antecedent, consequent) of each rule in a rules Parquet file, ours or a peer's."""
    frame = pl.read_parquet(path)
    ante, cons = ("antecedent", "consequent") if "antecedent" in frame.columns else ("antecedents", "consequents")
    return {(tuple(sorted(a)), c) for a, c in zip(frame[ante].to_list(), frame[cons].to_list())}


def whole_processes(lines: pl.DataFrame, cfg: MiningConfig, basket_cfg: BasketConfig, args: argparse.Namespace,
                    work: Path, targets: bool) -> None:
    """`prodassoc rules` against its peers as whole processes, interleaved; prints medians and ratios
    (against issue 14's targets when ``targets``: they are set on Online Retail)."""
    source = work / "transactions.parquet"
    lines.write_parquet(source)  # canonical transactions, as `prodassoc import` lands them
    thresholds = ["--min-support", str(cfg.min_support), "--min-confidence", str(cfg.min_confidence)]
    basket_rules = ["--non-product-codes", json.dumps(list(basket_cfg.non_product_codes)),
                    "--non-product-pattern", basket_cfg.non_product_pattern or ""]
    engines = {
        "prodassoc rules": [sys.executable, "-m", "flows.cli", "rules", "--input", str(source), *thresholds,
                            "--max-len", "none", "--output", str(work / "prodassoc rules.parquet")],
    }
    peers = ["arules", "eclat"] + ([] if args.skip_mlxtend else ["mlxtend"])
    for peer in peers:
        engines[f"{peer} peer"] = [sys.executable, str(PEERS), peer, str(source), str(work / f"{peer} peer.parquet"),
                                   *thresholds, *basket_rules]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in engines}
    names = list(engines)
    for round_ in range(args.process_repeats):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:  # rotate who goes first
            runs[name].append(run_process(engines[name], env))

    ours_keys = rule_keys(work / "prodassoc rules.parquet")
    wall = {name: statistics.median(r[0] for r in rs) for name, rs in runs.items()}
    cpu = {name: statistics.median(r[1] for r in rs) for name, rs in runs.items()}
    print(f"whole processes, start to exit with the rules written ({args.process_repeats} runs each, interleaved; "
          f"median wall (min-max), median CPU; load avg {os.getloadavg()[0]:.2f}):")
    for name, rs in runs.items():
        keys = rule_keys(work / f"{name}.parquet")
        same = f"{len(keys):,} rules" if name == "prodassoc rules" else (
            "same rules" if keys == ours_keys else
            f"DIFFER: {len(keys - ours_keys)} extra, {len(ours_keys - keys)} missing")
        walls = [r[0] for r in rs]
        print(f"    {name:<16} {wall[name]:7.2f} s ({min(walls):.2f}-{max(walls):.2f})  CPU {cpu[name]:6.2f} s  {same}")
    ours = "prodassoc rules"
    arules, mlxtend = (f"target <= {TARGET_VS_ARULES}; ", f"target >= {TARGET_VS_MLXTEND:.0f}; ") if targets else ("", "")
    print(f"prodassoc rules / pyfim arules peer = {wall[ours] / wall['arules peer']:.2f}  "
          f"({arules}CPU {cpu[ours] / cpu['arules peer']:.2f})")
    print(f"prodassoc rules / pyfim eclat peer  = {wall[ours] / wall['eclat peer']:.2f}  "
          f"(the fastest pyfim call; CPU {cpu[ours] / cpu['eclat peer']:.2f})")
    if "mlxtend peer" in wall:
        print(f"mlxtend peer / prodassoc rules      = {wall['mlxtend peer'] / wall[ours]:.1f}  "
              f"({mlxtend}CPU {cpu['mlxtend peer'] / cpu[ours]:.1f})")
    if not targets:
        print("    (no targets here: on a small input start-up is most of each process)")


def in_process(lines: pl.DataFrame, read_s: float, cfg: MiningConfig, basket_cfg: BasketConfig,
               args: argparse.Namespace) -> None:
    """The mining alone, on baskets in memory: ours, raw pyfim and mlxtend."""
    start = time.perf_counter()
    baskets = load_online_retail_baskets(lines, basket_cfg)
    load_s = read_s + time.perf_counter() - start
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


def bench(title: str, sources: list[Path], cfg: MiningConfig, args: argparse.Namespace, targets: bool) -> None:
    """The in-process comparison, then the whole processes, on the baskets of ``sources``."""
    print(f"== {title}")
    basket_cfg = BasketConfig()
    start = time.perf_counter()
    lines = online_retail_lines(sources)
    in_process(lines, time.perf_counter() - start, cfg, basket_cfg, args)
    if args.process_repeats > 0:
        with tempfile.TemporaryDirectory(prefix="bench-rules-") as work:
            whole_processes(lines, cfg, basket_cfg, args, Path(work), targets)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--min-support", type=float, default=0.003)
    parser.add_argument("--min-confidence", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=5, help="runs of the fast engines; best is reported")
    parser.add_argument("--process-repeats", type=int, default=3,
                        help="whole-process runs of each engine, interleaved; medians are compared (0: none)")
    parser.add_argument("--sample-min-support", type=float, default=0.01,
                        help="min_support on the shipped sample (its 2,555 baskets explode at 0.003 without a "
                             "length cap)")
    parser.add_argument("--skip-mlxtend", action="store_true")
    args = parser.parse_args(argv)

    files = [args.data_dir / RETAIL_II_2009_2010, args.data_dir / RETAIL_2010_2011]
    missing = [f for f in files if not f.is_file()]
    if missing:
        print(f"== Online Retail: skipped, {', '.join(f.name for f in missing)} not under {args.data_dir} "
              "(set --data-dir or PRODASSOC_SHARED_DIR)")
    else:
        cfg = MiningConfig(min_support=args.min_support, min_confidence=args.min_confidence, max_len=None)
        bench("Online Retail (both UCI files)", files, cfg, args, targets=True)
    cfg = MiningConfig(min_support=args.sample_min_support, min_confidence=args.min_confidence, max_len=None)
    bench(f"shipped sample ({SAMPLE.relative_to(REPO)})", [SAMPLE], cfg, args, targets=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
