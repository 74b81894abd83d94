"""Domain masked-language-model training on catalog text (stage 1 of the language-model chain).

    catalog --catalog_texts--> one text per product ("title | description | category | brand")
            --split_heldout--> training texts, held-out texts (by a hash of seed and product_id)
            --load_encoder_for_mlm (encoders.py)--> model, tokenizer
            --train_mlm--> held-out masked-token loss before/after, model + tokenizer directory
            --log_mlm_run--> MLflow run, registered model version ("prodassoc-mlm")

``run_mlm`` composes the first four and resumes from the newest checkpoint in its output
directory, if there is one.

Masking is whole-word: a word (the tokenizer's pre-tokenizer word: punctuation is its own
word) is chosen with probability ``mlm_probability`` and all of its tokens are masked
together (80% [MASK], 10% a random token, 10% unchanged, per token, as in BERT). Words with
no letter or digit are never chosen, and every text gets at least one masked word (catalog
titles are short: with 15% alone a third of them would have none). Masks are drawn per batch
from a generator seeded by (seed, step), so a resumed run sees the same masks; the held-out
masks are drawn once from (seed, "heldout"), so the losses before and after are measured on
exactly the same masked tokens. The held-out loss is the mean cross-entropy over masked
tokens; perplexity = exp(loss).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import torch
import torch.nn.functional as F

from prodassoc_core.data import BRAND, CATEGORY, DESCRIPTION, PRODUCT_ID, TITLE, write_json
from prodassoc_core.models.encoders import load_encoder_for_mlm
from prodassoc_core.models.tracking import RegisteredRun, log_model_run
from prodassoc_core.models.training import (
    BUDGET,
    COMPLETED,
    MODEL_SUBDIR,
    Deadline,
    Device,
    LoopConfig,
    Plan,
    TrainState,
    adamw,
    budget_note,
    derive_seed,
    fit_schedule,
    generator,
    is_main_process,
    latest_checkpoint,
    linear_schedule,
    load_checkpoint,
    peak_memory,
    quiet_transformers,
    read_run_config,
    record,
    reset_peak_memory,
    save_checkpoint,
    saved_total_steps,
    set_seed,
    throughput,
    time_reserve,
    train_loop,
    wait_for_everyone,
    world_size,
)
from prodassoc_core.ops import EncoderSpec, MlmConfig

logger = logging.getLogger("prodassoc.mlm")

TEXT_FIELDS = (TITLE, DESCRIPTION, CATEGORY, BRAND)
SEPARATOR = " | "
IGNORE = -100  # label of tokens that are not predicted
CHECKPOINTS = "checkpoints"
RESULTS_FILE = "mlm_results.json"

# A configuration small enough for unit tests (seconds on one CPU thread).
TINY_ENCODER = EncoderSpec(kind="scratch", vocab_size=500, hidden=64, layers=2, heads=2, intermediate=128, max_length=32)


def tiny_config(seed: int, **overrides: Any) -> MlmConfig:
    """The tests' configuration: a 2-layer, hidden-64 BERT trained from scratch for 200 steps."""
    values: dict[str, Any] = dict(
        seed=seed, encoder=TINY_ENCODER, batch_size=32, eval_batch_size=128, learning_rate=5e-3,
        warmup_fraction=0.05, max_steps=200, checkpoint_every=25,
    )
    values.update(overrides)
    return MlmConfig(**values)


# --- texts and split -------------------------------------------------------------------------


def catalog_texts(catalog: pl.DataFrame) -> list[str]:
    """One text per catalog row (in row order): its non-empty text fields joined by " | "."""
    fields = [
        pl.col(c).cast(pl.String).str.strip_chars().replace("", None) for c in TEXT_FIELDS if c in catalog.columns
    ]
    if not fields:
        raise ValueError(f"catalog has none of the text columns {TEXT_FIELDS}")
    texts = catalog.select(pl.concat_str(fields, separator=SEPARATOR, ignore_nulls=True).alias("text"))["text"]
    return [t or "" for t in texts.to_list()]


def is_heldout(product_id: str, fraction: float, seed: int) -> bool:
    """Whether a product is held out: a hash of (seed, product_id), independent of the others."""
    return derive_seed(seed, "heldout", product_id) / 2**63 < fraction


