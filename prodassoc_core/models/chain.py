"""The language-model chain end to end, and what uses its models.

    catalog --run_mlm (mlm.py)--> domain-adapted encoder            out_dir/mlm/model
    catalog + training baskets --build_task (pairs.py)--> pairs
    pairs + MLM encoder --train_teacher (teacher.py)--> cross-encoder out_dir/teacher/model
    pairs + teacher --train_student (student.py)--> bi-encoder      out_dir/student/model

Every stage resumes from its own checkpoints under ``out_dir``, so rerunning ``train_chain``
after a crash continues where it stopped (a finished stage is not retrained: its model
directory and results file are reused).

Time: one budget for the whole chain (``training.max_minutes``; by default sized from the
number of training baskets, ``chain_minutes``) is split across the stages by
``training.budget`` (``ChainBudget``). Each stage gets a ``Deadline`` that covers all it does:
its data (pairs, teacher lists, graph), validation before and after on one bounded sample,
training and checkpoints. A stage that runs out stops cleanly with a checkpoint and a usable
model (``stop_reason`` "budget") and the chain goes on; time a stage leaves unused flows to
the stages after it.

Under ``torchrun`` every rank calls ``train_chain``: MLM, teacher and student train with DDP
(training.Distributed), rank 0 alone writes files and MLflow (other ranks pass no tracker) and
trains the GNN, which stays one process; the other ranks return after the student.

MLflow: given a ``tracking.TrainingRun`` (``tracker``), each stage's run is opened when the
stage starts and ended when it ends (FAILED or KILLED when the stage raised), under the
training's parent run, in one experiment; the stage's configuration is logged at its start,
per-step metrics while it runs (``training.record``: loss, learning rate, throughput,
validation), its summary at its end. ``ChainResult.runs`` names the runs, which
``retrain.register`` then gives the models (``stage_record``: what each run holds).

``text_associations`` ranks products by the cosine of an encoder's embeddings (any stage, or
the pretrained base); ``teacher_reranked`` reorders a shortlist with the teacher;
``embeddings_table`` is the published ``product_embeddings`` table.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from prodassoc_core.data import PRODUCT_EMBEDDINGS, PRODUCT_ID, warehouse
from prodassoc_core.models import embeddings, mlm, pairs, student, teacher, tracking
from prodassoc_core.models.encoders import resolve_pretrained
from prodassoc_core.models.training import (
    MODEL_SUBDIR,
    Deadline,
    Device,
    StageResult,
    budget_note,
    is_main_process,
    recording,
)
from prodassoc_core.ops import HybridConfig, MlmConfig, SelectionConfig, TrainingConfig

logger = logging.getLogger("prodassoc.chain")

STAGES = ("mlm", "teacher", "student", "gnn")
# The default budget (training.max_minutes None): minutes_per_1k_baskets, within these bounds.
AUTO_MINUTES = (2.0, 30.0)


def chain_minutes(cfg: TrainingConfig, training_baskets: int) -> float:
    """The chain's budget in minutes: ``training.max_minutes``, or by default
    ``minutes_per_1k_baskets`` per 1,000 training baskets within ``AUTO_MINUTES`` (the shipped
    sample's 2,555 baskets: 2.6 min; Online Retail's 19,773: 19.8 min)."""
    if cfg.max_minutes is not None:
        return cfg.max_minutes
    low, high = AUTO_MINUTES
    return min(high, max(low, cfg.minutes_per_1k_baskets * training_baskets / 1000))


def stage_minutes(cfg: TrainingConfig, stage: str) -> float | None:
    """A stage's own budget, when one is set (it replaces the stage's share of the total)."""
    return {"mlm": cfg.mlm_minutes, "teacher": cfg.teacher.max_minutes, "student": cfg.student.max_minutes,
            "gnn": cfg.gnn.max_minutes}[stage]


@dataclass
class ChainBudget:
    """The chain's time: ``total`` (a deadline for all stages) and how it is split.

    ``deadline(stage, pending)`` is called when a stage starts; ``pending`` are the stages
    still to run after it. A stage with its own budget gets that; the others share what is
    left of the total — less the own budgets of pending stages — in proportion to
    ``training.budget``'s shares among this stage and the pending ones, so time an early
    stage did not use goes to the later ones."""

    cfg: TrainingConfig
    total: Deadline

    def deadline(self, stage: str, pending: Sequence[str]) -> Deadline:
        own = stage_minutes(self.cfg, stage)
        if own is not None:
            return Deadline.minutes(own)
        left = max(0.0, self.total.remaining())
        kept = sum(60 * (stage_minutes(self.cfg, p) or 0.0) for p in pending)
        shares = self.cfg.budget.model_dump()
        sharing = [stage, *(p for p in pending if stage_minutes(self.cfg, p) is None)]
        weight = sum(shares[p] for p in sharing)
        part = shares[stage] / weight if weight > 0 else 1.0 / len(sharing)
        return Deadline.after(max(0.0, left - kept) * part)


@dataclass(frozen=True)
class FitWindow:
    """What the GNN stage computed on the fit window (the training baskets before the held-out
    tail) to tune the hybrid weights: the embeddings of the student and GNN in ``student_dir`` and
    ``gnn_dir`` (``model``, untuned weights) and the co-purchase ``signals``
    (``hybrid.signals_for`` at ``cut`` with ``candidates_k`` and ``decayed``). The serving gate
    scores that candidate on the same window, so it reuses them rather than embedding the
    catalog, building the graph and counting co-purchases again."""

    student_dir: Path
    gnn_dir: Path
    cut: datetime
    candidates_k: int
    decayed: Any  # methods.DecayedConfig
    model: Any  # hybrid.HybridModel
    signals: Any  # hybrid.Signals

    def serves(self, student_dir: Path, gnn_dir: Path | None, cut: datetime, candidates_k: int, decayed: Any) -> bool:
        """Whether these were computed for those models, that window and those settings."""
        return (self.student_dir, self.gnn_dir, self.cut, self.candidates_k, self.decayed) == (
            student_dir, gnn_dir, cut, candidates_k, decayed)


@dataclass
class ChainResult:
    mlm: mlm.MlmResult
    teacher: StageResult
    student: StageResult
    task: pairs.PairTask
    gnn: Any = None  # gnn.GnnResult
    weights: dict[str, dict[str, float]] = field(default_factory=dict)  # hybrid weights: warm, cold
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per stage (this call)
    budgets: dict[str, float] = field(default_factory=dict)  # seconds each stage was given (this call)
    budget_seconds: float | None = None  # the chain's whole budget
    runs: dict[str, str] = field(default_factory=dict)  # stage -> its MLflow run id (with a tracker)
    # None: the weights were tuned by an earlier call, or the serving gate has used and released it
    fit_window: FitWindow | None = field(default=None, repr=False)

    def model_dir(self, stage: str) -> Path:
        return getattr(self, stage).model_dir


def mlm_config(cfg: TrainingConfig) -> MlmConfig:
    """The MLM stage's configuration inside the chain (its run goes to the training experiment)."""
    return MlmConfig(
        seed=_seed(cfg), encoder=cfg.encoder, epochs=cfg.mlm_epochs, learning_rate=cfg.mlm_learning_rate,
        max_minutes=cfg.mlm_minutes, max_heldout_texts=cfg.mlm_heldout_texts, registered_model="prodassoc-mlm",
        experiment=cfg.experiment,
    )


