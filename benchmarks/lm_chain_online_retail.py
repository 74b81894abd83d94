"""The language-model chain on Online Retail I + II at real size, scored with EVAL.md's protocol.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/lm_chain_online_retail.py [--as-of 2011-09-01]
        [--mlm-minutes 6] [--teacher-minutes 8] [--teacher-steps 1200] [--lists-minutes 4]
        [--student-minutes 8] [--student-steps 600]
        [--seed 0] [--out .prodassoc/bench/chain] [--fresh] [--device cpu|cuda]

Trains MLM -> teacher -> student (prodassoc_core/models/chain.py) on the catalog (every product of
both files, titles only) and the baskets before --as-of, with the given time budgets; a
rerun resumes (or reuses finished stages; --fresh starts over). Then scores, on the test
window (baskets from --as-of on), every text method: the pretrained encoder, the MLM encoder,
the student, and the teacher reranking the student's top 30 — NDCG@10 etc. for all / warm /
cold products, each list padded with the most popular training products as the harness does.
Prints a table and each stage's throughput.
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

import polars as pl  # noqa: E402

from prodassoc_core.data import baskets, importers
from prodassoc_core.mining import protocol
from prodassoc_core.mining.methods import popular_products
from prodassoc_core.models import chain, encoders, training
from prodassoc_core.ops.settings import BasketConfig, TrainingConfig

FILES = ("online_retail_ii_2009_2010.parquet", "online_retail_2010_2011.parquet")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "online_retail")
    ap.add_argument("--as-of", default="2011-09-01")
    ap.add_argument("--mlm-minutes", type=float, default=6.0)
    ap.add_argument("--teacher-minutes", type=float, default=8.0)
    ap.add_argument("--lists-minutes", type=float, default=4.0, help="teacher scoring of the distillation lists")
    ap.add_argument("--student-minutes", type=float, default=8.0)
    ap.add_argument("--student-layers", type=int, default=3)
    ap.add_argument("--student-init", choices=("mlm", "base"), default="base")
    ap.add_argument("--teacher-steps", type=int, default=1200, help="the schedule's length (warm-up, decay)")
    ap.add_argument("--student-steps", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / ".prodassoc" / "bench" / "chain")
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--device", choices=("cpu", "cuda"), default=None)
    ap.add_argument("--rerank-depth", type=int, default=30)
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    paths = [args.data_dir / f for f in FILES if (args.data_dir / f).is_file()]
    if not paths:
        sys.exit(f"no Online Retail files under {args.data_dir}")
    if args.fresh and args.out.exists():
        shutil.rmtree(args.out)
    as_of = datetime.fromisoformat(args.as_of)

    lines = importers.online_retail_lines(paths)
    catalog = importers.derive_catalog(lines)
    frame = baskets.baskets(lines, BasketConfig()).collect()
    train, test = protocol.split_baskets(frame, as_of)
    print(f"catalog {catalog.height} products; {train.height} training baskets, {test.height} test baskets")

    base = TrainingConfig(seed=args.seed)
    cfg = base.model_copy(update={
        "mlm_minutes": args.mlm_minutes,
        "teacher": base.teacher.model_copy(update={"max_minutes": args.teacher_minutes, "max_steps": args.teacher_steps}),
        "student": base.student.model_copy(update={
            "max_minutes": args.student_minutes, "teacher_minutes": args.lists_minutes, "layers": args.student_layers,
            "init": args.student_init, "max_steps": args.student_steps}),
    })
    device = training.choose_device(args.device)
    print(f"device {device.describe()}, torch threads {__import__('torch').get_num_threads()}")
    result = chain.train_chain(catalog, train, as_of, cfg, device=device, out_dir=args.out, progress=False)

    test_items, train_items = test[baskets.ITEMS].to_list(), train[baskets.ITEMS].to_list()
    relevant = protocol.relevant_sets(test_items)
    warm = {i for b in train_items for i in b}
    popular = popular_products(train_items)
    queries = sorted(relevant)
    rows, timings = [], {}
    models = {
        "pretrained": encoders.resolve_pretrained(cfg.encoder),
        "mlm": result.mlm.model_dir,
        "student": result.student.model_dir,
    }
    ranked = {}
    for name, model_dir in models.items():
        t0 = time.perf_counter()
        ranked[name] = chain.text_associations(model_dir, catalog, 20, device=device, method=name, queries=queries)
        timings[name] = time.perf_counter() - t0
    t0 = time.perf_counter()
    shortlist = ranked["student"].filter(pl.col("rank") <= args.rerank_depth)
    if args.rerank_depth > 20:
        shortlist = chain.text_associations(result.student.model_dir, catalog, args.rerank_depth, device=device,
                                            method="student", queries=queries)
    ranked["teacher_reranked"] = chain.teacher_reranked(result.teacher.model_dir, catalog, shortlist, device=device,
                                                        seed=args.seed)
    timings["teacher_reranked"] = time.perf_counter() - t0
    for name, table in ranked.items():
        filled = protocol.fill_with_popular(table, relevant, popular, 10)
        scores = protocol.score_associations(filled, relevant, warm, 10)
        rows.append({"method": name, **{k: round(v, 3) if isinstance(v, float) else v for k, v in scores.items()},
                     "seconds": round(timings[name], 1)})
    table = pl.DataFrame(rows).select("method", "ndcg_all", "ndcg_warm", "ndcg_cold", "hr_all", "n_all", "n_warm",
                                      "n_cold", "seconds")
    with pl.Config(tbl_rows=20, tbl_cols=20, tbl_width_chars=200):
        print(table)
    stages = {
        "mlm": (result.mlm.examples_per_s, result.mlm.steps, result.mlm.total_steps, result.mlm.stop_reason),
        "teacher": (result.teacher.examples_per_s, result.teacher.steps, result.teacher.total_steps,
                    result.teacher.stop_reason),
        "student": (result.student.examples_per_s, result.student.steps, result.student.total_steps,
                    result.student.stop_reason),
    }
    for name, (rate, steps, total, reason) in stages.items():
        print(f"{name:<8} {rate:7.1f} examples/s  {steps}/{total} steps ({reason})  {result.seconds.get(name, 0):.0f} s")
    print("teacher validation", result.teacher.before, "->", result.teacher.after)
    print("student validation", result.student.before, "->", result.student.after)
    (args.out / "bench_results.json").write_text(json.dumps({"table": rows, "chain": chain.summary(result)}, indent=2,
                                                            default=str))


if __name__ == "__main__":
    main()
