"""The product graph and the link-prediction GNN on Online Retail I + II, scored with EVAL.md's protocol.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/gnn_online_retail.py [--as-of 2011-09-01]
        [--vectors PATH.npy] [--minutes 8] [--seed 0] [--out .prodassoc/bench/gnn] [--fresh]
        [--device cpu|cuda] [--gnn '{"cold_share": 0.1}'] [--graph '{"text_k": 10}']

Catalog: every product of both files; training baskets before --as-of, test baskets from it
on. Node features: ``--vectors`` (an [n_catalog, d] .npy aligned with the catalog's row
order, e.g. the student's embeddings) or the packaged pretrained all-MiniLM-L6-v2 embeddings
of the titles (computed once, cached under --out). The GNN trains on the graph of the
training window's fit part (``pairs.build_task``'s cut: the last 30 days are its validation)
within --minutes, resuming from --out's checkpoint (--fresh starts over).

Scored on the test window, each list padded with the most popular training products:
* gnn (fit graph): embeddings over the graph the model was validated on;
* gnn (training graph): the same model over the graph of the whole training window (the
  graph is rebuilt, inductively, with the last 30 days' co-purchases; nothing after --as-of);
* the node features' own cosine (text) and co-occurrence count, for reference.
Prints a table and per-stage timings; writes --out/bench_results.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from prodassoc_core.data import baskets, importers
from prodassoc_core.mining import protocol
from prodassoc_core.mining.methods import method_associations, popular_products
from prodassoc_core.models import chain, embeddings, encoders, gnn, graph, mlm, pairs, training
from prodassoc_core.ops.settings import BasketConfig, TrainingConfig

FILES = ("online_retail_ii_2009_2010.parquet", "online_retail_2010_2011.parquet")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "online_retail")
    ap.add_argument("--as-of", default="2011-09-01")
    ap.add_argument("--vectors", type=Path, default=None, help=".npy [n_catalog, d], catalog row order")
    ap.add_argument("--minutes", type=float, default=8.0, help="GNN training budget")
    ap.add_argument("--max-epochs", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / ".prodassoc" / "bench" / "gnn")
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--device", choices=("cpu", "cuda"), default=None)
    ap.add_argument("--gnn", default="{}", help="JSON overrides of GnnConfig")
    ap.add_argument("--graph", default="{}", help="JSON overrides of GraphConfig")
    return ap.parse_args()


def score(table: pl.DataFrame, relevant: dict, popular: list[str], warm: set[str]) -> dict:
    filled = protocol.fill_with_popular(table, relevant, popular, 10)
    return protocol.score_associations(filled, relevant, warm, 10)


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    paths = [args.data_dir / f for f in FILES if (args.data_dir / f).is_file()]
    if not paths:
        sys.exit(f"no Online Retail files under {args.data_dir}")
    if args.fresh and args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    as_of = datetime.fromisoformat(args.as_of)
    device = training.choose_device(args.device)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    lines = importers.online_retail_lines(paths)
    catalog = importers.derive_catalog(lines)
    frame = baskets.baskets(lines, BasketConfig()).collect()
    train, test = protocol.split_baskets(frame, as_of)
    ids = catalog["product_id"].to_list()
    timings["load"] = time.perf_counter() - t0
    print(f"catalog {catalog.height} products; {train.height} training baskets, {test.height} test baskets; "
          f"device {device.describe()}, torch threads {__import__('torch').get_num_threads()}")

    t0 = time.perf_counter()
    if args.vectors is not None:
        vectors, source = np.load(args.vectors).astype(np.float32), str(args.vectors)
        if vectors.shape[0] != catalog.height:
            sys.exit(f"{args.vectors}: {vectors.shape[0]} rows for {catalog.height} catalog products")
    else:
        cache = args.out / "pretrained_vectors.npy"
        source = "pretrained all-MiniLM-L6-v2"
        if cache.is_file() and np.load(cache, mmap_mode="r").shape[0] == catalog.height:
            vectors = np.load(cache)
        else:
            model_dir = encoders.resolve_pretrained(TrainingConfig().encoder)
            vectors = chain.catalog_vectors(model_dir, catalog, device=device)
            np.save(cache, vectors)
    timings["vectors"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    pair_cfg = TrainingConfig().pairs
    task = pairs.build_task(catalog, mlm.catalog_texts(catalog), train, as_of, pair_cfg)
    timings["pairs"] = time.perf_counter() - t0
    print("task", task.summary())

    graph_cfg = graph.GraphConfig(**json.loads(args.graph))
    t0 = time.perf_counter()
    fit_graph = graph.fit_window_graph(ids, train, as_of, pair_cfg.validation_days, vectors, graph_cfg)
    timings["graph"] = time.perf_counter() - t0
    print("fit graph", fit_graph.summary(), f"{timings['graph']:.1f} s")

    gnn_cfg = gnn.GnnConfig(**{"seed": args.seed, "max_minutes": args.minutes, "max_epochs": args.max_epochs,
                               **json.loads(args.gnn)})
    t0 = time.perf_counter()
    result = gnn.train_gnn(fit_graph, task, gnn_cfg, device=device, out_dir=args.out)
    timings["train"] = time.perf_counter() - t0
    print(f"gnn: {result.epochs} epochs ({result.stop_reason}), best epoch {result.best_epoch}, "
          f"val ndcg {result.before.get('val_ndcg', float('nan')):.4f} -> {result.best_val_ndcg:.4f}, "
          f"{result.edges_per_s:.0f} scored pairs/s, {result.train_seconds:.0f} s training")

    test_items, train_items = test[baskets.ITEMS].to_list(), train[baskets.ITEMS].to_list()
    relevant = protocol.relevant_sets(test_items)
    warm = {i for b in train_items for i in b}
    popular = popular_products(train_items)
    queries = sorted(relevant)
    model, _ = gnn.load_gnn(result.model_dir)

    ranked: dict[str, pl.DataFrame] = {}
    t0 = time.perf_counter()
    emb = gnn.node_embeddings(model, fit_graph, device)
    ranked["gnn (fit graph)"] = gnn.gnn_associations(ids, emb, 10, queries=queries)
    timings["score gnn (fit graph)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    train_graph = graph.build_graph(ids, train_items, vectors, graph_cfg)
    emb = gnn.node_embeddings(model, train_graph, device)
    ranked["gnn (training graph)"] = gnn.gnn_associations(ids, emb, 10, queries=queries)
    timings["score gnn (training graph, incl. graph)"] = time.perf_counter() - t0
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    ranked["node features (text cosine)"] = embeddings.top_k_similar(ids, unit, 10, queries=queries)
    ranked["count"] = method_associations("count", train, as_of, 10)

    rows = []
    for name, table in ranked.items():
        s = score(table, relevant, popular, warm)
        rows.append({"method": name, **{k: round(v, 3) if isinstance(v, float) else v for k, v in s.items()}})
    out = pl.DataFrame(rows).select("method", "ndcg_all", "ndcg_warm", "ndcg_cold", "hr_all", "recall_all", "n_all",
                                    "n_warm", "n_cold")
    with pl.Config(tbl_rows=20, tbl_cols=20, tbl_width_chars=200):
        print(out)
    for name, seconds in timings.items():
        print(f"{name:<42} {seconds:8.1f} s")
    (args.out / "bench_results.json").write_text(json.dumps({
        "as_of": args.as_of, "features": source, "table": rows, "timings": timings, "task": task.summary(),
        "fit_graph": fit_graph.summary(), "train_graph": train_graph.summary(), "gnn": result.summary(),
        "gnn_config": gnn_cfg.model_dump(), "graph_config": graph_cfg.model_dump(),
    }, indent=2, default=str))


if __name__ == "__main__":
    main()