# --- what each stage's MLflow run holds -------------------------------------------------------


@dataclass
class StageRecord:
    """A stage's MLflow run: params, summary metrics (logged at step 0), tags, per-step series
    (only for a run logged after the fact: a live run has them already) and result files."""

    params: dict[str, Any]
    metrics: dict[str, float]
    tags: dict[str, str]
    series: dict[str, list[float]]
    files: list[Path]


def registered_name(cfg: TrainingConfig, stage: str) -> str:
    return {"mlm": mlm_config(cfg).registered_model, "teacher": cfg.teacher.registered_model,
            "student": cfg.student.registered_model, "gnn": cfg.gnn_registered_model}[stage]


def start_params(stage: str, cfg: TrainingConfig, as_of: date, mlm_cfg: MlmConfig | None = None) -> dict[str, Any]:
    """The params a stage's run gets when the stage starts: its configuration."""
    if stage == "mlm":
        return (mlm_cfg or mlm_config(cfg)).model_dump(mode="json")
    if stage == "gnn":
        return {"stage": "gnn", "as_of": as_of.isoformat(), "gnn": cfg.gnn.model_dump(mode="json"),
                "graph": cfg.graph.model_dump(mode="json")}
    return {"stage": stage, "as_of": as_of.isoformat(), "training": cfg.model_dump(mode="json")}


