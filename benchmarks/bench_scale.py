"""The nightly at growing data sizes, local engine beside spark engine (issue 15, item 3).

    .venv/bin/python benchmarks/bench_scale.py [--sizes 1,10] [--engines local,spark] [--work DIR]
                                               [--plot docs/bench_scale.png] [--json rows.json]
                                               [--timeout 3600] [--cap-gib 14] [--plot-only]

Sizes are multiples of Online Retail (1x = 1.04M lines, Online Retail II's two years). For a
size s, a synthetic retailer is landed in the canonical layout:

* orders: real Online Retail orders resampled with replacement, about s x 1.04M lines in all, so
  the basket-size distribution (distinct items per order, lines per item) is Online Retail's;
* catalog: each product in s variants ("regions": ``85123A`` and ``85123A~1`` .. ``85123A~{s-1}``),
  and every order is one variant's: all its items and its customer carry the order's variant.
  So the catalog grows to s x ~4.6k products (230k at 50x), each variant's product popularity is
  Online Retail's, and co-purchases keep their structure (within a variant);
* days: one year at 1x, two years (the default lookback) from 2x up; each order keeps its
  time of day, on a day drawn uniformly; customers grow with the variants.

The source is ../shared/data/online_retail (both Online Retail II files) when present, else the
shipped sample (data/sample; its 76k lines resampled to the same sizes).

Each (size, engine) runs ``prodassoc run`` (the whole nightly: ingest with validation, baskets,
rules, associations, bundles, publish) in a fresh process on its own copy of the landing, with
``associations.method: count`` (the spark engine ranks the pair methods in Spark; ``auto``'s choice
collects baskets to the driver) and no models. Measured, polling every 0.2 s with psutil over the
process tree: wall seconds; peak RSS of the Python driver and, separately, of its JVM (in the
spark engine's local mode the JVM hosts Spark's driver and its executors; on a cluster the
executors' memory is elsewhere); the 1-minute load average over the run (mean, max), since on a
shared machine other work inflates wall times.

Watchdog: a run whose Python process or JVM passes ``--cap-gib`` (default 14 GiB) of RSS is
stopped there (its process tree killed) and reported as "exceeded 14 GiB (python|jvm)" with the
wall time and memory it had reached: on a shared machine a run must not be left to the kernel's
OOM killer, which may pick another user's process. "Runs out of memory" in the results means
"crossed the cap", not an out-of-memory error. Likewise ``--timeout`` (seconds per nightly).

``--json`` keeps the rows across invocations (a (size, engine) run again replaces its row), so
sizes can be measured one at a time; the table (Markdown, as in docs/spark.md) and the plot
show every row of the file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from prodassoc_core.data import contracts as c  # noqa: E402
from prodassoc_core.data import importers  # noqa: E402

BASE_LINES = 1_040_000  # Online Retail II, both years
START = date(2022, 1, 1)
SAMPLE = REPO / "data" / "sample" / "online_retail_sample.parquet"
SHARED = REPO.parent / "shared" / "data" / "online_retail"


def source_lines() -> tuple[pl.DataFrame, pl.DataFrame, str]:
    """(canonical lines, catalog, where from) of the Online Retail source."""
    files = sorted(SHARED.glob("*.parquet")) if SHARED.is_dir() else []
    paths = files or [SAMPLE]
    lines = importers.online_retail_transactions(paths).collect()
    catalog = importers.derive_catalog(importers.online_retail_lines(paths))
    return lines, catalog, ", ".join(str(p) for p in paths)


def land(scale: int, landing: Path, seed: int = 0) -> dict:
    """A synthetic retailer at ``scale`` x Online Retail in ``landing`` (module doc); returns its figures."""
    rng = np.random.default_rng(seed)
    lines, catalog, where = source_lines()
    lines = lines.with_columns(pl.col(c.ORDER_ID).rank("dense").cast(pl.Int64).alias("_src") - 1)
    n_src = int(lines["_src"].max()) + 1
    per_order = lines.height / n_src
    n_orders = round(scale * BASE_LINES / per_order)
    days = 365 if scale < 2 else 730
    counts = np.full(days, n_orders // days)
    counts[: n_orders % days] += 1
    time_of_day = lines.group_by("_src").agg(
        (pl.col(c.ORDERED_AT).first() - pl.col(c.ORDERED_AT).first().dt.truncate("1d")).alias("_tod"))
    lines = lines.join(time_of_day, on="_src")
    tx_dir = landing / c.TRANSACTIONS.name
    k0 = 0
    for d, n in enumerate(counts):
        day = START + timedelta(days=d)
        picked = pl.DataFrame({
            "_k": np.arange(k0, k0 + n, dtype=np.int64),
            "_src": rng.integers(0, n_src, n, dtype=np.int64),
            "_v": rng.integers(0, scale, n, dtype=np.int64),
        })
        k0 += n
        suffix = pl.when(pl.col("_v") > 0).then(pl.lit("~") + pl.col("_v").cast(pl.String)).otherwise(pl.lit(""))
        out = picked.join(lines, on="_src").sort("_k", maintain_order=True).select(
            (pl.when(pl.col(c.ORDER_ID).str.starts_with("C")).then(pl.lit("C")).otherwise(pl.lit(""))
             + pl.lit("S") + pl.col("_k").cast(pl.String)).alias(c.ORDER_ID),
            (pl.col(c.PRODUCT_ID) + suffix).alias(c.PRODUCT_ID),
            pl.col(c.QUANTITY), pl.col(c.UNIT_PRICE),
            (pl.col(c.CUSTOMER_ID) + suffix).alias(c.CUSTOMER_ID),
            (pl.lit(datetime.combine(day, datetime.min.time())).cast(pl.Datetime("us")) + pl.col("_tod"))
            .alias(c.ORDERED_AT),
        )
        path = tx_dir / f"dt={day.isoformat()}" / "part-0.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        out.write_parquet(path)
    variants = pl.DataFrame({"_v": np.arange(scale, dtype=np.int64)})
    grown = catalog.join(variants, how="cross").with_columns(
        pl.when(pl.col("_v") > 0).then(pl.col(c.PRODUCT_ID) + pl.lit("~") + pl.col("_v").cast(pl.String))
        .otherwise(pl.col(c.PRODUCT_ID)).alias(c.PRODUCT_ID),
        pl.when(pl.col("_v") > 0).then(pl.col(c.TITLE) + pl.lit(" (region ") + pl.col("_v").cast(pl.String) + ")")
        .otherwise(pl.col(c.TITLE)).alias(c.TITLE),
    ).drop("_v").unique(c.PRODUCT_ID, keep="first").sort(c.PRODUCT_ID)
    cat_dir = landing / c.CATALOG.name
    cat_dir.mkdir(parents=True, exist_ok=True)
    grown.write_parquet(cat_dir / f"catalog-{START.isoformat()}.parquet")
    return {"scale": scale, "orders": int(n_orders), "lines": int(round(n_orders * per_order)), "days": days,
            "products": grown.height, "source": where, "as_of": (START + timedelta(days=days)).isoformat()}


GIB = 2**30


def _kill_tree(root) -> None:
    """Kill ``root`` (a psutil.Process) and everything it started (its JVM, a Prefect server)."""
    import psutil

    try:
        procs = [*root.children(recursive=True), root]
    except psutil.Error:
        procs = [root]
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=10)


def measure(cmd: list[str], env: dict, timeout: float, cap_gib: float = 14.0) -> dict:
    """Run ``cmd``; wall seconds, peak RSS (MB) of the Python process, of its JVM(s) and of its
    other child processes, and the 1-minute load average over the run (mean, max).

    A watchdog polls every 0.2 s: when the Python process or a JVM passes ``cap_gib`` GiB of
    RSS, the whole process tree is killed and the status says "exceeded {cap} GiB (python|jvm)"
    (on a shared machine, a run is stopped there rather than left to the kernel's OOM killer,
    which may pick another user's process)."""
    import threading

    import psutil

    cap = cap_gib * GIB
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    root = psutil.Process(proc.pid)
    peak = {"python_mb": 0.0, "jvm_mb": 0.0, "other_mb": 0.0}
    loads: list[float] = []
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
    reader.start()
    status = "ok"
    last_load = 0.0
    while proc.poll() is None:
        if time.perf_counter() - t0 > timeout:
            _kill_tree(root)
            status = f"timeout ({timeout:.0f} s)"
            break
        py = jvm = other = 0
        over = None
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            procs = [root]
        for p in procs:
            try:
                rss = p.memory_info().rss
                if p.pid == root.pid:
                    py = rss
                    kind = "python"
                elif "java" in p.name():
                    jvm += rss
                    kind = "jvm"
                else:
                    other += rss
                    kind = None
                if kind and rss > cap:
                    over = kind
            except psutil.Error:
                pass
        peak["python_mb"] = max(peak["python_mb"], py / 2**20)
        peak["jvm_mb"] = max(peak["jvm_mb"], jvm / 2**20)
        peak["other_mb"] = max(peak["other_mb"], other / 2**20)
        if over:
            _kill_tree(root)
            status = f"exceeded {cap_gib:g} GiB ({over})"
            break
        if time.perf_counter() - last_load >= 5:
            loads.append(os.getloadavg()[0])
            last_load = time.perf_counter()
        time.sleep(0.2)
    proc.wait()
    reader.join(timeout=5)
    if status == "ok" and proc.returncode != 0:
        status = "killed (rc -9: out of memory?)" if proc.returncode in (-9, 137) else f"failed (rc {proc.returncode})"
    return {"status": status, "wall_s": round(time.perf_counter() - t0, 1),
            **{k: round(v) for k, v in peak.items()},
            "load_mean": round(sum(loads) / len(loads), 1) if loads else None,
            "load_max": round(max(loads), 1) if loads else None,
            "tail": "".join(out[-15:])}


def run_nightly(engine: str, landing: Path, work: Path, as_of: str, timeout: float, cap_gib: float = 14.0) -> dict:
    data = work / engine
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    shutil.copytree(landing, data / "landing", copy_function=os.link)  # hard links: no copy of the data
    env = {**os.environ, "PRODASSOC_ENGINE": engine, "PRODASSOC_ASSOCIATIONS__METHOD": "count",
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
    cmd = [sys.executable, "-m", "flows.cli", "--data-dir", str(data), "run", "--as-of", as_of, "--allow-stale"]
    result = measure(cmd, env, timeout, cap_gib)
    result["engine"] = engine
    return result


def plot(rows: list[dict], path: Path) -> str:
    """Wall time and peak memory by size, an engine per line; a run stopped at the RSS cap or
    the timeout is an x at the value it had reached (marked "stopped")."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot (pip install matplotlib)"
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {"local": "tab:blue", "spark": "tab:orange"}
    for engine, marker in (("local", "o"), ("spark", "s")):
        color = colors[engine]
        mine = [r for r in rows if r["engine"] == engine and r["status"] == "ok"]
        if mine:
            xs = [r["scale"] for r in mine]
            a.plot(xs, [r["wall_s"] for r in mine], marker=marker, color=color, label=engine)
            b.plot(xs, [r["python_mb"] for r in mine], marker=marker, color=color, label=f"{engine}: Python driver")
            if engine == "spark":
                b.plot(xs, [r["jvm_mb"] for r in mine], marker=marker, linestyle="--", color=color,
                       label="spark: JVM (local mode: driver + executors)")
        for r in (r for r in rows if r["engine"] == engine and r["status"] != "ok"):
            a.plot([r["scale"]], [r["wall_s"]], marker="x", markersize=10, color=color, linestyle="none")
            a.annotate(f"{engine} stopped: {r['status']}", (r["scale"], r["wall_s"]), fontsize=7,
                       xytext=(-150, 8), textcoords="offset points")
            top = max(r["python_mb"], r["jvm_mb"])
            b.plot([r["scale"]], [top], marker="x", markersize=10, color=color, linestyle="none")
            b.annotate(f"{engine} stopped: {r['status']}", (r["scale"], top), fontsize=7,
                       xytext=(-150, -12), textcoords="offset points")
    caps = {r.get("cap_gib") for r in rows if r.get("cap_gib")}
    for cap in caps:
        b.axhline(cap * 1024, color="grey", linestyle=":", linewidth=1)
        b.annotate(f"RSS cap {cap:g} GiB", (min(r["scale"] for r in rows), cap * 1024), fontsize=7,
                   xytext=(2, 3), textcoords="offset points", color="grey")
    a.set(xlabel="size (x Online Retail)", ylabel="nightly wall (s)", title="nightly wall time")
    b.set(xlabel="size (x Online Retail)", ylabel="peak RSS (MB)", title="driver peak memory")
    for ax in (a, b):
        ax.set_xscale("log")
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return f"plot: {path}"


def table(rows: list[dict]) -> str:
    """The rows as the Markdown table of docs/spark.md."""
    out = ["| size | lines | products | engine | status | nightly wall (s) | peak RSS: Python driver (MB) "
           "| JVM (MB) | load avg (mean / max) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        load = f"{r['load_mean']} / {r['load_max']}" if r.get("load_mean") is not None else "-"
        jvm = f"{r['jvm_mb']:,}" if r["jvm_mb"] else "-"
        out.append(f"| {r['scale']}x | {r['lines']:,} | {r['products']:,} | {r['engine']} | {r['status']} "
                   f"| {r['wall_s']} | {r['python_mb']:,} | {jvm} | {load} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,10", help="multiples of Online Retail, comma-separated (50: big machines)")
    ap.add_argument("--engines", default="local,spark")
    ap.add_argument("--work", type=Path, default=REPO / ".prodassoc" / "bench_scale")
    ap.add_argument("--plot", type=Path, default=REPO / "docs" / "bench_scale.png")
    ap.add_argument("--json", type=Path, default=None,
                    help="rows as JSON: rows already there are kept (a (size, engine) run again replaces its row), "
                         "and the table and plot show them all")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per nightly before it is killed")
    ap.add_argument("--cap-gib", type=float, default=14.0,
                    help="RSS cap of the Python driver and of a JVM: a run passing it is stopped and reported "
                         "as 'exceeded CAP GiB' (default 14: a shared machine's safe share)")
    ap.add_argument("--plot-only", action="store_true", help="only redraw the table and plot from --json")
    args = ap.parse_args(argv)
    rows = json.loads(args.json.read_text()) if args.json and args.json.exists() else []
    sizes = [] if args.plot_only else [int(s) for s in args.sizes.split(",")]
    ok = True
    for scale in sizes:
        work = args.work / f"x{scale}"
        landing = work / "landing"
        shutil.rmtree(work, ignore_errors=True)
        t = time.perf_counter()
        figures = land(scale, landing)
        print(f"{scale}x: landed {figures['lines']:,} lines, {figures['orders']:,} orders, {figures['products']:,} "
              f"products over {figures['days']} days in {time.perf_counter() - t:.0f} s ({figures['source']})",
              flush=True)
        for engine in args.engines.split(","):
            result = run_nightly(engine, landing, work, figures["as_of"], args.timeout, args.cap_gib)
            row = {**figures, **{k: v for k, v in result.items() if k != "tail"}, "cap_gib": args.cap_gib}
            rows = [r for r in rows if (r["scale"], r["engine"]) != (scale, engine)] + [row]
            ok = ok and result["status"] == "ok"
            print(f"  {engine:5s} {result['status']:12s} {result['wall_s']:8.1f} s  python {result['python_mb']:6d} MB"
                  f"  jvm {result['jvm_mb']:6d} MB  load {result['load_mean']} / {result['load_max']}", flush=True)
            if result["status"] != "ok":
                print("    " + result["tail"].replace("\n", "\n    "))
            if args.json:
                args.json.write_text(json.dumps(sorted(rows, key=lambda r: (r["scale"], r["engine"])), indent=1))
            shutil.rmtree(work / engine, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    rows.sort(key=lambda r: (r["scale"], r["engine"]))
    print()
    print(table(rows))
    print(plot(rows, args.plot))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
