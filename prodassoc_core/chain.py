"""The language-model chain end to end, and what uses its models.

    catalog --run_mlm (mlm.py)--> domain-adapted encoder            out_dir/mlm/model
    catalog + training baskets --build_task (pairs.py)--> pairs
    pairs + MLM encoder --train_teacher (teacher.py)--> cross-encoder out_dir/teacher/model
    pairs + teacher --train_student (student.py)--> bi-encoder      out_dir/student/model

Every stage resumes from its own checkpoints under ``out_dir``, so rerunning ``train_chain``
after a crash continues where it stopped (a finished stage is not retrained: its model
directory and results file are reused).

``text_associations`` ranks products by the cosine of an encoder's embeddings (any stage, or
the pretrained base); ``teacher_reranked`` reorders a shortlist with the teacher;
``embeddings_table`` is the published ``product_embeddings`` table.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from prodassoc_core import embeddings, mlm, pairs, student, teacher
from prodassoc_core.contracts import PRODUCT_EMBEDDINGS, PRODUCT_ID
from prodassoc_core.encoders import resolve_pretrained
from prodassoc_core.settings import HybridConfig, MlmConfig, SelectionConfig, TrainingConfig
from prodassoc_core.training import MODEL_SUBDIR, Device, StageResult

logger = logging.getLogger("prodassoc.chain")

STAGES = ("mlm", "teacher", "student", "gnn")


@dataclass
class ChainResult:
    mlm: mlm.MlmResult
    teacher: StageResult
    student: StageResult
    task: pairs.PairTask
    gnn: Any = None  # gnn.GnnResult
    weights: dict[str, dict[str, float]] = field(default_factory=dict)  # hybrid weights: warm, cold
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per stage (this call)

    def model_dir(self, stage: str) -> Path:
        return getattr(self, stage).model_dir


def mlm_config(cfg: TrainingConfig) -> MlmConfig:
    """The MLM stage's configuration inside the chain."""
    return MlmConfig(
        seed=_seed(cfg), encoder=cfg.encoder, epochs=cfg.mlm_epochs, learning_rate=cfg.mlm_learning_rate,
        max_minutes=cfg.mlm_minutes, registered_model="prodassoc-mlm",
    )


def _seed(cfg: TrainingConfig) -> int:
    if cfg.seed is None:
        raise ValueError("training.seed is required to train (set PRODASSOC_TRAINING__SEED or --seed)")
    return cfg.seed


def student_source(cfg: TrainingConfig, mlm_dir: Path) -> Path | str:
    """Where the student's layers come from: the base encoder (default) or the MLM model. A
    scratch encoder has no base worth keeping (it is random before MLM): the MLM model then."""
    if cfg.student.init == "mlm" or cfg.encoder.kind != "pretrained":
        return mlm_dir
    return resolve_pretrained(cfg.encoder)


def train_chain(
    catalog: pl.DataFrame, train: pl.DataFrame, as_of: datetime, cfg: TrainingConfig, *, device: Device,
    out_dir: Path, progress: bool = True, mlm_cfg: MlmConfig | None = None, hybrid_cfg: HybridConfig | None = None,
    selection_cfg: SelectionConfig | None = None,
) -> ChainResult:
    """Train MLM -> teacher -> student on ``catalog`` and the training baskets ``train``
    (order_id, ordered_at, items; all before ``as_of``)."""
    _seed(cfg)
    _claim(out_dir, cfg, catalog, train, as_of)
    seconds: dict[str, float] = {}
    t0 = time.monotonic()
    mlm_result = _finished_mlm(out_dir / "mlm") or mlm.run_mlm(
        catalog, mlm_cfg or mlm_config(cfg), device=device, out_dir=out_dir / "mlm", progress=progress
    )
    seconds["mlm"] = time.monotonic() - t0

    t0 = time.monotonic()
    task = pairs.build_task(catalog, mlm.catalog_texts(catalog), train, as_of, cfg.pairs)
    seconds["pairs"] = time.monotonic() - t0
    logger.info("chain: %s", task.summary())

    t0 = time.monotonic()
    teacher_result = _finished(out_dir / "teacher", "teacher") or teacher.train_teacher(
        task, mlm_result.model_dir, cfg, device=device, out_dir=out_dir / "teacher", progress=progress
    )
    seconds["teacher"] = time.monotonic() - t0

    t0 = time.monotonic()
    student_result = _finished(out_dir / "student", "student") or student.train_student(
        task, Path(student_source(cfg, mlm_result.model_dir)), teacher_result.model_dir, cfg, device=device,
        out_dir=out_dir / "student", progress=progress,
    )
    seconds["student"] = time.monotonic() - t0

    t0 = time.monotonic()
    gnn_result, warm, cold = train_graph_stage(
        catalog, train, as_of, cfg, task, student_result.model_dir, device=device, out_dir=out_dir / "gnn",
        hybrid_cfg=hybrid_cfg or HybridConfig(), selection_cfg=selection_cfg,
    )
    seconds["gnn"] = time.monotonic() - t0
    return ChainResult(mlm_result, teacher_result, student_result, task, gnn_result,
                       {"warm": warm.as_dict(), "cold": cold.as_dict()}, seconds)