def stage_record(stage: str, result: Any, cfg: TrainingConfig, as_of: date, *,
                 weights: dict[str, dict[str, float]] | None = None, mlm_cfg: MlmConfig | None = None) -> StageRecord:
    """What the MLflow run of ``stage`` (its ``result``: MlmResult, StageResult or GnnResult)
    holds; ``weights``: the hybrid weights (GNN stage)."""
    if stage == "mlm":
        params, metrics, tags = mlm.run_record(result, mlm_cfg or mlm_config(cfg))
        files_of, series = result.model_dir.parent / mlm.RESULTS_FILE, {"train_loss": result.train_losses}
    elif stage == "gnn":
        params = start_params(stage, cfg, as_of)
        metrics = _before_after(result)
        metrics |= {"epochs": result.epochs, "best_epoch": result.best_epoch, "edges_per_s": result.edges_per_s,
                    "train_seconds": result.train_seconds}
        metrics |= {f"hybrid_{seg}_{c}": w for seg, ws in (weights or {}).items() for c, w in ws.items()}
        tags = {"stage": "gnn", "stop_reason": result.stop_reason}
        files_of, series = result.model_dir.parent / "gnn_results.json", {"epoch_loss": result.losses}
    else:
        metrics = _before_after(result)
        metrics |= {"steps": result.steps, "examples_per_s": result.examples_per_s,
                    "train_seconds": result.train_seconds}
        params = start_params(stage, cfg, as_of) | {"total_steps": result.total_steps} | {
            f"task.{k}": v for k, v in result.extra.get("task", {}).items()}
        tags = {"stage": stage, "stop_reason": result.stop_reason}
        files_of, series = result.model_dir.parent / f"{stage}_results.json", {"train_loss": result.train_losses}
    return StageRecord(params, metrics, tags, series, [files_of] if files_of.is_file() else [])


def _before_after(result: Any) -> dict[str, float]:
    return {f"before_{k}": v for k, v in result.before.items()} | {f"after_{k}": v for k, v in result.after.items()}


@contextlib.contextmanager
def _stage_run(tracker: tracking.TrainingRun | None, stage: str, cfg: TrainingConfig, as_of: date,
               mlm_cfg: MlmConfig) -> Iterator[tracking.LiveRun | None]:
    """The stage's MLflow run, open while the stage runs and receiving its per-step metrics
    (nothing without a tracker); ended FAILED or KILLED if the stage raises."""
    if tracker is None:
        yield None
        return
    tags = {"encoder": mlm_cfg.encoder.kind} if stage == "mlm" else {}
    with tracker.stage(stage, run_name=f"{stage} as_of={as_of.isoformat()}", tags=tags) as run, recording(run):
        run.log_params(start_params(stage, cfg, as_of, mlm_cfg))
        yield run