def split_heldout(
    product_ids: Sequence[str], texts: Sequence[str], fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """``(train_texts, heldout_texts)``; empty texts are dropped from both.

    A product is held out by ``is_heldout`` (deterministic, not affected by row order or by
    products added later). A training text identical to a held-out text is dropped too:
    catalogs repeat titles across product ids, and a repeat would leak the held-out text.
    """
    if len(product_ids) != len(texts):
        raise ValueError(f"{len(product_ids)} product ids but {len(texts)} texts")
    held = [t for p, t in zip(product_ids, texts) if t and is_heldout(p, fraction, seed)]
    held_set = set(held)
    train = [t for p, t in zip(product_ids, texts) if t and not is_heldout(p, fraction, seed) and t not in held_set]
    if not train or not held:
        raise ValueError(f"split_heldout: {len(train)} training and {len(held)} held-out texts; need both")
    return train, held


def heldout_sample(heldout_texts: Sequence[str], max_texts: int, seed: int) -> list[str]:
    """At most ``max_texts`` of the held-out texts (a seeded choice, in their order): what the
    loss before and after training is measured on, so its cost does not grow with the catalog."""
    if len(heldout_texts) <= max_texts:
        return list(heldout_texts)
    keep = torch.randperm(len(heldout_texts), generator=generator(seed, "heldout-sample"))[:max_texts]
    return [heldout_texts[i] for i in sorted(keep.tolist())]


# --- tokenisation and whole-word masking -----------------------------------------------------


@dataclass(frozen=True)
class Encoded:
    """Token ids per text and, per token, the index of its maskable word (-1: never masked)."""

    input_ids: list[list[int]]
    word_index: list[list[int]]

    def __len__(self) -> int:
        return len(self.input_ids)

    def take(self, indices: Sequence[int]) -> "Encoded":
        return Encoded([self.input_ids[i] for i in indices], [self.word_index[i] for i in indices])


def encode_texts(tokenizer, texts: Sequence[str], max_length: int) -> Encoded:
    """Tokenise (with [CLS]/[SEP], truncated to ``max_length``) and number each text's words.

    A word is the pre-tokenizer's word; those without a letter or digit (punctuation, the
    " | " separator) get -1, as do special tokens, so they are never masked.
    """
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    words = []
    for i, text in enumerate(texts):
        maskable: dict[int, bool] = {}
        row = []
        for w in enc.word_ids(i):
            if w is not None and w not in maskable:
                span = enc.word_to_chars(i, w)
                maskable[w] = any(ch.isalnum() for ch in text[span.start : span.end])
            row.append(w if w is not None and maskable[w] else -1)
        words.append(_renumber(row))
    return Encoded([list(r) for r in enc["input_ids"]], words)


def _renumber(row: list[int]) -> list[int]:
    """Maskable word indices as 0..k-1 in order of appearance (-1 kept)."""
    order: dict[int, int] = {}
    return [-1 if w < 0 else order.setdefault(w, len(order)) for w in row]


@dataclass(frozen=True)
class MaskingSpec:
    probability: float
    mask_token_id: int
    pad_token_id: int
    vocab_size: int

    @classmethod
    def of(cls, tokenizer, probability: float) -> "MaskingSpec":
        return cls(probability, tokenizer.mask_token_id, tokenizer.pad_token_id, len(tokenizer))


def mask_whole_words(encoded: Encoded, spec: MaskingSpec, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Pad and mask a set of examples: ``input_ids``, ``attention_mask``, ``labels`` ([n, L]).

    Each maskable word is chosen with ``spec.probability`` (at least one per text that has
    one); its tokens are replaced 80/10/10 by [MASK] / a random token / themselves, and only
    they carry labels.
    """
    n = len(encoded)
    length = max(len(r) for r in encoded.input_ids)
    ids = torch.full((n, length), spec.pad_token_id, dtype=torch.long)
    words = torch.full((n, length), -1, dtype=torch.long)
    attention = torch.zeros((n, length), dtype=torch.long)
    for i, (row, wrow) in enumerate(zip(encoded.input_ids, encoded.word_index)):
        ids[i, : len(row)] = torch.tensor(row)
        words[i, : len(wrow)] = torch.tensor(wrow)
        attention[i, : len(row)] = 1
    n_words = words.max(dim=1).values + 1  # [n]
    width = max(1, int(n_words.max()))
    draw = torch.rand((n, width), generator=gen)
    valid = torch.arange(width)[None, :] < n_words[:, None]
    chosen = (draw < spec.probability) & valid
    lacking = ~chosen.any(dim=1) & (n_words > 0)
    first = draw.masked_fill(~valid, 2.0).argmin(dim=1)
    chosen[lacking, first[lacking]] = True
    masked = torch.gather(chosen, 1, words.clamp(min=0)) & (words >= 0)

    labels = torch.where(masked, ids, torch.full_like(ids, IGNORE))
    action = torch.rand((n, length), generator=gen)
    random_tokens = torch.randint(spec.vocab_size, (n, length), generator=gen)
    inputs = ids.clone()
    inputs[masked & (action < 0.8)] = spec.mask_token_id
    swap = masked & (action >= 0.8) & (action < 0.9)
    inputs[swap] = random_tokens[swap]
    return {"input_ids": inputs, "attention_mask": attention, "labels": labels}


# --- loss ------------------------------------------------------------------------------------


def _mlm_head(model) -> torch.nn.Module | None:
    """The module mapping hidden states to vocabulary logits, where the architecture has one
    (BERT family: ``cls``; RoBERTa family: ``lm_head``); None otherwise."""
    for name in ("cls", "lm_head"):
        head = getattr(model, name, None)
        if isinstance(head, torch.nn.Module):
            return head
    return None


def mlm_loss(model, batch: dict[str, torch.Tensor], reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy over the masked tokens (labels != -100).

    Vocabulary logits are computed at masked positions only: at 15% masking that skips ~85%
    of the output layer, which dominates the cost for small encoders with large vocabularies
    (MiniLM: hidden 384, 30,522 words). Same value as ``model(**batch).loss``; models without
    a known head fall back to that.
    """
    labels = batch["labels"]
    keep = labels != IGNORE
    head = _mlm_head(model)
    if head is None:
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[keep]
    else:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        hidden = model.base_model(**inputs).last_hidden_state
        logits = head(hidden[keep])
    return F.cross_entropy(logits.float(), labels[keep], reduction=reduction)


# --- evaluation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MlmEval:
    loss: float  # mean cross-entropy per masked token (nats)
    perplexity: float
    masked_tokens: int


@torch.no_grad()
def masked_lm_loss(
    model, tokenizer, texts: Sequence[str] | Encoded, *, seed: int, batch_size: int, device: Device,
    mlm_probability: float = 0.15, max_length: int = 64,
) -> MlmEval:
    """Held-out masked-token loss with masks fixed by ``seed`` (the same for any model and
    batch size, so before/after compare the same tokens). Leaves the model's mode as it was."""
    encoded = texts if isinstance(texts, Encoded) else encode_texts(tokenizer, texts, max_length)
    full = mask_whole_words(encoded, MaskingSpec.of(tokenizer, mlm_probability), generator(seed, "heldout-masks"))
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(encoded), batch_size):
        part = {k: v[start : start + batch_size] for k, v in full.items()}
        width = int(part["attention_mask"].sum(dim=1).max())
        part = {k: v[:, :width].to(device.torch_device) for k, v in part.items()}
        with device.autocast():
            total += float(mlm_loss(model, part, reduction="sum"))
        count += int((part["labels"] != IGNORE).sum())
    model.train(was_training)
    loss = total / count if count else math.nan
    return MlmEval(loss, math.exp(loss) if count else math.nan, count)


# --- training --------------------------------------------------------------------------------


@dataclass
class MlmResult:
    loss_before: float
    loss_after: float
    ppl_before: float
    ppl_after: float
    heldout_masked_tokens: int
    steps: int
    total_steps: int
    stop_reason: str  # "completed" | "budget"
    examples_per_s: float  # this call's training steps only
    train_seconds: float  # all calls, resumed ones included
    n_train: int
    n_heldout: int
    model_dir: Path  # save_pretrained of model + tokenizer
    checkpoint_dir: Path  # the newest checkpoint
    resumed_from: int | None = None  # step of the checkpoint this call resumed from
    train_losses: list[float] = field(default_factory=list, repr=False)
    budget_seconds: float | None = None  # the run's budget (None: unbounded)
    scheduled_steps: int | None = None  # the schedule's length when the budget shortened it (fit_schedule)
    seconds: float = 0.0  # wall time of this call: texts, validation, training, saving
    tokens_per_s: float = 0.0  # token positions a second, this call's training steps only (padding included)
    parameters: int = 0  # the model's parameters (MFU: 6 x parameters x tokens/s)
    peak_memory_bytes: int | None = None  # torch.cuda.max_memory_allocated during the call (None: CPU)
    world_size: int = 1  # processes that trained it (torchrun)

    @property
    def completed(self) -> bool:
        return self.stop_reason == "completed"

    def summary(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "train_losses"}
        return {k: str(v) if isinstance(v, Path) else v for k, v in out.items()}


def total_steps(cfg: MlmConfig, n_train: int) -> int:
    if cfg.max_steps is not None:
        return cfg.max_steps
    return max(1, math.ceil(cfg.epochs * math.ceil(n_train / cfg.batch_size)))


def batches(encoded: Encoded, spec: MaskingSpec, batch_size: int, seed: int) -> Callable[[int], dict[str, torch.Tensor]]:
    """``batch_at(step)``: each epoch is a fresh permutation seeded by (seed, epoch), and each
    step's masks come from (seed, step), so any step's batch can be rebuilt without state."""
    per_epoch = math.ceil(len(encoded) / batch_size)
    orders: dict[int, list[int]] = {}

    def batch_at(step: int) -> dict[str, torch.Tensor]:
        epoch, i = divmod(step, per_epoch)
        if epoch not in orders:
            orders.clear()
            orders[epoch] = torch.randperm(len(encoded), generator=generator(seed, "order", epoch)).tolist()
        chunk = orders[epoch][i * batch_size : (i + 1) * batch_size]
        return mask_whole_words(encoded.take(chunk), spec, generator(seed, "masks", step))

    return batch_at


def _run_config(cfg: MlmConfig, tokenizer, n_train: int, n_heldout: int, steps: int) -> dict[str, Any]:
    return {
        "stage": "mlm",
        "mlm": cfg.model_dump(mode="json"),
        "tokenizer_vocab_size": len(tokenizer),
        "n_train": n_train,
        "n_heldout": n_heldout,
        "total_steps": steps,
    }


# Config fields a resume may change (budget and bookkeeping); any other difference is an error.
_RESUMABLE = {"max_minutes", "checkpoint_every", "keep_checkpoints", "eval_batch_size", "experiment", "registered_model"}


def _check_resumable(saved: dict[str, Any], current: dict[str, Any], checkpoint: Path) -> None:
    diff = sorted(
        k for k in set(saved) | set(current)
        if k != "mlm" and saved.get(k) != current.get(k)
    ) + sorted(
        f"mlm.{k}" for k in set(saved["mlm"]) | set(current["mlm"])
        if k not in _RESUMABLE and saved["mlm"].get(k) != current["mlm"].get(k)
    )
    if diff:
        raise ValueError(
            f"{checkpoint} was written by a different run ({', '.join(diff)} differ); "
            "use a new output directory or remove the checkpoints"
        )


def train_mlm(
    model, tokenizer, train_texts: Sequence[str], heldout_texts: Sequence[str], cfg: MlmConfig, *,
    device: Device, out_dir: Path, on_step: Callable[[TrainState], None] | None = None, progress: bool = True,
    deadline: Deadline | None = None, started: float | None = None, progress_seconds: float = 30.0,
) -> MlmResult:
    """Masked-LM training with held-out loss before and after; resumes from ``out_dir``.

    Writes ``out_dir/checkpoints/step-N`` (see training.save_checkpoint), and at the end
    (completed or out of budget) ``out_dir/model`` (model + tokenizer, ``save_pretrained``)
    and ``out_dir/mlm_results.json``. If a checkpoint exists, training continues from it with
    the same batches, masks and dropout as an uninterrupted run; the loss before training is
    the one measured when the run started. The held-out loss is measured on at most
    ``cfg.max_heldout_texts`` texts (``heldout_sample``), the same before and after.

    ``deadline`` (default: ``cfg.max_minutes`` from now) bounds the whole call; the loop
    stops early enough to leave time for the loss after training and the final save.
    ``started``: when the run began (monotonic), if before this call (``run_mlm``).
    """
    started = time.monotonic() if started is None else started
    deadline = deadline or Deadline.minutes(cfg.max_minutes)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_root = out_dir / CHECKPOINTS
    length = cfg.encoder.max_length
    train_enc = encode_texts(tokenizer, train_texts, length)
    held_enc = encode_texts(tokenizer, heldout_sample(heldout_texts, cfg.max_heldout_texts, cfg.seed), length)
    steps = total_steps(cfg, len(train_enc))
    run_config = _run_config(cfg, tokenizer, len(train_enc), len(held_enc), steps)

    model.to(device.torch_device)
    reset_peak_memory(device)
    evaluate = lambda: masked_lm_loss(  # noqa: E731
        model, tokenizer, held_enc, seed=cfg.seed, batch_size=cfg.eval_batch_size, device=device,
        mlm_probability=cfg.mlm_probability,
    )
    batch_at = batches(train_enc, MaskingSpec.of(tokenizer, cfg.mlm_probability), cfg.batch_size, cfg.seed)

    latest = latest_checkpoint(ckpt_root)
    if latest is not None:
        _check_resumable(read_run_config(latest), run_config, latest)
        scheduled = saved_total_steps(latest)  # a resumed run keeps the schedule it started with
    else:
        t0 = time.monotonic()
        before = evaluate()
        eval_s = time.monotonic() - t0
        logger.info(
            "mlm: held-out loss before %.4f (perplexity %.2f, %d masked tokens, %.1f s)",
            before.loss, before.perplexity, before.masked_tokens, eval_s,
        )
        record(0, {"heldout_loss": before.loss, "heldout_perplexity": before.perplexity})
        scheduled = fit_schedule(model, batch_at, mlm_loss, device=device, planned=steps,
                                 deadline=deadline.minus(time_reserve(eval_s)), desc="mlm")
        set_seed(derive_seed(cfg.seed, "train"))  # dropout stream, independent of what ran before
    optimizer = adamw(model, cfg.learning_rate, cfg.weight_decay)
    plan = Plan(scheduled)
    scheduler = linear_schedule(optimizer, plan, cfg.warmup_fraction)
    if latest is not None:
        state = load_checkpoint(latest, model=model, optimizer=optimizer, scheduler=scheduler)
        model.to(device.torch_device)
        resumed_from: int | None = state.step
        logger.info("mlm: resuming from %s (step %d/%d)", latest, state.step, scheduled)
    else:
        state = TrainState(total_steps=scheduled, extra={"before": asdict(before), "eval_seconds": eval_s})
        resumed_from = None

    examples_before, seconds_before, tokens_before = state.examples, state.train_seconds, state.tokens

    def save(s: TrainState) -> Path:
        return save_checkpoint(
            ckpt_root, model=model, tokenizer=tokenizer, optimizer=optimizer, scheduler=scheduler,
            state=s, run_config=run_config, keep=cfg.keep_checkpoints,
        )

    loop = LoopConfig(
        total_steps=scheduled, checkpoint_every=cfg.checkpoint_every, grad_clip=cfg.grad_clip, progress=progress,
        progress_seconds=progress_seconds,
    )
    state = train_loop(
        model, optimizer, scheduler, batch_at, device=device, cfg=loop, state=state, save=save,
        deadline=deadline.minus(time_reserve(state.extra.get("eval_seconds", 0.0))), plan=plan, loss_fn=mlm_loss,
        on_step=on_step, desc="mlm",
    )
    scheduled = state.total_steps

    after = evaluate()
    record(state.step, {"heldout_loss": after.loss, "heldout_perplexity": after.perplexity})
    before = MlmEval(**state.extra["before"])
    model_dir = out_dir / MODEL_SUBDIR
    if is_main_process():  # under torchrun rank 0 writes, the others wait for it
        with quiet_transformers():
            model.save_pretrained(model_dir)
            tokenizer.save_pretrained(model_dir)
    result = MlmResult(
        loss_before=before.loss, loss_after=after.loss, ppl_before=before.perplexity, ppl_after=after.perplexity,
        heldout_masked_tokens=after.masked_tokens, steps=state.step, total_steps=steps,
        stop_reason=COMPLETED if state.step >= steps else BUDGET,
        scheduled_steps=scheduled if scheduled < steps else None,
        examples_per_s=throughput(state.examples - examples_before, state.train_seconds - seconds_before),
        train_seconds=state.train_seconds, n_train=len(train_enc), n_heldout=len(held_enc), model_dir=model_dir,
        checkpoint_dir=latest_checkpoint(ckpt_root) or ckpt_root, resumed_from=resumed_from,
        train_losses=list(state.losses), budget_seconds=deadline.end - started if deadline.bounded else None,
        seconds=time.monotonic() - started,
        tokens_per_s=throughput(state.tokens - tokens_before, state.train_seconds - seconds_before),
        parameters=sum(p.numel() for p in model.parameters()), peak_memory_bytes=peak_memory(device),
        world_size=world_size(),
    )
    if is_main_process():
        write_json(out_dir / RESULTS_FILE, result.summary())
    wait_for_everyone()
    logger.info(
        "mlm: held-out loss %.4f -> %.4f (perplexity %.2f -> %.2f), %d/%d steps (%s), %.1f examples/s, %s",
        result.loss_before, result.loss_after, result.ppl_before, result.ppl_after, result.steps, steps,
        result.stop_reason, result.examples_per_s, budget_note(result.seconds, result.budget_seconds),
    )
    return result


def run_mlm(
    catalog: pl.DataFrame, cfg: MlmConfig, *, device: Device, out_dir: Path,
    on_step: Callable[[TrainState], None] | None = None, progress: bool = True, deadline: Deadline | None = None,
    progress_seconds: float = 30.0,
) -> MlmResult:
    """The MLM stage on a catalog (contracts.CATALOG): texts, split, encoder, training.

    With a checkpoint in ``out_dir`` the model and tokenizer come from it (and training
    resumes); otherwise from ``cfg.encoder`` (a scratch tokenizer is trained on the
    training texts only). ``deadline`` (default: ``cfg.max_minutes`` from now) covers all of it.
    """
    started = time.monotonic()
    deadline = deadline or Deadline.minutes(cfg.max_minutes)
    texts = catalog_texts(catalog)
    train, held = split_heldout(catalog[PRODUCT_ID].to_list(), texts, cfg.heldout_fraction, cfg.seed)
    latest = latest_checkpoint(out_dir / CHECKPOINTS)
    if latest is not None:
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(latest / MODEL_SUBDIR)
            model = AutoModelForMaskedLM.from_pretrained(latest / MODEL_SUBDIR)
    else:
        model, tokenizer = load_encoder_for_mlm(cfg.encoder, train, seed=cfg.seed)
    logger.info("mlm: %d training texts, %d held out, on %s", len(train), len(held), device.describe())
    return train_mlm(model, tokenizer, train, held, cfg, device=device, out_dir=out_dir, on_step=on_step,
                     progress=progress, deadline=deadline, started=started, progress_seconds=progress_seconds)


# --- MLflow ----------------------------------------------------------------------------------


def run_record(result: MlmResult, cfg: MlmConfig) -> tuple[dict[str, Any], dict[str, float], dict[str, str]]:
    """(params, metrics, tags) of the MLM stage's MLflow run: the configuration and data sizes,
    the held-out loss and perplexity before and after, steps and throughput."""
    metrics = {
        "heldout_loss_before": result.loss_before,
        "heldout_loss_after": result.loss_after,
        "heldout_perplexity_before": result.ppl_before,
        "heldout_perplexity_after": result.ppl_after,
        "heldout_masked_tokens": result.heldout_masked_tokens,
        "steps": result.steps,
        "examples_per_s": result.examples_per_s,
        "train_seconds": result.train_seconds,
    }
    params = {**cfg.model_dump(mode="json"), "n_train": result.n_train, "n_heldout": result.n_heldout,
              "total_steps": result.total_steps}
    tags = {"stage": "mlm", "stop_reason": result.stop_reason, "encoder": cfg.encoder.kind}
    return params, metrics, tags


def log_mlm_run(
    result: MlmResult, cfg: MlmConfig, *, tracking_uri: str, artifact_root: Path, run_name: str = "mlm"
) -> RegisteredRun:
    """The MLM stage as an MLflow run logged after the fact (params, before/after metrics, per-step
    training loss, the model + tokenizer directory) registered as ``cfg.registered_model``, in
    ``cfg.experiment``. The training chain logs its MLM stage live instead (chain.train_chain)."""
    params, metrics, tags = run_record(result, cfg)
    results_file = result.model_dir.parent / RESULTS_FILE
    return log_model_run(
        tracking_uri, cfg.experiment, artifact_root, run_name=run_name, params=params, metrics=metrics,
        model_dir=result.model_dir, registered_model=cfg.registered_model, series={"train_loss": result.train_losses},
        tags=tags, files=[results_file] if results_file.is_file() else None,
    )
