"""Stage 3 of the language-model chain: distil the cross-encoder teacher into a bi-encoder student.

    MLM (or base) encoder --make_student--> its first ``layers`` layers, mean-pooled (BertModel)
    PairTask + teacher --teacher_lists--> per anchor: [positive, negatives...] and the teacher's
                                          logits of each (anchor, candidate); cached on disk
    lists --train_student--> KL(teacher || student) at temperature T, plus the hard-label
                             cross-entropy against the list and the batch's other candidates
    student --embed_texts (embeddings.py)--> one unit vector per catalog product, sold or not

Validation is the evaluation protocol on the training window's held-out tail: NDCG@10 of each
validation anchor's 10 nearest products against its associated products there.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from prodassoc_core.mining import score_associations
from prodassoc_core.models import embeddings
from prodassoc_core.models.pairs import PairTask
from prodassoc_core.models.teacher import score_pairs
from prodassoc_core.models.training import (
    Deadline,
    Device,
    LoopConfig,
    Progress,
    StageResult,
    TrainState,
    broadcast_int,
    derive_seed,
    is_main_process,
    quiet_transformers,
    rank,
    run_stage,
    set_seed,
    wait_for_everyone,
    world_size,
)
from prodassoc_core.ops import TrainingConfig

logger = logging.getLogger("prodassoc.student")

STAGE = "student"
LISTS_FILE = "teacher_lists.npz"


def make_student(source_dir: str | Path, layers: int, *, seed: int):
    """``(BertModel, tokenizer)``: the encoder in ``source_dir`` cut to its first ``layers``
    layers (the DistilBERT-style initialisation); parts absent from it come from ``seed``."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source_dir)
    set_seed(seed)
    with quiet_transformers():
        model = AutoModel.from_pretrained(source_dir)
    model.config.max_position_embeddings = model.embeddings.position_embeddings.num_embeddings
    if layers < model.config.num_hidden_layers:
        model.encoder.layer = model.encoder.layer[:layers]
        model.config.num_hidden_layers = layers
    return model, tokenizer


LIST_CHUNK = 256  # lists scored per teacher call


