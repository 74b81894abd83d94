"""What tests/models/test_ddp.py runs on each rank (``torchrun --nproc_per_node=2``) and, for the
one-process reference (its ``compare`` run only), in the test's own process (``main(out,
reference=True)``; ``--no-ddp`` from a shell): tiny MLM runs on the shipped sample.

    python tests/models/ddp_worker.py OUT_DIR [--no-ddp]

Writes ``OUT_DIR/losses.json`` (rank 0, or the one process):
  compare:  the per-step training losses of a dropout-free run of STEPS steps (the DDP/one-process
            comparison: without dropout the two do the same arithmetic up to summation order);
  full:     the losses of an uninterrupted run with dropout (every rank its own dropout stream);
  resumed:  the same run stopped after STOP_AT steps (its checkpoint) and resumed to the end.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

SEED, STEPS, STOP_AT = 7, 16, 8
REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample" / "online_retail_sample.parquet"


class Stop(Exception):
    pass


def main(out: Path, reference: bool = False) -> None:
    """``reference``: the one-process run the DDP run is compared with (``compare`` only)."""
    torch.set_num_threads(1)
    from prodassoc_core.data import importers
    from prodassoc_core.models import encoders, mlm, training

    device = training.choose_device("cpu")
    catalog = importers.derive_catalog(importers.online_retail_lines(SAMPLE))
    train, held = mlm.split_heldout(catalog["product_id"].to_list(), mlm.catalog_texts(catalog), 0.1, SEED)
    cfg = mlm.tiny_config(SEED, max_steps=STEPS, checkpoint_every=STOP_AT, max_heldout_texts=64)

    def model_for(run_dir: Path, dropout: bool):
        latest = training.latest_checkpoint(run_dir / mlm.CHECKPOINTS)
        if latest is not None:
            from transformers import AutoModelForMaskedLM, AutoTokenizer

            return (AutoModelForMaskedLM.from_pretrained(latest / training.MODEL_SUBDIR),
                    AutoTokenizer.from_pretrained(latest / training.MODEL_SUBDIR))
        model, tokenizer = encoders.load_encoder_for_mlm(cfg.encoder, train, seed=SEED)
        if not dropout:
            model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
            for module in model.modules():
                if isinstance(module, torch.nn.Dropout):
                    module.p = 0.0
        return model, tokenizer

    def run(name: str, dropout: bool, on_step=None) -> mlm.MlmResult:
        model, tokenizer = model_for(out / name, dropout)
        return mlm.train_mlm(model, tokenizer, train, held, cfg, device=device, out_dir=out / name,
                             on_step=on_step, progress=False)

    compare = run("compare", dropout=False)
    if reference:
        (out / "losses.json").write_text(json.dumps({
            "world_size": training.world_size(), "compare": compare.train_losses,
            "loss_after": {"compare": compare.loss_after},
        }, indent=2))
        return
    full = run("full", dropout=True)

    def stop(state: training.TrainState) -> None:
        if state.step == STOP_AT:
            raise Stop

    try:
        run("resumed", dropout=True, on_step=stop)
        raise AssertionError("the run was not stopped")
    except Stop:
        pass
    resumed = run("resumed", dropout=True)
    if training.is_main_process():
        (out / "losses.json").write_text(json.dumps({
            "world_size": training.world_size(), "compare": compare.train_losses, "full": full.train_losses,
            "resumed": resumed.train_losses, "resumed_from": resumed.resumed_from,
            "checkpoint_writers": sorted(p.name for p in (out / "full" / mlm.CHECKPOINTS).iterdir()),
            "loss_after": {"compare": compare.loss_after, "full": full.loss_after, "resumed": resumed.loss_after},
        }, indent=2))


if __name__ == "__main__":
    if "--no-ddp" in sys.argv:
        for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
            os.environ.pop(key, None)
    main(Path(sys.argv[1]), reference="--no-ddp" in sys.argv)