def _end_stage_run(run: tracking.LiveRun | None, record: StageRecord, cfg: TrainingConfig, stage: str, as_of: date,
                   mlm_cfg: MlmConfig, reused: bool) -> None:
    """The stage's summary in its run, before the run ends: params known only now, summary
    metrics, ``stop_reason`` (and, for a stage reused from an earlier call, its loss series)."""
    if run is None:
        return
    started = start_params(stage, cfg, as_of, mlm_cfg)
    flat_start = dict(tracking.flat_params(started))
    run.log_params({k: v for k, v in tracking.flat_params(record.params) if k not in flat_start})
    run.log(0, record.metrics)
    if reused:  # trained by an earlier call: nothing was logged while it trained here
        for key, values in record.series.items():
            for i, v in enumerate(values):
                run.log(i + 1, {key: v})
    tags = {k: v for k, v in record.tags.items() if k != "stage"}
    run.set_tags(tags | ({"prodassoc.reused": "true"} if reused else {}))


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
    selection_cfg: SelectionConfig | None = None, tracker: tracking.TrainingRun | None = None,
) -> ChainResult:
    """Train MLM -> teacher -> student -> GNN on ``catalog`` and the training baskets ``train``
    (order_id, ordered_at, items; all before ``as_of``), within ``chain_minutes`` split by
    ``ChainBudget``. ``progress``: tqdm bars (a terminal), else progress log lines. ``tracker``:
    each stage's MLflow run, live, under it (module docstring)."""
    _seed(cfg)
    _claim(out_dir, cfg, catalog, train, as_of)
    minutes = chain_minutes(cfg, train.height)
    budget = ChainBudget(cfg, Deadline.minutes(minutes))
    logger.info("chain: time budget %.1f min for %d training baskets (%s), split %s", minutes, train.height,
                "training.max_minutes" if cfg.max_minutes is not None else "sized from the data",
                {k: v for k, v in cfg.budget.model_dump().items() if k in STAGES})
    seconds: dict[str, float] = {}
    budgets: dict[str, float] = {}
    pending = [s for s in STAGES if not _is_finished(out_dir, s)]
    day = as_of.date()
    mlm_cfg = mlm_cfg or mlm_config(cfg)

    def begin(stage: str) -> Deadline:
        later = pending[pending.index(stage) + 1:] if stage in pending else []
        deadline = budget.deadline(stage, later) if stage in pending else Deadline()
        if deadline.bounded:
            budgets[stage] = max(0.0, deadline.remaining())
        return deadline

    def end(stage: str, t0: float, how_far: str) -> None:
        seconds[stage] = time.monotonic() - t0
        logger.info("chain: %s %s; %s", stage, how_far, budget_note(seconds[stage], budgets.get(stage)))
        drop_finished_checkpoints(out_dir, stage, cfg)

    def close(run, stage: str, result: Any, **kw: Any) -> None:
        _end_stage_run(run, stage_record(stage, result, cfg, day, mlm_cfg=mlm_cfg, **kw), cfg, stage, day, mlm_cfg,
                       reused=stage not in pending)

    with _stage_run(tracker, "mlm", cfg, day, mlm_cfg) as run:
        t0 = time.monotonic()
        deadline = begin("mlm")
        mlm_result = _finished_mlm(out_dir / "mlm") or mlm.run_mlm(
            catalog, mlm_cfg.model_copy(update={"max_minutes": None}), device=device,
            out_dir=out_dir / "mlm", progress=progress, deadline=deadline, progress_seconds=cfg.progress_seconds,
        )
        end("mlm", t0, f"{mlm_result.steps}/{mlm_result.total_steps} steps ({mlm_result.stop_reason})")
        close(run, "mlm", mlm_result)

    with _stage_run(tracker, "teacher", cfg, day, mlm_cfg) as run:
        t0 = time.monotonic()
        deadline = begin("teacher")  # the pairs are the teacher's data: its budget covers them
        task = pairs.build_task(catalog, mlm.catalog_texts(catalog), train, as_of, cfg.pairs)
        seconds["pairs"] = time.monotonic() - t0
        logger.info("chain: %s", task.summary())
        teacher_result = _finished(out_dir / "teacher", "teacher") or teacher.train_teacher(
            task, mlm_result.model_dir, cfg, device=device, out_dir=out_dir / "teacher", progress=progress,
            deadline=deadline, started=t0,
        )
        end("teacher", t0, _how_far(teacher_result))
        close(run, "teacher", teacher_result)

    with _stage_run(tracker, "student", cfg, day, mlm_cfg) as run:
        t0 = time.monotonic()
        deadline = begin("student")
        student_result = _finished(out_dir / "student", "student") or student.train_student(
            task, Path(student_source(cfg, mlm_result.model_dir)), teacher_result.model_dir, cfg, device=device,
            out_dir=out_dir / "student", progress=progress, deadline=deadline,
        )
        end("student", t0, _how_far(student_result))
        close(run, "student", student_result)

    if not is_main_process():  # under torchrun the GNN (full-graph, one process) is rank 0's alone
        return ChainResult(mlm_result, teacher_result, student_result, task, None, {}, seconds, budgets, minutes * 60)

    from prodassoc_core.models import gnn

    with _stage_run(tracker, "gnn", cfg, day, mlm_cfg) as run:
        t0 = time.monotonic()
        deadline = begin("gnn")
        # The stage embeds the catalog and builds the graph, trains the GNN, then chooses the hybrid's
        # co-purchase setting and tunes its weights (~20-40 s on the sample and on Online Retail): the
        # GNN's training (validation and checkpoints included) must end budget.hybrid_seconds before
        # the stage's deadline, or halfway through the stage when that is earlier.
        keep = min(cfg.budget.hybrid_seconds, 0.5 * max(0.0, deadline.remaining()))
        with gnn.deadline_scope(deadline.minus(keep)):
            gnn_result, warm, cold, fit_window = train_graph_stage(
                catalog, train, as_of, cfg, task, student_result.model_dir, device=device, out_dir=out_dir / "gnn",
                hybrid_cfg=hybrid_cfg or HybridConfig(), selection_cfg=selection_cfg,
            )
        weights = {"warm": warm.as_dict(), "cold": cold.as_dict()}
        end("gnn", t0, f"{gnn_result.epochs}/{cfg.gnn.max_epochs} epochs ({gnn_result.stop_reason})")
        close(run, "gnn", gnn_result, weights=weights)
    logger.info("chain: trained in %.0f s (budget %.0f s)", sum(v for k, v in seconds.items() if k in STAGES),
                minutes * 60)
    return ChainResult(mlm_result, teacher_result, student_result, task, gnn_result, weights, seconds, budgets,
                       minutes * 60, dict(tracker.runs) if tracker is not None else {}, fit_window)