def train_graph_stage(
    catalog: pl.DataFrame, train: pl.DataFrame, as_of: datetime, cfg: TrainingConfig, task: pairs.PairTask,
    student_dir: Path, *, device: Device, out_dir: Path, hybrid_cfg: HybridConfig,
    selection_cfg: SelectionConfig | None = None,
):
    """Stage 4: the GNN over the fit window's graph (student embeddings as node features and
    text edges), then the hybrid weights tuned on the held-out tail; the weights are saved
    with the GNN model (hybrid.WEIGHTS_FILE). Returns (GnnResult, warm, cold weights)."""
    from prodassoc_core import gnn, graph, hybrid

    text = catalog_vectors(student_dir, catalog, device=device, max_length=cfg.student.max_length)
    fit_graph = graph.fit_window_graph(catalog[PRODUCT_ID].to_list(), train, as_of, cfg.pairs.validation_days, text,
                                       cfg.graph)
    logger.info("chain: graph %s", fit_graph.summary())
    result = gnn.train_gnn(fit_graph, task, cfg.gnn.model_copy(update={"seed": _seed(cfg)}), device=device,
                           out_dir=out_dir)
    saved = hybrid.read_weights(result.model_dir)
    if saved is not None:
        return result, *saved
    model, _ = gnn.load_gnn(result.model_dir)
    node_vectors = gnn.node_embeddings(model, fit_graph, device)
    tune_half, cooc = tuning_half(train, as_of, cfg, selection_cfg or SelectionConfig())
    warm, cold, grid = hybrid.tune_weights(
        catalog, train, as_of, hybrid.HybridModel(text, node_vectors, hybrid.Weights(), hybrid.Weights()), cfg.pairs,
        candidates_k=hybrid_cfg.candidates_k, decayed=cooc, step=hybrid_cfg.weight_step, queries=tune_half,
    )
    grid.write_parquet(out_dir / "hybrid_weight_grid.parquet")
    hybrid.write_weights(result.model_dir, warm, cold, cooc)
    logger.info("chain: hybrid weights warm %s cold %s, co-purchase %s", warm, cold, cooc)
    return result, warm, cold


def tuning_half(train: pl.DataFrame, as_of: datetime, cfg: TrainingConfig, selection_cfg: SelectionConfig):
    """(the tail products the hybrid is tuned on, its co-purchase settings chosen on them): the
    other half of the tail's products is kept for the serving gate (retrain.gate)."""
    from prodassoc_core import pairs, selection

    fit, held = pairs.split_fit_validation(train, as_of, cfg.pairs.validation_days)
    tune_half, _ = selection.split_queries(sorted({i for b in pairs.items_of(train) for i in b}))
    wanted = set(tune_half)
    relevant = {p: qs for p, qs in selection.tail_relevance(held, selection_cfg).items() if p in wanted}
    cut = as_of - timedelta(days=cfg.pairs.validation_days)
    return tune_half, selection.best_decayed(fit, cut, relevant, selection_cfg)


CHAIN_CONFIG = "chain_config.json"
# Settings a rerun into the same directory may change: time budgets and bookkeeping.
RESUMABLE = {
    "training.mlm_minutes", "training.teacher.max_minutes", "training.student.max_minutes",
    "training.student.teacher_minutes", "training.teacher.checkpoint_every", "training.student.checkpoint_every",
    "training.teacher.eval_batch_size", "training.student.embed_batch_size", "training.schedule",
    "training.experiment", "training.device",
}


def chain_key(cfg: TrainingConfig, catalog: pl.DataFrame, train: pl.DataFrame, as_of: datetime) -> dict[str, Any]:
    """What a chain directory is trained from: the settings and the data's shape and window."""
    return {
        "training": cfg.model_dump(mode="json"),
        "as_of": as_of.isoformat(),
        "catalog_products": catalog.height,
        "training_baskets": train.height,
    }


def _claim(out_dir: Path, cfg: TrainingConfig, catalog: pl.DataFrame, train: pl.DataFrame, as_of: datetime) -> None:
    """Record what ``out_dir`` is trained from, or refuse a directory trained from something else
    (finished stages are reused, so a silent mismatch would mix two runs)."""
    from prodassoc_core.training import check_resumable, write_json

    key = chain_key(cfg, catalog, train, as_of)
    path = out_dir / CHAIN_CONFIG
    if path.is_file():
        check_resumable(json.loads(path.read_text()), key, out_dir, RESUMABLE)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(path, key)


