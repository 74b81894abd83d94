"""What the nightly serves on a grocery catalog: the classic choice, the chain, the gate (issue 11, item 6).

    .venv/bin/python benchmarks/groceries_serving.py [--work DIR] [--train-minutes M] [--tiny]

Groceries (R arules; 9,835 baskets of one month of a grocery store, 169 products named by their
category, e.g. "whole milk", "rolls/buns") has no timestamps: baskets are spread evenly over 30
days in file order (``importers.basket_csv_transactions`` with an interval), so the first 21 days
train and the last 9 are the test window (EVAL.md's protocol, any catalog). Associated products
here are complements with unrelated names (soda and salty snack), the case where text similarity
does not help. Prints the harness table for popularity, count, decayed_damped (its Online Retail
parameters), auto (the classic method chosen on the tail), the chain's student/GNN/hybrid and
served (what the nightly would publish after the serving gate), and the gate's decision.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
START = date(2024, 1, 1)
AS_OF = START + timedelta(days=21)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=str(REPO / ".prodassoc" / "groceries"))
    parser.add_argument("--shared", default=os.environ.get("PRODASSOC_SHARED_DIR", str(REPO.parent / "shared")))
    parser.add_argument("--train-minutes", type=float, default=2.0, help="budget of each training stage")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny chain (minutes less, weaker)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

    from prodassoc_core.data import importers
    from prodassoc_core.evaluation import harness
    from prodassoc_core.evaluation.report import markdown_table
    from prodassoc_core.models import chain
    from prodassoc_core.ops.settings import EvaluationConfig, Settings
    from prodassoc_core.pipeline import retrain, train_summary

    data = Path(args.shared) / "data" / "groceries"
    work = Path(args.work)
    subprocess.run(["rm", "-rf", str(work)], check=True)
    baskets = sum(1 for line in (data / "groceries.csv").read_text().splitlines() if line.strip())
    interval = timedelta(days=30) / baskets
    importers.import_source(kind="basket-csv", inputs=[data / "groceries.csv"], landing_dir=work / "landing",
                            item_info=data / "groceries_iteminfo.csv", start=START, interval=interval)
    training = chain.tiny_training_config(0) if args.tiny else None
    base = Settings(data_dir=work)
    cfg = (training or base.training).model_copy(update={"seed": 0})
    if not args.tiny:
        budget = args.train_minutes
        cfg = cfg.model_copy(update={
            "mlm_minutes": budget,
            "pairs": cfg.pairs.model_copy(update={"validation_days": 5}),
            "teacher": cfg.teacher.model_copy(update={"max_minutes": budget, "max_steps": 300}),
            "student": cfg.student.model_copy(update={"max_minutes": budget, "max_steps": 200,
                                                      "teacher_minutes": budget}),
            "gnn": cfg.gnn.model_copy(update={"max_minutes": budget}),
        })
    else:
        cfg = cfg.model_copy(update={"pairs": cfg.pairs.model_copy(update={"validation_days": 5})})
    settings = base.model_copy(update={
        "training": cfg,
        "evaluation": EvaluationConfig(methods=("popularity", "count", "decayed_damped", "auto", "student", "gnn",
                                                "hybrid", "served")),
    })
    report = retrain.train_models(settings, AS_OF)
    print("gate:", train_summary.verdict(report, settings.training))
    print("\n".join(train_summary.gate_table(report)))
    split = harness.prepare(settings, AS_OF)
    rows = []
    for method in settings.evaluation.methods:
        published = harness.publish_method(settings, split, method)
        if isinstance(published, str):
            print(f"{method}: skipped: {published}")
            continue
        rows.append(harness.score_method(settings, split, method, published))
    import polars as pl

    print(markdown_table(pl.DataFrame(rows)))


if __name__ == "__main__":
    sys.exit(main())
