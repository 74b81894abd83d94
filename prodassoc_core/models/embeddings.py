"""Product embeddings from an encoder, and text-based associations by cosine similarity.

* ``load_encoder``: any BERT-family directory (an MLM stage's ``BertForMaskedLM``, a student
  ``BertModel``, the packaged MiniLM) as a bare encoder plus its tokenizer.
* ``embed_texts``: mean-pooled last hidden states over the real tokens, L2-normalised
  (the pooling all-MiniLM-L6-v2 was trained with, and the student's).
* ``top_k_similar``: for each query product, the k most similar other products, computed
  block by block (``block_size`` queries at a time against all candidates), so memory is
  O(block_size x n) and no dense n x n matrix exists. Ties are broken by product id.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import torch

from prodassoc_core.data import ASSOCIATED_PRODUCT_ID, PRODUCT_ID
from prodassoc_core.models.training import Device, quiet_transformers

RANK = "rank"


def load_encoder(model_dir: str | Path):
    """``(encoder, tokenizer)`` from a saved model directory: the base ``AutoModel`` (heads dropped)."""
    from transformers import AutoModel, AutoTokenizer

    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModel.from_pretrained(model_dir)
    return model, tokenizer


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the hidden states of real tokens ([n, L, d] -> [n, d])."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def encode(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """L2-normalised mean-pooled embeddings of a tokenised batch (gradients flow)."""
    hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    return torch.nn.functional.normalize(mean_pool(hidden, batch["attention_mask"]).float(), dim=-1)


@torch.no_grad()
def embed_texts(
    model, tokenizer, texts: Sequence[str], *, device: Device, batch_size: int = 128, max_length: int = 64
) -> np.ndarray:
    """``[len(texts), hidden]`` float32, unit-norm rows, in the order of ``texts``.

    Texts are batched by length (less padding); the model's train/eval mode is restored.
    """
    if not texts:
        return np.zeros((0, model.config.hidden_size), dtype=np.float32)
    was_training = model.training
    model.eval()
    model.to(device.torch_device)
    max_length = min(max_length, model.config.max_position_embeddings)
    order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = tokenizer([texts[i] for i in idx], truncation=True, max_length=max_length, padding=True,
                          return_tensors="pt")
        batch = {k: v.to(device.torch_device) for k, v in batch.items()}
        with device.autocast():
            out[idx] = encode(model, batch).cpu().numpy()
    model.train(was_training)
    return out


def top_k_similar(
    product_ids: Sequence[str],
    embeddings: np.ndarray,
    k: int,
    *,
    queries: Sequence[str] | None = None,
    block_size: int = 1024,
    method: str = "text",
) -> pl.DataFrame:
    """The ``k`` most cosine-similar other products of each query (default: every product).

    ``embeddings`` rows are unit-norm and aligned with ``product_ids`` (unique). Returns
    product_id, associated_product_id, rank (1 = most similar), score (cosine), method;
    sorted by product_id, rank. Equal scores are ordered by product id.
    """
    ids = np.asarray(product_ids, dtype=object)
    if len(set(product_ids)) != len(ids) or embeddings.shape[0] != len(ids):
        raise ValueError("top_k_similar: product_ids must be unique and aligned with the embedding rows")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    position = {p: i for i, p in enumerate(product_ids)}
    query_rows = np.arange(len(ids)) if queries is None else np.array([position[q] for q in queries], dtype=np.int64)
    # Ties by product id: rank candidates in id order, so a stable sort keeps that order.
    by_id = np.argsort(ids, kind="stable")
    emb = np.ascontiguousarray(embeddings[by_id], dtype=np.float32)
    sorted_ids = ids[by_id]
    inverse = np.empty_like(by_id)
    inverse[by_id] = np.arange(len(by_id))
    take = min(k, len(ids) - 1)
    frames = []
    for start in range(0, len(query_rows), block_size):
        rows = query_rows[start : start + block_size]
        sims = embeddings[rows].astype(np.float32) @ emb.T  # [b, n]
        sims[np.arange(len(rows)), inverse[rows]] = -np.inf  # never itself
        if take <= 0:
            continue
        # torch.topk: ~18x numpy's argpartition on a 1024 x 50,000 block (benchmarks/bench_top_k.py)
        top = torch.topk(torch.from_numpy(sims), take, dim=1, sorted=False).indices.numpy()
        scores = np.take_along_axis(sims, top, axis=1)
        kth = scores.min(axis=1, keepdims=True)
        order = np.lexsort((top, -scores), axis=1)  # by score, then by product id (columns are in id order)
        top, scores = np.take_along_axis(top, order, axis=1), np.take_along_axis(scores, order, axis=1)
        # topk may cut inside a run of equal scores: where more than `take` reach the k-th score,
        # widen to every candidate tied with it, so ties are broken by product id
        for r in np.flatnonzero((sims >= kth).sum(axis=1) > take):
            cand = np.flatnonzero(sims[r] >= kth[r])
            top[r] = cand[np.lexsort((cand, -sims[r, cand]))][:take]
            scores[r] = sims[r, top[r]]
        frames.append((np.repeat(ids[rows], take), sorted_ids[top.ravel()], scores.ravel()))
    if not frames:
        return pl.DataFrame(schema={PRODUCT_ID: pl.String, ASSOCIATED_PRODUCT_ID: pl.String, RANK: pl.Int32,
                                    "score": pl.Float64, "method": pl.String})
    return (
        pl.DataFrame(
            {
                PRODUCT_ID: np.concatenate([f[0] for f in frames]).tolist(),
                ASSOCIATED_PRODUCT_ID: np.concatenate([f[1] for f in frames]).tolist(),
                "score": np.concatenate([f[2] for f in frames]).astype(np.float64),
            },
            schema={PRODUCT_ID: pl.String, ASSOCIATED_PRODUCT_ID: pl.String, "score": pl.Float64},
        )
        .with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.Int32).over(PRODUCT_ID).alias(RANK),
                      pl.lit(method).alias("method"))
        .select(PRODUCT_ID, ASSOCIATED_PRODUCT_ID, RANK, "score", "method")
        .sort(PRODUCT_ID, RANK)
    )