def _finished(out_dir: Path, stage: str) -> StageResult | None:
    """A stage finished by an earlier call (its results file and model exist), else None."""
    path = out_dir / f"{stage}_results.json"
    if not path.is_file() or not (out_dir / MODEL_SUBDIR).is_dir():
        return None
    data = json.loads(path.read_text())
    data["model_dir"] = Path(data["model_dir"])
    logger.info("chain: %s already trained (%s), reused", stage, path)
    return StageResult(**data)


def _finished_mlm(out_dir: Path) -> mlm.MlmResult | None:
    path = out_dir / mlm.RESULTS_FILE
    if not path.is_file() or not (out_dir / MODEL_SUBDIR).is_dir():
        return None
    data = json.loads(path.read_text())
    data["model_dir"], data["checkpoint_dir"] = Path(data["model_dir"]), Path(data["checkpoint_dir"])
    logger.info("chain: mlm already trained (%s), reused", path)
    return mlm.MlmResult(**data)


# --- using the models ------------------------------------------------------------------------


def catalog_vectors(model_dir: str | Path, catalog: pl.DataFrame, *, device: Device, batch_size: int = 256,
                    max_length: int = 64) -> np.ndarray:
    """Unit embeddings of every catalog product's text with the encoder in ``model_dir``."""
    model, tokenizer = embeddings.load_encoder(model_dir)
    return embeddings.embed_texts(model, tokenizer, mlm.catalog_texts(catalog), device=device,
                                  batch_size=batch_size, max_length=max_length)


def text_associations(
    model_dir: str | Path, catalog: pl.DataFrame, top_k: int, *, device: Device, method: str,
    queries: Sequence[str] | None = None, max_length: int = 64,
) -> pl.DataFrame:
    """Each product's (or each query's) ``top_k`` nearest catalog products by embedding cosine."""
    vectors = catalog_vectors(model_dir, catalog, device=device, max_length=max_length)
    return embeddings.top_k_similar(catalog[PRODUCT_ID].to_list(), vectors, top_k, queries=queries, method=method)


def teacher_reranked(
    teacher_dir: str | Path, catalog: pl.DataFrame, shortlist: pl.DataFrame, *, device: Device, seed: int,
    max_length: int = 64,
) -> pl.DataFrame:
    """``shortlist`` (product_id, associated_product_id) reordered by the teacher's logits."""
    model, tokenizer = teacher.load_teacher(teacher_dir, seed=seed)
    return teacher.rerank(model, tokenizer, mlm.catalog_texts(catalog), catalog[PRODUCT_ID].to_list(), shortlist,
                          device=device, max_length=max_length)


def embeddings_table(catalog: pl.DataFrame, vectors: np.ndarray, model_uri: str) -> pa.Table:
    """The ``product_embeddings`` table: one unit vector per catalog product and the model it came from."""
    dim = vectors.shape[1]
    flat = pa.array(vectors.astype(np.float32).ravel(), type=pa.float32())
    return PRODUCT_EMBEDDINGS.conform(pa.table({
        PRODUCT_ID: pa.array(catalog[PRODUCT_ID].to_list(), type=pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(flat, dim).cast(pa.list_(pa.float32())),
        "dim": pa.array(np.full(len(vectors), dim, dtype=np.int32)),
        "model_uri": pa.array([model_uri] * len(vectors), type=pa.string()),
    }))


def summary(result: ChainResult) -> dict[str, Any]:
    return {
        "task": result.task.summary(),
        "seconds": result.seconds,
        "mlm": result.mlm.summary(),
        "teacher": result.teacher.summary(),
        "student": result.student.summary(),
        "gnn": result.gnn.summary() if result.gnn is not None else None,
        "hybrid_weights": result.weights,
    }


def tiny_training_config(seed: int, **overrides: Any) -> TrainingConfig:
    """The tests' chain: the 2-layer hidden-64 scratch BERT (mlm.TINY_ENCODER), a few dozen
    steps per stage, a 7-day held-out tail (the shipped sample spans 32 days)."""
    base = TrainingConfig(seed=seed)
    values: dict[str, Any] = dict(
        encoder=mlm.TINY_ENCODER, mlm_epochs=1.0, mlm_learning_rate=5e-3,
        pairs=base.pairs.model_copy(update={"validation_days": 7, "validation_min_baskets": 3}),
        teacher=base.teacher.model_copy(update={"max_steps": 30, "max_length": 32, "learning_rate": 1e-3,
                                                "max_validation_pairs": 200, "checkpoint_every": 10}),
        student=base.student.model_copy(update={"max_steps": 30, "layers": 1, "max_lists": 300, "learning_rate": 1e-3,
                                                "checkpoint_every": 10}),
        gnn=base.gnn.model_copy(update={"max_epochs": 6, "steps_per_epoch": 4, "batch_size": 256, "hidden_dim": 32,
                                        "out_dim": 32, "eval_every": 2, "checkpoint_every": 2}),
        device="cpu",
    )
    values.update(overrides)
    return base.model_copy(update=values)
