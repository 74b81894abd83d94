"""Stage 2 of the language-model chain: a cross-encoder teacher fine-tuned on product pairs.

    MLM model directory --load_teacher--> BertForSequenceClassification (one logit per pair)
    PairTask (pairs.py) --train_teacher--> binary cross-entropy on (anchor, other, label),
        negatives drawn afresh every epoch; validation AUC on the held-out window's pairs

The teacher reads both products' texts together ("[CLS] a [SEP] b [SEP]"), so it can weigh
word against word; that makes it too slow to score every pair of a catalog, and it is used to
rerank a shortlist (``rerank``) and to teach the bi-encoder student (student.py).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from prodassoc_core.data import ASSOCIATED_PRODUCT_ID, PRODUCT_ID
from prodassoc_core.models.pairs import PairTask, auc, examples, validation_examples
from prodassoc_core.models.training import (
    Deadline,
    Device,
    LoopConfig,
    StageResult,
    TrainState,
    derive_seed,
    quiet_transformers,
    run_stage,
    set_seed,
)
from prodassoc_core.ops import TrainingConfig

logger = logging.getLogger("prodassoc.teacher")

STAGE = "teacher"


def load_teacher(model_dir: str | Path, *, seed: int):
    """``(model, tokenizer)``: a sequence classifier with one output over the encoder in
    ``model_dir``; the classification head is initialised from ``seed``."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    set_seed(seed)
    with quiet_transformers():
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    return model, tokenizer


def fit_length(model, max_length: int) -> int:
    """``max_length`` capped at the model's position embeddings."""
    return min(max_length, model.config.max_position_embeddings)


def pair_batch(tokenizer, texts: Sequence[str], rows: np.ndarray, max_length: int) -> dict[str, torch.Tensor]:
    """Tokenised pairs for rows of (anchor, other[, label]) product indices."""
    batch = tokenizer(
        [texts[a] for a in rows[:, 0]], [texts[b] for b in rows[:, 1]],
        truncation=True, max_length=max_length, padding=True, return_tensors="pt",
    )
    out = dict(batch)
    if rows.shape[1] > 2:
        out["labels"] = torch.as_tensor(rows[:, 2], dtype=torch.float32)
    return out


def pair_logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return model(**inputs).logits.squeeze(-1).float()


def bce_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(pair_logits(model, batch), batch["labels"])


@torch.no_grad()
def score_pairs(
    model, tokenizer, texts: Sequence[str], pairs: np.ndarray, *, device: Device, batch_size: int = 128,
    max_length: int = 64,
) -> np.ndarray:
    """Teacher logits of (anchor, other) index pairs, in order; restores the model's mode."""
    was_training = model.training
    model.eval()
    model.to(device.torch_device)
    max_length = fit_length(model, max_length)
    out = np.zeros(len(pairs), dtype=np.float32)
    for start in range(0, len(pairs), batch_size):
        rows = pairs[start : start + batch_size, :2]
        batch = {k: v.to(device.torch_device) for k, v in pair_batch(tokenizer, texts, rows, max_length).items()}
        with device.autocast():
            out[start : start + len(rows)] = pair_logits(model, batch).cpu().numpy()
    model.train(was_training)
    return out