def _how_far(result: StageResult) -> str:
    return f"{result.steps}/{result.total_steps} steps ({result.stop_reason})"


def train_graph_stage(
    catalog: pl.DataFrame, train: pl.DataFrame, as_of: datetime, cfg: TrainingConfig, task: pairs.PairTask,
    student_dir: Path, *, device: Device, out_dir: Path, hybrid_cfg: HybridConfig,
    selection_cfg: SelectionConfig | None = None,
):
    """Stage 4: the GNN over the fit window's graph (student embeddings as node features and
    text edges), then the hybrid weights tuned on the held-out tail; the weights are saved
    with the GNN model (hybrid.WEIGHTS_FILE). Returns (GnnResult, warm, cold weights, the
    FitWindow the weights were tuned on: None when they were tuned by an earlier call)."""
    from prodassoc_core.models import gnn, graph, hybrid

    text = catalog_vectors(student_dir, catalog, device=device, max_length=cfg.student.max_length)
    fit_graph = graph.fit_window_graph(catalog[PRODUCT_ID].to_list(), train, as_of, cfg.pairs.validation_days, text,
                                       cfg.graph)
    logger.info("chain: graph %s", fit_graph.summary())
    result = gnn.train_gnn(fit_graph, task, cfg.gnn.model_copy(update={"seed": _seed(cfg)}), device=device,
                           out_dir=out_dir)
    saved = hybrid.read_weights(result.model_dir)
    if saved is not None:
        return result, *saved, None
    model, _ = gnn.load_gnn(result.model_dir)
    node_vectors = gnn.node_embeddings(model, fit_graph, device)
    tune_half, cooc = tuning_half(train, as_of, cfg, selection_cfg or SelectionConfig())
    untuned = hybrid.HybridModel(text, node_vectors, hybrid.Weights(), hybrid.Weights())
    fit, _ = pairs.split_fit_validation(train, as_of, cfg.pairs.validation_days)
    cut = as_of - timedelta(days=cfg.pairs.validation_days)
    signals = hybrid.signals_for(catalog, fit, cut, untuned, hybrid_cfg.candidates_k, cooc)
    warm, cold, grid = hybrid.tune_weights(
        catalog, train, as_of, untuned, cfg.pairs, candidates_k=hybrid_cfg.candidates_k, decayed=cooc,
        step=hybrid_cfg.weight_step, queries=tune_half, signals=signals,
    )
    grid.write_parquet(out_dir / "hybrid_weight_grid.parquet")
    hybrid.write_weights(result.model_dir, warm, cold, cooc)
    logger.info("chain: hybrid weights warm %s cold %s, co-purchase %s", warm, cold, cooc)
    return result, warm, cold, FitWindow(student_dir, result.model_dir, cut, hybrid_cfg.candidates_k, cooc, untuned,
                                         signals)


