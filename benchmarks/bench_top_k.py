"""Nearest products by cosine: ``embeddings.top_k_similar`` against its numpy peer, side by side.

    .venv/bin/python benchmarks/bench_top_k.py [--products 50000] [--dim 64] [--k 50] [--repeats 2]

The nightly's hybrid calls top_k_similar three times per catalog (text neighbours for the graph,
then the student's and the GNN's candidates): at 50,000 products it was 129 of the association
stage's 155 s (py-spy on benchmarks/bench_serving.py's 50k nightly). The peer is the code it
replaced, ``np.argpartition`` on each block; the current code asks ``torch.topk`` for the block's
top k and widens to the ties only on rows where more than k reach the k-th score. The unit
embeddings are random, with every 100th product a copy of another (exact ties, broken by product
id). Both outputs must be equal; printed: seconds of each (best of ``--repeats``) and the ratio.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import polars as pl

from prodassoc_core.models.embeddings import top_k_similar


def argpartition_peer(ids: np.ndarray, emb: np.ndarray, k: int, block_size: int = 1024) -> pl.DataFrame:
    """The replaced selection: argpartition of each block, widened to the k-th score's ties."""
    by_id = np.argsort(ids, kind="stable")
    sorted_emb, sorted_ids = emb[by_id], ids[by_id]
    inverse = np.empty_like(by_id)
    inverse[by_id] = np.arange(len(by_id))
    take, out = min(k, len(ids) - 1), {"product_id": [], "associated_product_id": [], "score": []}
    for start in range(0, len(ids), block_size):
        rows = np.arange(start, min(start + block_size, len(ids)))
        sims = emb[rows] @ sorted_emb.T
        sims[np.arange(len(rows)), inverse[rows]] = -np.inf
        part = np.argpartition(-sims, take - 1, axis=1)[:, :take]
        kth = np.take_along_axis(sims, part, axis=1).min(axis=1, keepdims=True)
        for r, row in enumerate(rows):
            cand = np.flatnonzero(sims[r] >= kth[r])
            cand = cand[np.lexsort((cand, -sims[r, cand]))][:take]
            out["product_id"] += [ids[row]] * len(cand)
            out["associated_product_id"] += sorted_ids[cand].tolist()
            out["score"] += sims[r, cand].astype(np.float64).tolist()
    return pl.DataFrame(out).sort("product_id", maintain_order=True)


def best_of(repeats: int, fn) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((args.products, args.dim)).astype(np.float32)
    emb[::100] = emb[1::100][: len(emb[::100])]  # exact duplicates: ties at every rank
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ids = np.array([f"P{i:07d}" for i in rng.permutation(args.products)], dtype=object)

    current_s, current = best_of(args.repeats, lambda: top_k_similar(ids.tolist(), emb, args.k))
    peer_s, peer = best_of(args.repeats, lambda: argpartition_peer(ids, emb, args.k))
    same = current.select("product_id", "associated_product_id", "score").equals(peer)
    print(f"top_k_similar, {args.products:,} products x {args.dim} dims, k={args.k} (best of {args.repeats}):")
    print(f"  numpy argpartition (peer): {peer_s:7.2f} s")
    print(f"  torch.topk (current):      {current_s:7.2f} s")
    print(f"  peer / current: {peer_s / current_s:.1f}x; outputs equal: {same}")
    if not same:
        raise SystemExit("the outputs differ")


if __name__ == "__main__":
    main()