def epoch_batches(task: PairTask, cfg: TrainingConfig, tokenizer, max_length: int) -> tuple[Callable[[int], dict], int]:
    """``(batch_at, steps_per_epoch)``: each epoch visits the positives in a permutation seeded
    by (seed, epoch); a step's negatives are drawn afresh from (seed, epoch, step), so every
    epoch sees new negatives and a resumed run rebuilds the same batches."""
    per_example = 1 + cfg.pairs.hard_negatives + cfg.pairs.popular_negatives + cfg.pairs.random_negatives
    positives_per_step = max(1, cfg.teacher.batch_size // per_example)
    per_epoch = math.ceil(len(task.positives) / positives_per_step)
    orders: dict[int, np.ndarray] = {}

    def batch_at(step: int) -> dict[str, torch.Tensor]:
        epoch, i = divmod(step, per_epoch)
        if epoch not in orders:
            orders.clear()
            orders[epoch] = np.random.default_rng(derive_seed(cfg.seed, STAGE, "order", epoch)).permutation(
                len(task.positives))
        chosen = task.positives[orders[epoch][i * positives_per_step : (i + 1) * positives_per_step]]
        rng = np.random.default_rng(derive_seed(cfg.seed, STAGE, "negatives", epoch, i))
        return pair_batch(tokenizer, task.texts, examples(task, cfg.pairs, rng, chosen), max_length)

    return batch_at, per_epoch


def train_teacher(
    task: PairTask, init_dir: Path, cfg: TrainingConfig, *, device: Device, out_dir: Path,
    on_step: Callable[[TrainState], None] | None = None, progress: bool = True, deadline: Deadline | None = None,
    started: float | None = None,
) -> StageResult:
    """Fine-tune the cross-encoder on ``task`` starting from ``init_dir`` (the MLM model);
    resumes from ``out_dir``'s newest checkpoint. Validation: AUC and loss on the held-out
    window's positives (at most ``teacher.max_validation_pairs``, seeded) against sampled
    negatives, the same rows before and after. ``deadline`` (default: ``teacher.max_minutes``
    from now) bounds all of it; ``started``: when the stage began, if before this call."""
    if cfg.seed is None:
        raise ValueError("training.seed is required")
    started = time.monotonic() if started is None else started
    t = cfg.teacher
    deadline = deadline or Deadline.minutes(t.max_minutes)
    model, tokenizer = load_teacher(init_dir, seed=derive_seed(cfg.seed, STAGE, "init"))
    held = validation_examples(task, cfg.pairs, derive_seed(cfg.seed, STAGE, "validation"), t.max_validation_pairs)
    batch_at, per_epoch = epoch_batches(task, cfg, tokenizer, fit_length(model, t.max_length))
    total = t.max_steps or max(1, math.ceil(t.epochs * per_epoch))

    def evaluate() -> dict[str, float]:
        if not len(held):
            return {}
        logits = score_pairs(model, tokenizer, task.texts, held, device=device, batch_size=t.eval_batch_size,
                             max_length=t.max_length)
        labels = held[:, 2].astype(np.float32)
        loss = float(F.binary_cross_entropy_with_logits(torch.from_numpy(logits), torch.from_numpy(labels)))
        return {"val_auc": auc(logits, labels), "val_loss": loss, "val_pairs": float(len(held))}

    run_config = {
        "stage": STAGE, "seed": cfg.seed, "init_dir": str(init_dir), "pairs": cfg.pairs.model_dump(mode="json"),
        "teacher": t.model_dump(mode="json"), "task": task.summary(), "total_steps": total,
    }
    loop = LoopConfig(total_steps=total, checkpoint_every=t.checkpoint_every, grad_clip=t.grad_clip, progress=progress,
                      progress_seconds=cfg.progress_seconds)
    result = run_stage(
        model, tokenizer, stage=STAGE, out_dir=out_dir, run_config=run_config,
        may_differ={"teacher.max_minutes", "teacher.checkpoint_every", "teacher.keep_checkpoints",
                    "teacher.eval_batch_size", "teacher.registered_model"},
        total=total, learning_rate=t.learning_rate, weight_decay=t.weight_decay, warmup_fraction=t.warmup_fraction,
        loop=loop, batch_at=batch_at, loss_fn=bce_loss, evaluate=evaluate, device=device, seed=cfg.seed,
        deadline=deadline, started=started, on_step=on_step,
    )
    result.extra["task"] = task.summary()
    return result


def rerank(
    model, tokenizer, texts: Sequence[str], product_ids: Sequence[str], shortlist: pl.DataFrame, *,
    device: Device, batch_size: int = 128, max_length: int = 64,
) -> pl.DataFrame:
    """Reorder each product's shortlist (product_id, associated_product_id) by teacher logit.

    Returns product_id, associated_product_id, rank, score (the logit), method "teacher"."""
    index = {p: i for i, p in enumerate(product_ids)}
    pairs = np.array(
        [(index[a], index[b]) for a, b in shortlist.select(PRODUCT_ID, ASSOCIATED_PRODUCT_ID).iter_rows()],
        dtype=np.int64,
    ).reshape(-1, 2)
    logits = score_pairs(model, tokenizer, texts, pairs, device=device, batch_size=batch_size, max_length=max_length)
    return (
        shortlist.select(PRODUCT_ID, ASSOCIATED_PRODUCT_ID)
        .with_columns(score=pl.Series(logits.astype(np.float64)))
        .sort([PRODUCT_ID, "score", ASSOCIATED_PRODUCT_ID], descending=[False, True, False])
        .with_columns(rank=pl.int_range(1, pl.len() + 1, dtype=pl.Int32).over(PRODUCT_ID), method=pl.lit(STAGE))
        .select(PRODUCT_ID, ASSOCIATED_PRODUCT_ID, "rank", "score", "method")
    )