def tuning_half(train: pl.DataFrame, as_of: datetime, cfg: TrainingConfig, selection_cfg: SelectionConfig):
    """(the tail products the hybrid is tuned on, its co-purchase settings chosen on them): the
    other half of the tail's products is kept for the serving gate (retrain.gate)."""
    from prodassoc_core.mining import selection
    from prodassoc_core.models import pairs

    fit, held = pairs.split_fit_validation(train, as_of, cfg.pairs.validation_days)
    tune_half, _ = selection.split_queries(sorted({i for b in pairs.items_of(train) for i in b}))
    wanted = set(tune_half)
    relevant = {p: qs for p, qs in selection.tail_relevance(held, selection_cfg).items() if p in wanted}
    cut = as_of - timedelta(days=cfg.pairs.validation_days)
    return tune_half, selection.best_decayed(fit, cut, relevant, selection_cfg)


CHAIN_CONFIG = "chain_config.json"
# Settings a rerun into the same directory may change: time budgets and bookkeeping.
RESUMABLE = {
    "training.max_minutes", "training.minutes_per_1k_baskets", "training.progress_seconds",
    *(f"training.budget.{k}" for k in ("mlm", "teacher", "student", "gnn", "student_lists", "hybrid_seconds")),
    "training.mlm_minutes", "training.teacher.max_minutes", "training.student.max_minutes", "training.gnn.max_minutes",
    "training.student.teacher_minutes", "training.teacher.checkpoint_every", "training.student.checkpoint_every",
    "training.teacher.eval_batch_size", "training.student.embed_batch_size", "training.schedule",
    "training.experiment", "training.device", "training.keep_finished_checkpoints",
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
    from prodassoc_core.data import write_json
    from prodassoc_core.models.training import check_resumable

    key = chain_key(cfg, catalog, train, as_of)
    path = out_dir / CHAIN_CONFIG
    if path.is_file():
        check_resumable(json.loads(path.read_text()), key, out_dir, RESUMABLE)
    out_dir.mkdir(parents=True, exist_ok=True)
    if is_main_process():
        write_json(path, key)


def _is_finished(out_dir: Path, stage: str) -> bool:
    """Whether a rerun reuses the stage as it is (the GNN stage always runs: it resumes itself)."""
    if stage == "gnn":
        return False
    results = mlm.RESULTS_FILE if stage == "mlm" else f"{stage}_results.json"
    return (out_dir / stage / results).is_file() and (out_dir / stage / MODEL_SUBDIR).is_dir()


def drop_finished_checkpoints(out_dir: Path, stage: str, cfg: TrainingConfig) -> int:
    """Remove a finished stage's checkpoints, unless ``training.keep_finished_checkpoints``: a
    rerun reuses the stage from its model and results file (``_is_finished``), never from them,
    and they hold the optimizer's state too (the demo's training left 755 MB of them beside 250 MB
    of models). The GNN stage keeps its own: it resumes itself, and they are small. Returns the
    bytes freed (rank 0 alone removes them)."""
    if cfg.keep_finished_checkpoints or not is_main_process() or not _is_finished(out_dir, stage):
        return 0
    # the stage is finished and saved: a leftover folder must not fail the training
    freed = warehouse.remove_work(out_dir / stage / mlm.CHECKPOINTS, f"chain: {stage} checkpoints")
    if freed:
        logger.info("chain: %s finished; its checkpoints removed (%.0f MB; training.keep_finished_checkpoints "
                    "keeps them)", stage, freed / 1e6)
    return freed


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
        "budgets": result.budgets,
        "budget_seconds": result.budget_seconds,
        "mlm": result.mlm.summary(),
        "teacher": result.teacher.summary(),
        "student": result.student.summary(),
        "gnn": result.gnn.summary() if result.gnn is not None else None,
        "hybrid_weights": result.weights,
    }


