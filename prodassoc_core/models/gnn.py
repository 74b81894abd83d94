"""Link prediction on the product graph (prodassoc_core/models/graph.py): a GraphSAGE encoder, a
cosine decoder, full-graph training, and associations by nearest node embeddings.

Model (``GnnModel``): per layer and per edge type (co-purchase, text) a ``WeightedSAGEConv``
(PyG's ``SAGEConv``: ``lin_l(aggregate(neighbours)) + lin_r(self)``) whose aggregate is the
edge-weighted mean of the neighbours; the two relations are summed (HeteroConv-style), so a
product with no sales history aggregates its text neighbours only. Two layers, ReLU and
dropout between, plus a residual projection of the input features so that a product with
few or no edges keeps an embedding close to its text. Decoder: ``scale * cos(z_a, z_b)`` (+ a
bias for the ``bce`` loss), learned scale: the same cosine that ranks neighbours at inference.

Why not ``SAGEConv.forward``: its propagate ignores edge weights, and the one path that
takes a weighted ``torch.sparse_csr`` adjacency backpropagates ~14x slower on CPU than a
sparse matmul with a precomputed transpose (0.39 s against 0.03 s per 500k-edge layer at
width 128, measured here). ``WeightedSAGEConv`` keeps SAGEConv's parameters and update and
swaps in that matmul. Full-graph training needs no pyg-lib / torch-sparse; memory is
O(E + n * width): Online Retail's 5k products and 0.4M directed edges take well under 1 GB. Beyond
some 10^6 products x 50 edges, train on sampled subgraphs (``LinkNeighborLoader``, which
needs pyg-lib) or precompute the aggregations.

Training (``train_gnn``): full graph, ``steps_per_epoch`` optimizer steps per epoch; all
randomness of epoch ``e`` is seeded by ``derive_seed(seed, "gnn", ..., e)``, so an epoch does
not depend on the RNG history and a resumed run repeats the uninterrupted one bit for bit.
Each step:

* supervision: ``batch_size`` of the fit window's positive pairs (``PairTask.positives``),
  drawn in proportion to their co-purchase count ** ``positive_power``, in random
  orientation (anchor, partner). Their co-purchase edges are hidden from the step's
  message passing (``hide_targets``; the disjoint split of PyG's ``RandomLinkSplit``,
  redrawn every step), and so are all co-purchase edges of a random ``cold_share`` of the
  products, which then look like new products with text edges only;
* negatives, fresh each step: ``random_negatives`` uniform products per anchor (noise,
  bought with the anchor or not) and ``hard_negatives`` text neighbours of the anchor
  never bought with it in the fit window;
* loss ``softmax`` (default): cross-entropy of each anchor over its partner, the other
  anchors' partners and the step's negatives (copies of its partner masked). ``bce``:
  binary cross-entropy of positives against the negatives.

Why these choices (held-out tail of the shipped sample, ``tests/models/test_graph.py``'s pairs,
hidden 128, 96 steps; untrained model 0.217 NDCG@10, co-occurrence count 0.425): the ranking
is decided among a product's positives (its positives by co-purchase count: 0.418, in random
order: 0.227), so the loss must make scores grow with the count, not only separate positives
from never-bought pairs. Count-proportional positives against noise negatives do that (as in
word2vec's negative sampling), and the softmax over in-step candidates uses every negative
for every anchor: softmax 0.344, ``bce`` 0.251; without uniform noise 0.319; without hard
negatives 0.343 (they matter little here). PyG's ``negative_sampling`` draws with Python's
``random.sample`` (1.7 s of a 5 s epoch here), so negatives are drawn with NumPy.

Validation every ``eval_every`` epochs: NDCG@10 on the held-out tail (``PairTask.validation``)
of the GNN's nearest products over the whole fit graph, lists padded with the fit window's
popular pool; the best state is kept, training stops after ``patience`` validations without
gain. An atomic checkpoint (temporary file + ``os.replace``) every ``checkpoint_every``
epochs and at the end carries weights, optimizer, epoch, best state, history, RNG states
and the run config.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import SAGEConv

from prodassoc_core.data import write_json
from prodassoc_core.mining import protocol
from prodassoc_core.models import embeddings
from prodassoc_core.models.graph import COPURCHASE, EDGE_TYPES, TEXT, ProductGraph
from prodassoc_core.models.pairs import PairTask
from prodassoc_core.models.training import (
    BUDGET,
    COMPLETED,
    Deadline,
    Device,
    StepMetrics,
    adamw,
    budget_note,
    check_resumable,
    derive_seed,
    record,
    rng_state,
    set_rng_state,
    set_seed,
    throughput,
    time_reserve,
)
from prodassoc_core.ops import GnnConfig

logger = logging.getLogger("prodassoc.gnn")

MODEL_SUBDIR = "model"
MODEL_FILE = "gnn.pt"
GRAPH_SUBDIR = "graph"
CHECKPOINT_FILE = "checkpoints/checkpoint.pt"
RESULTS_FILE = "gnn_results.json"
METHOD = "gnn"
# A resume may change these: they do not change what any epoch computes.
RESUMABLE_CHANGES = {"gnn.max_minutes", "gnn.checkpoint_every", "gnn.max_epochs"}


# --- the model ----------------------------------------------------------------------------------


class _SpMM(torch.autograd.Function):
    """``a @ x`` for a sparse CSR ``a``, backpropagating through the precomputed ``a_t``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, a: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
        ctx.a_t = a_t
        return torch.sparse.mm(a, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return torch.sparse.mm(ctx.a_t, grad), None, None


def _torch_csr(m: sp.csr_matrix, device: torch.device) -> torch.Tensor:
    m.sum_duplicates()
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the matmul used here is stable
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(torch.from_numpy(m.indptr.astype(np.int64)),
                                       torch.from_numpy(m.indices.astype(np.int64)),
                                       torch.from_numpy(m.data.astype(np.float32)), m.shape,
                                       check_invariants=False).to(device)


class Adjacency:
    """One relation's edge-weighted mean aggregation: row t of ``a`` holds t's neighbours with
    weights summing to 1 (a node without neighbours aggregates to 0)."""

    def __init__(self, src: np.ndarray, dst: np.ndarray, weight: np.ndarray, num_nodes: int, device: torch.device):
        self.num_nodes, self.nnz = num_nodes, len(src)
        if self.nnz == 0:
            self.a = self.a_t = None
            return
        total = np.bincount(dst, weights=weight, minlength=num_nodes)
        values = (weight / total[dst]).astype(np.float32)
        # scipy builds CSR without a sort (torch's coalesce took ~0.25 s per call here).
        self.a = _torch_csr(sp.csr_matrix((values, (dst, src)), shape=(num_nodes, num_nodes)), device)
        self.a_t = _torch_csr(sp.csr_matrix((values, (src, dst)), shape=(num_nodes, num_nodes)), device)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        if self.a is None:
            return x.new_zeros(self.num_nodes, x.shape[1])
        return _SpMM.apply(x, self.a, self.a_t)


class WeightedSAGEConv(SAGEConv):
    """``SAGEConv`` (``lin_l(mean of neighbours) + lin_r(self)``) with an edge-weighted mean,
    computed by ``Adjacency.matmul`` (see the module docstring for why)."""

    def __init__(self, in_channels: int, out_channels: int, root_weight: bool):
        super().__init__(in_channels, out_channels, aggr="sum", root_weight=root_weight)

    def forward(self, x: torch.Tensor, adj: Adjacency) -> torch.Tensor:  # type: ignore[override]
        if self.in_channels > self.out_channels:  # (A x) W = A (x W): aggregate the narrower side
            out = adj.matmul(F.linear(x, self.lin_l.weight)) + self.lin_l.bias
        else:
            out = self.lin_l(adj.matmul(x))
        if self.root_weight:
            out = out + self.lin_r(x)
        return out


class GnnModel(nn.Module):
    """Two-layer relational GraphSAGE encoder over (x, adjacencies) and a cosine decoder.

    ``in_dim`` None: no node features, the model learns a ``learned_dim`` embedding per node.
    """

    def __init__(self, in_dim: int | None, num_nodes: int, hidden_dim: int, out_dim: int, dropout: float,
                 learned_dim: int, init_scale: float, relations: int = len(EDGE_TYPES)):
        super().__init__()
        self.arch = dict(in_dim=in_dim, num_nodes=num_nodes, hidden_dim=hidden_dim, out_dim=out_dim, dropout=dropout,
                         learned_dim=learned_dim, init_scale=init_scale, relations=relations)
        self.embedding = None
        if in_dim is None:
            self.embedding = nn.Embedding(num_nodes, learned_dim)
            nn.init.normal_(self.embedding.weight, std=learned_dim ** -0.5)
            in_dim = learned_dim
        self.dropout = dropout
        dims = [(in_dim, hidden_dim), (hidden_dim, out_dim)]
        self.layers = nn.ModuleList(
            nn.ModuleList(WeightedSAGEConv(i, o, root_weight=(r == 0)) for r in range(relations)) for i, o in dims
        )
        self.skip = nn.Linear(in_dim, out_dim, bias=False)  # residual projection of the features
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))
        self.bias = nn.Parameter(torch.zeros(()))

    def features(self, x: torch.Tensor | None) -> torch.Tensor:
        return self.embedding.weight if self.embedding is not None else x

    def encode(self, x: torch.Tensor | None, adjs: Sequence[Adjacency]) -> torch.Tensor:
        """Node embeddings [n, out_dim] (not normalised)."""
        h0 = F.dropout(self.features(x), self.dropout, self.training)
        h = h0
        for depth, convs in enumerate(self.layers):
            h = sum(conv(h, adj) for conv, adj in zip(convs, adjs, strict=True))
            if depth < len(self.layers) - 1:
                h = F.dropout(F.relu(h), self.dropout, self.training)
        return h + self.skip(h0)

    def decode(self, z: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        """Logits of the pairs [2, m]: scale * cosine + bias."""
        z = F.normalize(z, dim=-1)
        return self.log_scale.exp() * (z[pairs[0]] * z[pairs[1]]).sum(-1) + self.bias


def make_model(graph: ProductGraph, cfg: GnnConfig) -> GnnModel:
    return GnnModel(None if graph.x is None else int(graph.x.shape[1]), graph.num_nodes, cfg.hidden_dim, cfg.out_dim,
                    cfg.dropout, cfg.learned_dim, cfg.init_scale)


def adjacencies(graph: ProductGraph, device: torch.device, drop: np.ndarray | None = None) -> list[Adjacency]:
    """One ``Adjacency`` per edge type; ``drop`` masks edges (aligned with graph.edge_type) out."""
    ei, w, t = graph.edge_index.numpy(), graph.edge_weight.numpy().astype(np.float64), graph.edge_type.numpy()
    out = []
    for kind in range(len(EDGE_TYPES)):
        keep = t == kind
        if drop is not None:
            keep &= ~drop
        out.append(Adjacency(ei[0, keep], ei[1, keep], w[keep], graph.num_nodes, device))
    return out


@torch.no_grad()
def _embed(model: GnnModel, x: torch.Tensor | None, adjs: Sequence[Adjacency]) -> np.ndarray:
    was_training = model.training
    model.eval()
    z = F.normalize(model.encode(x, adjs), dim=-1).float().cpu().numpy()
    model.train(was_training)
    return z


def node_embeddings(model: GnnModel, graph: ProductGraph, device: Device) -> np.ndarray:
    """Unit-norm node embeddings [n, out_dim] (float32, rows aligned with graph.product_ids)."""
    model.to(device.torch_device)
    x = None if graph.x is None else graph.x.to(device.torch_device)
    return _embed(model, x, adjacencies(graph, device.torch_device))


def gnn_associations(product_ids: Sequence[str], node_emb: np.ndarray, k: int,
                     queries: Sequence[str] | None = None) -> pl.DataFrame:
    """Each query's (default: every product's) ``k`` nearest products by embedding cosine:
    product_id, associated_product_id, rank, score, method="gnn" (blockwise, no n x n matrix)."""
    return embeddings.top_k_similar(list(product_ids), node_emb, k, queries=queries, method=METHOD)


# --- sampling -------------------------------------------------------------------------------------


def _contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    pos = np.searchsorted(sorted_keys, keys)
    pos = np.minimum(pos, len(sorted_keys) - 1)
    return (sorted_keys[pos] == keys) if len(sorted_keys) else np.zeros(len(keys), dtype=bool)


class _Sampler:
    """What a step draws from: positives and their co-purchase counts, the co-purchase lookup,
    and text neighbours."""

    def __init__(self, graph: ProductGraph, task: PairTask, power: float):
        n = graph.num_nodes
        self.n = n
        self.positives = np.asarray(task.positives, dtype=np.int64)
        self.positive_keys = self.positives.min(1) * n + self.positives.max(1)
        bought = task.space.bought
        counts = np.asarray(bought[self.positives[:, 0], self.positives[:, 1]]).ravel().astype(np.float64)
        weight = np.maximum(counts, 1.0) ** power
        self.cumulative = np.cumsum(weight / weight.sum())
        coo = bought.tocoo()
        self.bought_keys = np.sort(coo.row.astype(np.int64) * n + coo.col.astype(np.int64))
        ei, t = graph.edge_index.numpy(), graph.edge_type.numpy()
        self.is_copurchase = t == COPURCHASE
        self.edge_keys = np.minimum(ei[0], ei[1]) * n + np.maximum(ei[0], ei[1])
        self.edge_src, self.edge_dst = ei[0], ei[1]
        src, dst = ei[0, t == TEXT], ei[1, t == TEXT]  # sorted by source (graph order)
        self.text_ptr = np.searchsorted(src, np.arange(n + 1))
        self.text_nbr = dst

    def draw_positives(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """Indices of ``count`` positives drawn with replacement, in proportion to count ** power."""
        return np.minimum(np.searchsorted(self.cumulative, rng.random(count), side="right"), len(self.positives) - 1)

    def hidden_edges(self, drawn: np.ndarray, targets: bool, cold_share: float, rng: np.random.Generator
                     ) -> np.ndarray:
        """Mask of the co-purchase edges a step hides: those of its supervision pairs (``targets``)
        and every co-purchase edge of a random ``cold_share`` of the products."""
        draw = rng.random(self.n) < cold_share  # drawn even at 0: the stream stays the same
        hide = np.zeros(len(self.edge_keys), dtype=bool)
        if targets:
            hide |= np.isin(self.edge_keys, self.positive_keys[drawn])
        if cold_share > 0:
            hide |= draw[self.edge_src] | draw[self.edge_dst]
        return self.is_copurchase & hide

    def uniform_negatives(self, anchors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Noise: any other product, bought with the anchor or not."""
        cand = rng.integers(self.n, size=len(anchors))
        keep = cand != anchors
        return np.stack([anchors[keep], cand[keep]])

    def text_negatives(self, anchors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Hard: a text neighbour of the anchor never bought with it in the fit window."""
        count = self.text_ptr[anchors + 1] - self.text_ptr[anchors]
        draw = rng.random(len(anchors))  # drawn even without text edges: the stream stays the same
        if not len(self.text_nbr):
            return np.zeros((2, 0), dtype=np.int64)
        pick = self.text_ptr[anchors] + np.floor(draw * count).astype(np.int64)
        cand = self.text_nbr[np.minimum(pick, len(self.text_nbr) - 1)]
        keep = (count > 0) & (cand != anchors) & ~_contains(self.bought_keys, anchors * self.n + cand)
        return np.stack([anchors[keep], cand[keep]])


# --- training -------------------------------------------------------------------------------------


@dataclass
class GnnState:
    """Where a training run stands; saved in every checkpoint."""

    epoch: int = 0
    examples: int = 0  # supervision pairs + negatives scored, all calls
    train_seconds: float = 0.0
    losses: list[float] = field(default_factory=list)  # mean training loss per epoch
    history: list[dict[str, float]] = field(default_factory=list)  # validation scores by epoch
    before: dict[str, float] = field(default_factory=dict)  # validation of the untrained model
    best_val: float = -math.inf
    best_epoch: int = 0
    bad_evals: int = 0
    stop_reason: str | None = None  # "completed" | "early_stopping" | "budget"
    eval_seconds: float = 0.0  # how long the first validation took


@dataclass
class GnnResult:
    best_val_ndcg: float
    best_epoch: int
    before: dict[str, float]
    after: dict[str, float]  # validation scores of the kept (best) state
    epochs: int
    stop_reason: str
    train_seconds: float  # all calls, resumed ones included
    edges_per_s: float  # scored pairs per training second, this call (softmax: anchor x candidate logits)
    model_dir: Path
    resumed_from: int | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    losses: list[float] = field(default_factory=list, repr=False)
    budget_seconds: float | None = None  # this call's budget (None: unbounded)
    seconds: float = 0.0  # wall time of this call: validation, epochs, checkpoints, saving

    def summary(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))


def validation_queries(task: PairTask, seed: int, max_anchors: int) -> list[str]:
    """The held-out anchors every validation of a run scores: all of them, or a seeded sample
    of ``max_anchors`` (sorted), so validation costs the same at any catalog size."""
    anchors = sorted(task.validation)
    if len(anchors) <= max_anchors:
        return anchors
    rng = np.random.default_rng(derive_seed(seed, "gnn", "validation"))
    return [anchors[i] for i in sorted(rng.choice(len(anchors), size=max_anchors, replace=False))]


def validation_scores(model: GnnModel, x: torch.Tensor | None, adjs: Sequence[Adjacency], task: PairTask,
                      k: int, queries: Sequence[str] | None = None) -> dict[str, float]:
    """NDCG@k (and HR, warm / cold NDCG) of the GNN's nearest products on the held-out tail,
    lists padded with the fit window's popular pool (warm: sold in the fit window).
    ``queries``: the anchors scored (default: every held-out anchor)."""
    if not task.validation:
        return {}
    ids = task.space.product_ids
    queries = sorted(task.validation) if queries is None else list(queries)
    ranked = gnn_associations(ids, _embed(model, x, adjs), k, queries=queries)
    popular = [ids[i] for i in task.space.popular]
    filled = protocol.fill_with_popular(ranked, queries, popular, k)
    sold = task.space.bought.diagonal() > 0
    warm = {p for p in queries if sold[task.space.index[p]]}
    s = protocol.score_associations(filled, {q: task.validation[q] for q in queries}, warm, k)
    return {"val_ndcg": s["ndcg_all"], "val_hr": s["hr_all"], "val_ndcg_warm": s["ndcg_warm"],
            "val_ndcg_cold": s["ndcg_cold"], "val_anchors": float(s["n_all"])}


def _seed(cfg: GnnConfig) -> int:
    if cfg.seed is None:
        raise ValueError("gnn.seed is required to train")
    return cfg.seed


def _train_epoch(model: GnnModel, optimizer: torch.optim.Optimizer, graph: ProductGraph, sampler: _Sampler,
                 x: torch.Tensor | None, epoch: int, cfg: GnnConfig, device: torch.device,
                 metrics: StepMetrics | None = None) -> tuple[float, int]:
    """One epoch of ``steps_per_epoch`` optimizer steps; returns (mean loss, pairs scored).
    Everything it draws is seeded from the epoch number. ``metrics``: where each step goes."""
    seed = _seed(cfg)
    set_seed(derive_seed(seed, "gnn", "epoch", epoch))  # dropout
    rng = np.random.default_rng(derive_seed(seed, "gnn", "sample", epoch))
    model.train()
    total, scored = 0.0, 0
    for i in range(cfg.steps_per_epoch):
        t0 = time.monotonic()
        drawn = sampler.draw_positives(cfg.batch_size, rng)
        pos = sampler.positives[drawn]
        flip = rng.random(len(pos)) < 0.5
        anchors = np.where(flip, pos[:, 1], pos[:, 0])
        others = np.where(flip, pos[:, 0], pos[:, 1])
        negs = [sampler.uniform_negatives(anchors, rng) for _ in range(cfg.random_negatives)]
        negs += [sampler.text_negatives(anchors, rng) for _ in range(cfg.hard_negatives)]
        adjs = adjacencies(graph, device, drop=sampler.hidden_edges(drawn, cfg.hide_targets, cfg.cold_share, rng))
        z = model.encode(x, adjs)
        if cfg.loss == "bce":
            pairs = np.concatenate([np.stack([anchors, others]), *negs], axis=1)
            labels = torch.zeros(pairs.shape[1], device=device)
            labels[: len(pos)] = 1.0
            loss = F.binary_cross_entropy_with_logits(model.decode(z, torch.from_numpy(pairs).to(device)), labels)
            n_scored = len(labels)
        else:
            # Sampled softmax: each anchor against its partner, the other anchors' partners and
            # the drawn negatives; copies of its own partner and itself are masked out.
            cand = np.concatenate([others, *[n[1] for n in negs]])
            a_t = torch.from_numpy(anchors).to(device)
            c_t = torch.from_numpy(cand).to(device)
            zn = F.normalize(z, dim=-1)
            logits = (model.log_scale.exp() * zn[a_t]) @ zn[c_t].T
            own = torch.arange(len(anchors), device=device)
            clash = (c_t[None, :] == torch.from_numpy(others).to(device)[:, None]) | (c_t[None, :] == a_t[:, None])
            clash[own, own] = False
            loss = F.cross_entropy(logits.masked_fill(clash, float("-inf")), own)
            n_scored = logits.numel()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        learning_rate = optimizer.param_groups[0]["lr"]
        optimizer.step()
        step_loss = float(loss.detach())
        total += step_loss * n_scored
        scored += n_scored
        if metrics is not None:
            metrics.update((epoch - 1) * cfg.steps_per_epoch + i + 1, step_loss, learning_rate, n_scored,
                           time.monotonic() - t0)
    return total / max(scored, 1), scored


def _save_checkpoint(path: Path, model: GnnModel, optimizer: torch.optim.Optimizer, best_state: dict,
                     state: GnnState, run_config: dict) -> None:
    """Write the checkpoint to a temporary file and rename it into place (a crash mid-write
    leaves the previous one intact)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "best_state": best_state,
        "state": asdict(state), "rng": rng_state(), "run_config": json.dumps(run_config, sort_keys=True, default=str),
    }, tmp)
    os.replace(tmp, path)


def _save_model(model_dir: Path, model: GnnModel, graph: ProductGraph, cfg: GnnConfig, scores: dict) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    graph.save(model_dir / GRAPH_SUBDIR)
    tmp = model_dir / f".{MODEL_FILE}.{os.getpid()}.tmp"
    torch.save({"state_dict": model.state_dict(), "arch": model.arch,
                "config": json.dumps(cfg.model_dump(), sort_keys=True), "validation": json.dumps(scores)}, tmp)
    os.replace(tmp, model_dir / MODEL_FILE)


def load_gnn(directory: str | Path) -> tuple[GnnModel, ProductGraph]:
    """(model in eval mode, its graph) from a directory ``train_gnn`` wrote (``out_dir/model``)."""
    directory = Path(directory)
    payload = torch.load(directory / MODEL_FILE, map_location="cpu", weights_only=True)
    model = GnnModel(**payload["arch"])
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, ProductGraph.load(directory / GRAPH_SUBDIR)


# The deadline of the chain's GNN stage, for the train_gnn call inside chain.train_graph_stage
# (whose signature is kept as it is while it changes on another branch): set by the chain
# around that call, read by train_gnn when no deadline is passed.
_STAGE_DEADLINE: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar("gnn_stage_deadline", default=None)


@contextlib.contextmanager
def deadline_scope(deadline: Deadline):
    """``train_gnn`` calls inside this block end by ``deadline`` (or earlier by their own budget)."""
    token = _STAGE_DEADLINE.set(deadline)
    try:
        yield
    finally:
        _STAGE_DEADLINE.reset(token)


def train_gnn(graph: ProductGraph, task: PairTask, cfg: GnnConfig, *, device: Device, out_dir: Path,
              on_epoch: Callable[[GnnState], None] | None = None, deadline: Deadline | None = None) -> GnnResult:
    """Train the link-prediction GNN on ``graph`` (the fit window's graph) with ``task``'s
    positives and validation, resuming from ``out_dir/checkpoints``; the best validation
    state is saved to ``out_dir/model`` (with the graph) and the result to
    ``out_dir/gnn_results.json``. ``on_epoch(state)`` runs after each epoch and its
    checkpoint (tests use it to kill a run).

    ``deadline`` (default: ``cfg.max_minutes`` from now, or the enclosing ``deadline_scope``'s,
    whichever is earlier) bounds the call: after an epoch
    it stops (``stop_reason`` "budget", with a checkpoint) when the time left would not cover
    another epoch, its validation and the final save. At least one epoch runs per call.
    Every validation scores the same anchors (``validation_queries``)."""
    started = time.monotonic()
    if deadline is None:
        deadline = Deadline.minutes(cfg.max_minutes).earliest(_STAGE_DEADLINE.get() or Deadline())
    seed = _seed(cfg)
    if graph.product_ids != task.space.product_ids:
        raise ValueError("train_gnn: the graph's nodes must be the task's products, in the same order")
    if not len(task.positives):
        raise ValueError("train_gnn: the task has no positive pairs")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = device.torch_device
    run_config = {"gnn": cfg.model_dump(), "graph": graph.config, "graph_summary": graph.summary(),
                  "positives": int(len(task.positives)), "validation_anchors": len(task.validation)}
    set_seed(derive_seed(seed, "gnn", "init"))
    model = make_model(graph, cfg).to(dev)
    optimizer = adamw(model, cfg.learning_rate, cfg.weight_decay)
    x = None if graph.x is None else graph.x.to(dev)
    full = adjacencies(graph, dev)
    queries = validation_queries(task, seed, cfg.max_validation_anchors)

    def evaluate() -> dict[str, float]:
        return validation_scores(model, x, full, task, cfg.eval_k, queries)

    ckpt = out_dir / CHECKPOINT_FILE
    resumed_from: int | None = None
    if ckpt.is_file():
        payload = torch.load(ckpt, map_location="cpu", weights_only=True)
        check_resumable(json.loads(payload["run_config"]), json.loads(json.dumps(run_config, default=str)), ckpt,
                        RESUMABLE_CHANGES)
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        best_state = payload["best_state"]
        state = GnnState(**payload["state"])
        set_rng_state(payload["rng"])
        resumed_from = state.epoch
        if state.stop_reason in (COMPLETED, BUDGET, "time_budget"):
            state.stop_reason = None  # more epochs allowed, or a new budget: continue
        logger.info("gnn: resuming from %s (epoch %d)", ckpt, state.epoch)
    else:
        t0 = time.monotonic()
        state = GnnState(before=evaluate())
        state.eval_seconds = time.monotonic() - t0
        state.best_val = state.before.get("val_ndcg", -math.inf)
        record(0, state.before)
        best_state = copy.deepcopy(model.state_dict())
        logger.info("gnn: before training %s", state.before)
    if state.epoch >= cfg.max_epochs and state.stop_reason is None:
        state.stop_reason = "completed"

    sampler = _Sampler(graph, task, cfg.positive_power)
    reserve = time_reserve(state.eval_seconds)  # validation after training and the final save
    seconds_here, examples_here, epochs_here, save_s = 0.0, 0, 0, 0.0
    step_metrics = StepMetrics("pairs")
    while state.stop_reason is None:
        epoch = state.epoch + 1
        t0 = time.monotonic()
        loss, scored = _train_epoch(model, optimizer, graph, sampler, x, epoch, cfg, dev, step_metrics)
        step_metrics.flush()  # the epoch's last steps, before its validation
        spent = time.monotonic() - t0
        state.epoch, state.examples, state.train_seconds = epoch, state.examples + scored, state.train_seconds + spent
        seconds_here, examples_here, epochs_here = seconds_here + spent, examples_here + scored, epochs_here + 1
        state.losses.append(loss)
        line = f"gnn epoch {epoch} loss {loss:.4f} ({throughput(scored, spent):.0f} pairs/s)"
        at_step = epoch * cfg.steps_per_epoch
        record(at_step, {"epoch": epoch, "epoch_loss": loss, "pairs_per_s": throughput(scored, spent)})
        if epoch % cfg.eval_every == 0 or epoch == cfg.max_epochs:
            scores = evaluate()
            record(at_step, scores)
            state.history.append({"epoch": epoch, "loss": loss, **scores})
            line += f" val_ndcg {scores.get('val_ndcg', float('nan')):.4f}"
            if not scores:  # no held-out tail to select on: keep the latest state
                state.best_epoch, best_state = epoch, copy.deepcopy(model.state_dict())
            elif scores["val_ndcg"] > state.best_val + cfg.min_delta:
                state.best_val, state.best_epoch, state.bad_evals = scores["val_ndcg"], epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                state.bad_evals += 1
        logger.info(line)
        next_epoch = seconds_here / epochs_here + (state.eval_seconds if (epoch + 1) % cfg.eval_every == 0 else 0.0)
        if epoch >= cfg.max_epochs:
            state.stop_reason = COMPLETED
        elif state.bad_evals >= cfg.patience:
            state.stop_reason = "early_stopping"
        elif deadline.remaining() < next_epoch + save_s + reserve:
            state.stop_reason = BUDGET
        if state.stop_reason or epoch % cfg.checkpoint_every == 0:
            t1 = time.monotonic()
            _save_checkpoint(ckpt, model, optimizer, best_state, state, run_config)
            save_s = time.monotonic() - t1
        if on_epoch is not None:
            on_epoch(state)

    model.load_state_dict(best_state)
    after = evaluate()
    model_dir = out_dir / MODEL_SUBDIR
    _save_model(model_dir, model, graph, cfg, after)
    result = GnnResult(
        best_val_ndcg=after.get("val_ndcg", math.nan), best_epoch=state.best_epoch, before=state.before, after=after,
        epochs=state.epoch, stop_reason=state.stop_reason, train_seconds=state.train_seconds,
        edges_per_s=throughput(examples_here, seconds_here), model_dir=model_dir, resumed_from=resumed_from,
        history=list(state.history), losses=list(state.losses),
        budget_seconds=max(0.0, deadline.end - started) if deadline.bounded else None,
        seconds=time.monotonic() - started,
    )
    write_json(out_dir / RESULTS_FILE, result.summary())
    logger.info("gnn: val_ndcg %.4f -> %.4f (best epoch %d, %d of %d epochs, %s), %.0f pairs/s, %s",
                state.before.get("val_ndcg", 0), result.best_val_ndcg, state.best_epoch, state.epoch, cfg.max_epochs,
                state.stop_reason, result.edges_per_s, budget_note(result.seconds, result.budget_seconds))
    return result
