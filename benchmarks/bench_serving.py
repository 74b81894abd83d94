"""Cost of serving: the nightly with a served model chain at growing catalog sizes (issue 11, item 5).

    .venv/bin/python benchmarks/bench_serving.py [--sizes 5000,50000,200000] [--work DIR]

For each size N: a synthetic retailer (N products with titles, categories and Zipf popularity;
2·N baskets of 3-10 items drawn mostly within one category, over 120 days) is imported as
canonical files, and the nightly runs twice in fresh processes: classic (no models: the peer)
and with a tiny chain served by hand (trained once on the smallest size, the same registry for
every size: the student and the GNN are inductive, they embed any catalog). Printed per size and
mode: wall seconds, peak RSS of the process (``/usr/bin/time -v``), the association stage's
seconds, and the with-models / classic ratios. Peak memory must grow at most linearly with N
(nothing product x product is dense): the last column divides peak RSS by N.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
AS_OF = date(2024, 5, 1)
WORDS = ("red", "blue", "green", "small", "large", "organic", "classic", "fresh", "vintage", "deluxe", "mini",
         "family", "spicy", "sweet", "light", "dark", "wooden", "glass", "paper", "metal")
NOUNS = ("cup", "plate", "bag", "candle", "bread", "butter", "cheese", "jam", "tea", "coffee", "soap", "towel",
         "lamp", "card", "box", "bottle", "sauce", "rice", "pasta", "juice", "cookie", "apple", "milk", "yogurt")


def synthetic(n_products: int, out: Path, seed: int = 0) -> tuple[Path, Path]:
    """(transactions.parquet, catalog.parquet) of a synthetic retailer with ``n_products``."""
    rng = np.random.default_rng(seed)
    n_categories = max(10, n_products // 200)
    category = rng.integers(0, n_categories, n_products)
    ids = np.array([f"P{i:07d}" for i in range(n_products)])
    titles = [f"{WORDS[rng.integers(len(WORDS))]} {WORDS[rng.integers(len(WORDS))]} {NOUNS[c % len(NOUNS)]} {i}"
              for i, c in enumerate(category)]
    popularity = 1.0 / np.arange(1, n_products + 1) ** 0.9
    rng.shuffle(popularity)
    members = [np.flatnonzero(category == c) for c in range(n_categories)]
    weights = [popularity[m] / popularity[m].sum() for m in members]
    global_p = popularity / popularity.sum()
    n_baskets = 2 * n_products
    order, product, when = [], [], []
    start = datetime.combine(AS_OF, datetime.min.time()) - timedelta(days=120)
    for b in range(n_baskets):
        c = int(rng.integers(n_categories))
        size = int(rng.integers(3, 11))
        own = rng.choice(members[c], size=min(size, len(members[c])), replace=False, p=weights[c])
        other = rng.choice(n_products, size=2, p=global_p)
        items = np.unique(np.concatenate([own, other]))
        order += [f"o{b:08d}"] * len(items)
        product += ids[items].tolist()
        when += [start + timedelta(seconds=int(rng.integers(0, 120 * 86400 - 1)))] * len(items)
    out.mkdir(parents=True, exist_ok=True)
    tx, cat = out / "transactions.parquet", out / "catalog.parquet"
    pq.write_table(pa.table({
        "order_id": order, "product_id": product, "quantity": np.ones(len(order), dtype=np.int64),
        "unit_price": np.full(len(order), 2.5), "customer_id": [None] * len(order),
        "ordered_at": pa.array(when, pa.timestamp("us")),
    }), tx)
    pq.write_table(pa.table({"product_id": ids, "title": titles,
                             "category": [f"cat{c}" for c in category]}), cat)
    return tx, cat


def env(extra: dict[str, str] | None = None) -> dict[str, str]:
    e = dict(os.environ, PREFECT_SERVER_ANALYTICS_ENABLED="false", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1",
             HF_HUB_OFFLINE="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    e.update(extra or {})
    return e


def timed_run(args: list[str], extra_env: dict[str, str] | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS in GB) of one command in a fresh process."""
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *args], env=env(extra_env), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(args)}\n{proc.stderr[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    return wall, rss_kb / 1e6


def stage_seconds(data_dir: Path, tracking_uri: str) -> float:
    """The association stage's seconds of the latest nightly MLflow run of ``data_dir``."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(experiment_names=["prodassoc-nightly"], order_by=["start_time DESC"], max_results=1)
    return float(runs["metrics.seconds_product_associations"].iloc[0])


def train_tiny(data_dir: Path) -> None:
    """The tiny chain on the smallest size, served by hand for both segments."""
    code = f"""
from datetime import date
from pathlib import Path
from prodassoc_core.models import chain, serving
from prodassoc_core.pipeline import retrain
from prodassoc_core.ops.settings import Settings
s = Settings(data_dir=Path({str(data_dir)!r}), training=chain.tiny_training_config(0))
r = retrain.train_models(s, date.fromisoformat({AS_OF.isoformat()!r}))
serving.promote(s, r.versions["student"], {{"warm": "hybrid", "cold": "hybrid"}}, "benchmark")
"""
    subprocess.run([sys.executable, "-c", code], env=env(), check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="5000,50000,200000", help="catalog sizes, comma separated")
    parser.add_argument("--work", default=str(REPO / ".prodassoc" / "bench_serving"), help="scratch directory")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(args.work)
    prodassoc = str(BIN / "prodassoc")
    registry_dir = work / f"n{sizes[0]}-models"
    rows = []
    for i, n in enumerate(sizes):
        tx, cat = synthetic(n, work / f"src-{n}")
        for mode in ("classic", "models"):
            data = work / f"n{n}-{mode}"
            if mode == "models" and i == 0:
                data = registry_dir
            subprocess.run(["rm", "-rf", str(data)], check=True)
            subprocess.run([prodassoc, "--data-dir", str(data), "import", "canonical", str(tx), "--catalog", str(cat)],
                           env=env(), check=True, capture_output=True)
            tracking = f"sqlite:///{(data / 'mlflow.db').resolve()}"
            extra = {}
            if mode == "models":
                if i == 0:
                    train_tiny(registry_dir)
                tracking = f"sqlite:///{(registry_dir / 'mlflow.db').resolve()}"
                extra = {"PRODASSOC_MLFLOW_TRACKING_URI": tracking}
            wall, rss = timed_run([prodassoc, "--data-dir", str(data), "run", "--as-of", AS_OF.isoformat()], extra)
            if mode == "models":
                served = json.loads((data / "runs" / f"as_of={AS_OF.isoformat()}" / "serving.json").read_text())
                assert served["student_model"], f"no model was served at {n}: {served['reason']}"
            rows.append((n, mode, wall, rss, stage_seconds(data, tracking)))
            print(f"  n={n:,} {mode}: {wall:.1f} s, peak RSS {rss:.2f} GB", flush=True)
    print("\n| products | mode | wall s | peak RSS GB | associate s | wall / classic | RSS / classic | RSS MB per 1k products |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    by = {(n, m): (w, r, a) for n, m, w, r, a in rows}
    for n, mode, wall, rss, assoc in rows:
        cw, cr, _ = by[(n, "classic")]
        print(f"| {n:,} | {mode} | {wall:.1f} | {rss:.2f} | {assoc:.1f} | {wall / cw:.2f} | {rss / cr:.2f} | "
              f"{rss * 1e6 / n:.1f} |")


if __name__ == "__main__":
    main()