def budget_lines(chain_summary: dict[str, Any]) -> list[str]:
    """One line per stage of a ``summary``: how far it got, why it stopped, its time and budget."""
    seconds, budgets = chain_summary.get("seconds", {}), chain_summary.get("budgets", {})
    out = []
    for stage in STAGES:
        s = chain_summary.get(stage)
        if not s:
            continue
        done = f"{s['epochs']} epochs" if stage == "gnn" else f"{s['steps']}/{s['total_steps']} steps"
        out.append(f"{stage}: {done} ({s['stop_reason']}), {budget_note(seconds.get(stage, 0.0), budgets.get(stage))}")
    return out


def tiny_training_config(seed: int, **overrides: Any) -> TrainingConfig:
    """The tests' chain: the 2-layer hidden-64 scratch BERT (mlm.TINY_ENCODER), a few dozen
    steps per stage (MLM one and a half epochs of the catalog's texts, about 45 steps on the
    tests' thousand-product cut of the sample, 20 teacher and 20 student steps, 4 GNN epochs),
    a 7-day held-out tail (the shipped sample spans 32 days). What the tests check is what each
    stage does and records, not how well so few steps train: the stages' learning is tested on
    their own (tests/models/test_mlm.py, test_graph.py)."""
    base = TrainingConfig(seed=seed)
    values: dict[str, Any] = dict(
        encoder=mlm.TINY_ENCODER, mlm_epochs=1.5, mlm_learning_rate=5e-3,
        pairs=base.pairs.model_copy(update={"validation_days": 7, "validation_min_baskets": 3}),
        teacher=base.teacher.model_copy(update={"max_steps": 20, "max_length": 32, "learning_rate": 1e-3,
                                                "max_validation_pairs": 200, "checkpoint_every": 10}),
        student=base.student.model_copy(update={"max_steps": 20, "layers": 1, "max_lists": 300, "learning_rate": 1e-3,
                                                "checkpoint_every": 10}),
        gnn=base.gnn.model_copy(update={"max_epochs": 4, "steps_per_epoch": 4, "batch_size": 256, "hidden_dim": 32,
                                        "out_dim": 32, "eval_every": 2, "checkpoint_every": 2}),
        device="cpu",
    )
    values.update(overrides)
    return base.model_copy(update=values)