def teacher_lists(
    task: PairTask, cfg: TrainingConfig, teacher, tokenizer, *, device: Device, out_dir: Path,
    deadline: Deadline | None = None, progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """``(lists [m, L], logits [m, L])``: for each positive (random orientation, seeded order)
    the anchor's candidates [positive, negatives...] and the teacher's logits.

    Scoring stops after ``student.max_lists`` lists, or when ``deadline`` would pass during
    the next chunk of ``LIST_CHUNK`` lists (at least one chunk is scored); anchors with too
    few negatives are skipped. The result is cached in ``out_dir/teacher_lists.npz`` (a resume
    reuses it)."""
    cache = out_dir / LISTS_FILE
    cached = bool(broadcast_int(int(cache.is_file())))  # rank 0's view under torchrun, before it writes
    if not cached and not is_main_process():
        wait_for_everyone()  # under torchrun rank 0 scores the lists (its deadline) and the others read them
        cached = True
    if cached:
        saved = np.load(cache)
        return saved["lists"], saved["logits"]
    deadline = deadline or Deadline()
    p, s = cfg.pairs, cfg.student
    width = 1 + p.hard_negatives + p.popular_negatives + p.random_negatives
    rng = np.random.default_rng(derive_seed(cfg.seed, STAGE, "lists"))
    limit = min(s.max_lists or len(task.positives), len(task.positives))
    started = time.monotonic()
    order = iter(rng.permutation(len(task.positives)))
    lists: list[list[int]] = []
    logits: list[np.ndarray] = []
    bar = Progress("student: teacher lists", limit, bar=progress, every_s=cfg.progress_seconds, deadline=deadline,
                   unit="list", log=logger)
    stop = "completed"
    try:
        while len(lists) < limit:
            chunk: list[list[int]] = []
            for k in order:
                a, b = task.positives[k] if rng.random() < 0.5 else task.positives[k][::-1]
                row = [int(b), *task.space.negatives(int(a), p, rng)]
                if len(row) == width:
                    chunk.append([int(a), *row])
                if len(chunk) == min(LIST_CHUNK, limit - len(lists)):
                    break
            if not chunk:
                break  # every positive visited
            logits.append(_score_rows(chunk, task, cfg, teacher, tokenizer, device))
            lists += chunk
            bar.update(len(chunk), len(chunk) * width)
            per_chunk = (time.monotonic() - started) / len(logits)
            if len(lists) < limit and deadline.remaining() < per_chunk:
                stop = "budget"
                break
    finally:
        bar.close()
    table = np.array(lists, dtype=np.int64).reshape(-1, width + 1)
    scores = np.concatenate(logits).reshape(-1, width) if logits else np.zeros((0, width), dtype=np.float32)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez(cache, lists=table, logits=scores)
    wait_for_everyone()
    logger.info("student: %d of %d teacher lists of %d candidates in %.0f s (%s)", len(table), limit, width,
                time.monotonic() - started, stop)
    return table, scores


def _score_rows(rows, task, cfg, teacher, tokenizer, device) -> np.ndarray:
    arr = np.array(rows, dtype=np.int64)
    pairs = np.stack([np.repeat(arr[:, 0], arr.shape[1] - 1), arr[:, 1:].ravel()], axis=1)
    return score_pairs(teacher, tokenizer, task.texts, pairs, device=device, batch_size=cfg.teacher.eval_batch_size,
                       max_length=cfg.teacher.max_length).reshape(len(arr), -1)


def distillation_loss(
    student_scores: torch.Tensor, teacher_scores: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T² · KL(softmax(teacher / T) || softmax(student / T)), mean over lists ([B, L] each)."""
    target = F.softmax(teacher_scores / temperature, dim=-1)
    return F.kl_div(F.log_softmax(student_scores / temperature, dim=-1), target, reduction="batchmean") * temperature**2


def make_loss(cfg: TrainingConfig) -> Callable[[torch.nn.Module, dict], torch.Tensor]:
    s = cfg.student

    def loss_fn(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        n, width = batch["candidates"].shape
        ea = embeddings.encode(model, {"input_ids": batch["a_input_ids"], "attention_mask": batch["a_attention_mask"]})
        ec = embeddings.encode(model, {"input_ids": batch["c_input_ids"], "attention_mask": batch["c_attention_mask"]})
        ec = ec[batch["c_index"]]  # [n * width, d], one row per list slot
        all_scores = ea @ ec.T * s.scale  # [n, n * width]
        own = all_scores.view(n, n, width)[torch.arange(n), torch.arange(n)]  # [n, width]
        # Hard labels: the positive (slot 0 of its own list) against every candidate in the batch,
        # except copies of the anchor itself and of its positive in other lists.
        flat = batch["candidates"].reshape(-1)
        target = torch.arange(n, device=flat.device) * width
        clash = (flat[None, :] == batch["anchors"][:, None]) | (flat[None, :] == batch["candidates"][:, :1])
        clash[torch.arange(n), target] = False
        hard = F.cross_entropy(all_scores.masked_fill(clash, float("-inf")), target)
        kl = distillation_loss(own, batch["teacher"], s.temperature)
        return hard + s.kl_weight * kl

    return loss_fn


def list_batches(
    lists: np.ndarray, logits: np.ndarray, texts: list[str], cfg: TrainingConfig, tokenizer, max_length: int
) -> tuple[Callable[[int], dict], int]:
    """``(batch_at, steps_per_epoch)``: lists in a permutation seeded by (seed, epoch); each
    distinct text of a batch is tokenised once.

    Under torchrun each rank's ``batch_at`` returns its contiguous slice of the step's lists
    (``shards_itself``): the hard-label loss then ranks against the candidates of that slice,
    not of the global batch, as usual for in-batch negatives under DDP."""
    s = cfg.student
    rank_, world = rank(), world_size()
    per_epoch = math.ceil(len(lists) / s.batch_size)
    orders: dict[int, np.ndarray] = {}

    def tok(ids: np.ndarray, prefix: str) -> dict[str, torch.Tensor]:
        enc = tokenizer([texts[i] for i in ids], truncation=True, max_length=max_length, padding=True,
                        return_tensors="pt")
        return {f"{prefix}input_ids": enc["input_ids"], f"{prefix}attention_mask": enc["attention_mask"]}

    def batch_at(step: int) -> dict[str, torch.Tensor]:
        epoch, i = divmod(step, per_epoch)
        if epoch not in orders:
            orders.clear()
            orders[epoch] = np.random.default_rng(derive_seed(cfg.seed, STAGE, "order", epoch)).permutation(len(lists))
        chosen = orders[epoch][i * s.batch_size : (i + 1) * s.batch_size]
        if world > 1:
            chosen = np.array_split(chosen, world)[rank_]
        rows, teacher = lists[chosen], logits[chosen]
        unique, inverse = np.unique(rows[:, 1:], return_inverse=True)
        return {
            **tok(rows[:, 0], "a_"),
            **tok(unique, "c_"),
            "c_index": torch.as_tensor(inverse.reshape(-1), dtype=torch.long),
            "anchors": torch.as_tensor(rows[:, 0]),
            "candidates": torch.as_tensor(rows[:, 1:]),
            "teacher": torch.as_tensor(teacher, dtype=torch.float32),
        }

    batch_at.shards_itself = world > 1  # type: ignore[attr-defined]
    return batch_at, per_epoch


def validation_sample(
    task: PairTask, seed: int, max_anchors: int, max_products: int
) -> tuple[list[int], dict[str, set[str]]]:
    """What the student is validated on, the same before and after training: at most
    ``max_anchors`` held-out anchors (seeded) ranked among at most ``max_products`` products
    (the anchors and a seeded sample of the others; every product when they fit), each
    anchor's relevant products restricted to those (anchors left without any are dropped).
    Its cost is bounded at any catalog size; on a sample the scores are a proxy to compare
    before with after, not the harness's figures. Returns (product indices, sorted; relevance)."""
    n = len(task.space.product_ids)
    rng = np.random.default_rng(derive_seed(seed, STAGE, "validation"))
    anchors = sorted(task.validation)
    if len(anchors) > max_anchors:
        anchors = [anchors[i] for i in sorted(rng.choice(len(anchors), size=max_anchors, replace=False))]
    if n <= max_products:
        return list(range(n)), {a: task.validation[a] for a in anchors}
    index = task.space.index
    keep = {index[a] for a in anchors}
    rest = np.setdiff1d(np.arange(n), np.fromiter(keep, dtype=np.int64, count=len(keep)))
    keep |= set(rng.choice(rest, size=min(max(0, max_products - len(keep)), len(rest)), replace=False).tolist())
    ids = {task.space.product_ids[i] for i in keep}
    relevant = {a: task.validation[a] & ids for a in anchors}
    return sorted(keep), {a: qs for a, qs in relevant.items() if qs}


def validation_ndcg(model, tokenizer, task: PairTask, cfg: TrainingConfig, device: Device, k: int = 10,
                    sample: tuple[list[int], dict[str, set[str]]] | None = None) -> dict[str, float]:
    """NDCG@k (and HR, recall) of the student's nearest products on the held-out window:
    ``sample`` (``validation_sample``; default: every anchor among every product)."""
    if not task.validation:
        return {}
    products, relevant = sample or (list(range(len(task.texts))), task.validation)
    vectors = embeddings.embed_texts(model, tokenizer, [task.texts[i] for i in products], device=device,
                                     batch_size=cfg.student.embed_batch_size,
                                     max_length=min(cfg.student.max_length, model.config.max_position_embeddings))
    ids = [task.space.product_ids[i] for i in products]
    ranked = embeddings.top_k_similar(ids, vectors, k, queries=sorted(relevant))
    scores = score_associations(ranked, relevant, set(relevant), k)
    return {f"val_{m}": float(scores[f"{m}_all"]) for m in ("ndcg", "hr", "recall")} | {
        "val_anchors": float(scores["n_all"])}


def train_student(
    task: PairTask, source_dir: Path, teacher_dir: Path, cfg: TrainingConfig, *, device: Device, out_dir: Path,
    on_step: Callable[[TrainState], None] | None = None, progress: bool = True, deadline: Deadline | None = None,
) -> StageResult:
    """Score the distillation lists with the teacher in ``teacher_dir``, then train the student
    cut from ``source_dir``; resumes from ``out_dir``'s newest checkpoint (and cached lists).

    ``deadline`` (default: ``student.max_minutes`` from now) bounds all of it; list scoring
    gets ``student.teacher_minutes`` of it, else ``training.budget.student_lists`` of the time
    left. Validation: ``validation_sample``, the same before and after."""
    if cfg.seed is None:
        raise ValueError("training.seed is required")
    from prodassoc_core.models.teacher import load_teacher

    started = time.monotonic()
    s = cfg.student
    deadline = deadline or Deadline.minutes(s.max_minutes)
    teacher, teacher_tok = load_teacher(teacher_dir, seed=derive_seed(cfg.seed, "teacher", "init"))
    scoring = (Deadline.minutes(s.teacher_minutes) if s.teacher_minutes is not None
               else deadline.fraction(cfg.budget.student_lists)).earliest(deadline)
    lists, logits = teacher_lists(task, cfg, teacher, teacher_tok, device=device, out_dir=out_dir, deadline=scoring,
                                  progress=progress)
    del teacher
    if not len(lists):
        raise ValueError("no distillation lists: every anchor lacked negatives")
    model, tokenizer = make_student(source_dir, s.layers, seed=derive_seed(cfg.seed, STAGE, "init"))
    batch_at, per_epoch = list_batches(lists, logits, task.texts, cfg, tokenizer,
                                       min(s.max_length, model.config.max_position_embeddings))
    total = s.max_steps or max(1, math.ceil(s.epochs * per_epoch))
    run_config = {
        "stage": STAGE, "seed": cfg.seed, "source_dir": str(source_dir), "teacher_dir": str(teacher_dir),
        "pairs": cfg.pairs.model_dump(mode="json"), "student": s.model_dump(mode="json"), "task": task.summary(),
        "lists": int(len(lists)), "total_steps": total,
    }
    loop = LoopConfig(total_steps=total, checkpoint_every=s.checkpoint_every, grad_clip=s.grad_clip, progress=progress,
                      progress_seconds=cfg.progress_seconds, unused_parameters=True)
    sample = validation_sample(task, cfg.seed, s.max_validation_anchors, s.max_validation_products)
    result = run_stage(
        model, tokenizer, stage=STAGE, out_dir=out_dir, run_config=run_config,
        may_differ={"student.max_minutes", "student.checkpoint_every", "student.keep_checkpoints",
                    "student.embed_batch_size", "student.registered_model", "student.teacher_minutes"},
        total=total, learning_rate=s.learning_rate, weight_decay=s.weight_decay, warmup_fraction=s.warmup_fraction,
        loop=loop, batch_at=batch_at, loss_fn=make_loss(cfg),
        evaluate=lambda: validation_ndcg(model, tokenizer, task, cfg, device, sample=sample), device=device,
        seed=cfg.seed, deadline=deadline, started=started, on_step=on_step,
    )
    result.extra |= {"lists": int(len(lists)), "list_width": int(lists.shape[1] - 1), "task": task.summary()}
    return result
