"""Retraining: the language-model chain on the training window, registered, behind the champion gate.

    landing --ingest, baskets (pipeline.py)--> training baskets before as_of, staged catalog
            --train_chain (chain.py)--> MLM, teacher, student under <data>/models/as_of=D
            --register--> MLflow runs + versions of prodassoc-mlm / -teacher / -student
            --gate--> the student becomes @champion only if it beats the current champion

The gate scores both students the same way: the evaluation protocol (NDCG@10 over every
product with associations, lists padded with popular products) on the held-out tail of the
training window (``pairs.validation_days`` before ``as_of``), which neither model trained on.
The current champion is downloaded and re-scored on today's tail, so the comparison is on
the same products and the same relevance sets. A promoted student takes its teacher and MLM
model with it (all three get the alias); a student that does not win stays a registered
version tagged ``prodassoc.gate=candidate``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from prodassoc_core import chain, embeddings, evaluation, ingest, mlm, pairs, pipeline, tracking
from prodassoc_core.champions import AS_OF_TAG
from prodassoc_core.contracts import PRODUCT_ID
from prodassoc_core.settings import Settings, TrainingConfig
from prodassoc_core.training import Device, StageResult, choose_device

logger = logging.getLogger("prodassoc.retrain")

GATE_TAG = "prodassoc.gate"


@dataclass
class GateDecision:
    promoted: bool
    candidate_score: float
    champion_score: float | None  # None: there was no champion
    champion_version: str | None
    metric: str = "gate_ndcg"

    @property
    def message(self) -> str:
        if self.champion_score is None:
            return f"no champion yet: candidate (NDCG@10 {self.candidate_score:.4f}) promoted"
        verdict = "beats" if self.promoted else "does not beat"
        return (
            f"candidate NDCG@10 {self.candidate_score:.4f} {verdict} champion v{self.champion_version} "
            f"({self.champion_score:.4f}) on the held-out tail"
            + ("" if self.promoted else ": kept as a candidate, champion unchanged")
        )


@dataclass
class TrainReport:
    as_of: date
    versions: dict[str, str]  # stage -> registered version
    decision: GateDecision
    chain: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)


def training_data(settings: Settings, as_of: date) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(catalog, training baskets): ingest what landed before as_of, then build the window's baskets."""
    pipeline.ingest_landing(settings, as_of)
    baskets_path = pipeline.build_baskets(settings, as_of)
    return ingest.read_staged_catalog(settings.staging_dir), pl.read_parquet(baskets_path)


def models_dir(settings: Settings, as_of: date) -> Path:
    """``<data>/models/as_of=D/cfg-<hash>``: a rerun with the same settings resumes (and reuses
    finished stages); different settings (other than time budgets) train in a new directory."""
    import hashlib
    import json

    from prodassoc_core.training import flatten

    flat = {k: v for k, v in flatten({"training": settings.training.model_dump(mode="json")}).items()
            if k not in chain.RESUMABLE}
    digest = hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:10]
    return settings.data_dir / "models" / f"as_of={as_of.isoformat()}" / f"cfg-{digest}"


def device_of(cfg: TrainingConfig) -> Device:
    return choose_device(None if cfg.device == "auto" else cfg.device)


def gate_score(model_dir: str | Path, catalog: pl.DataFrame, task: pairs.PairTask, popular: list[str],
               device: Device, k: int = 10) -> float:
    """NDCG@k of an encoder's nearest products on the held-out tail (lists padded with popular ones)."""
    if not task.validation:
        raise ValueError("the held-out tail has no product with associations: cannot gate; widen pairs.validation_days")
    model, tokenizer = embeddings.load_encoder(model_dir)
    vectors = embeddings.embed_texts(model, tokenizer, mlm.catalog_texts(catalog), device=device)
    ranked = embeddings.top_k_similar(catalog[PRODUCT_ID].to_list(), vectors, k, queries=sorted(task.validation))
    filled = evaluation.fill_with_popular(ranked, task.validation, popular, k)
    return float(evaluation.score_associations(filled, task.validation, set(), k)["ndcg_all"])


def gate(
    settings: Settings, candidate: tracking.RegisteredRun, candidate_dir: Path, catalog: pl.DataFrame,
    task: pairs.PairTask, popular: list[str], device: Device, work_dir: Path,
) -> GateDecision:
    """Score candidate and current champion on the same held-out tail; promote only a strict win."""
    cfg = settings.training
    uri, name, alias = settings.tracking_uri, cfg.student.registered_model, cfg.champion_alias
    candidate_score = gate_score(candidate_dir, catalog, task, popular, device)
    champion = tracking.aliased_version(uri, name, alias)
    champion_score = None
    if champion is not None:
        champion_dir = tracking.registered_model_dir(uri, champion.uri, work_dir / f"champion-v{champion.version}")
        champion_score = gate_score(champion_dir, catalog, task, popular, device)
    promoted = champion_score is None or candidate_score > champion_score
    decision = GateDecision(promoted, candidate_score, champion_score, champion.version if champion else None)
    tracking.tag_version(uri, name, candidate.model_version, {
        GATE_TAG: "champion" if promoted else "candidate", "prodassoc.gate_ndcg": f"{candidate_score:.6f}",
        "prodassoc.gate_champion_ndcg": "" if champion_score is None else f"{champion_score:.6f}",
    })
    logger.info("gate: %s", decision.message)
    return decision


def _log_stage(settings: Settings, result: StageResult, registered: str, as_of: date, tags: dict[str, str]):
    metrics = {f"before_{k}": v for k, v in result.before.items()} | {f"after_{k}": v for k, v in result.after.items()}
    metrics |= {"steps": result.steps, "examples_per_s": result.examples_per_s, "train_seconds": result.train_seconds}
    params = {"stage": result.stage, "total_steps": result.total_steps, "as_of": as_of.isoformat(),
              "training": settings.training.model_dump(mode="json"), **{f"task.{k}": v for k, v in result.extra.get(
                  "task", {}).items()}}
    results_file = result.model_dir.parent / f"{result.stage}_results.json"
    return tracking.log_model_run(
        settings.tracking_uri, settings.training.experiment, settings.data_dir / "mlartifacts",
        run_name=f"{result.stage} as_of={as_of.isoformat()}", params=params, metrics=metrics,
        model_dir=result.model_dir, registered_model=registered, series={"train_loss": result.train_losses},
        tags={"stage": result.stage, "stop_reason": result.stop_reason, **tags},
        files=[results_file] if results_file.is_file() else None,
    )


def _log_gnn(settings: Settings, result: chain.ChainResult, as_of: date, tags: dict[str, str]):
    g = result.gnn
    metrics = {f"before_{k}": v for k, v in g.before.items()} | {f"after_{k}": v for k, v in g.after.items()}
    metrics |= {"epochs": g.epochs, "best_epoch": g.best_epoch, "edges_per_s": g.edges_per_s,
                "train_seconds": g.train_seconds}
    metrics |= {f"hybrid_{seg}_{c}": w for seg, ws in result.weights.items() for c, w in ws.items()}
    params = {"stage": "gnn", "as_of": as_of.isoformat(), "gnn": settings.training.gnn.model_dump(mode="json"),
              "graph": settings.training.graph.model_dump(mode="json")}
    results_file = g.model_dir.parent / "gnn_results.json"
    return tracking.log_model_run(
        settings.tracking_uri, settings.training.experiment, settings.data_dir / "mlartifacts",
        run_name=f"gnn as_of={as_of.isoformat()}", params=params, metrics=metrics, model_dir=g.model_dir,
        registered_model=settings.training.gnn_registered_model, series={"train_loss": g.losses},
        tags={"stage": "gnn", "stop_reason": g.stop_reason, **tags},
        files=[results_file] if results_file.is_file() else None,
    )


def register(settings: Settings, result: chain.ChainResult, as_of: date) -> dict[str, tracking.RegisteredRun]:
    """One MLflow run per stage, each registered (prodassoc-mlm, -teacher, -student)."""
    cfg = settings.training
    tags = {AS_OF_TAG: as_of.isoformat(), "prodassoc.seed": str(cfg.seed)}
    out = {
        "mlm": mlm.log_mlm_run(result.mlm, chain.mlm_config(cfg), tracking_uri=settings.tracking_uri,
                               artifact_root=settings.data_dir / "mlartifacts", run_name=f"mlm as_of={as_of}"),
        "teacher": _log_stage(settings, result.teacher, cfg.teacher.registered_model, as_of, tags),
        "student": _log_stage(settings, result.student, cfg.student.registered_model, as_of, tags),
    }
    if result.gnn is not None:
        out["gnn"] = _log_gnn(settings, result, as_of, tags)
    for stage in ("mlm",):
        tracking.tag_version(settings.tracking_uri, out[stage].model_name, out[stage].model_version, tags)
    lineage = {f"prodassoc.{s}_version": r.model_version for s, r in out.items()}
    for reg in out.values():
        tracking.tag_version(settings.tracking_uri, reg.model_name, reg.model_version, lineage)
    return out


def train_models(settings: Settings, as_of: date, *, progress: bool = False) -> TrainReport:
    """The whole retraining run for ``as_of``: data, chain, registration, gate."""
    cfg = settings.training
    if cfg.seed is None:
        raise ValueError("training.seed is required to train (PRODASSOC_TRAINING__SEED or `prodassoc train --seed`)")
    device = device_of(cfg)
    catalog, train = training_data(settings, as_of)
    start = datetime.combine(as_of, time())
    out_dir = models_dir(settings, as_of)
    result = chain.train_chain(catalog, train, start, cfg, device=device, out_dir=out_dir, progress=progress,
                               hybrid_cfg=settings.hybrid)
    registered = register(settings, result, as_of)
    popular = [result.task.space.product_ids[i] for i in result.task.space.popular]
    decision = gate(settings, registered["student"], result.student.model_dir, catalog, result.task, popular, device,
                    out_dir / "gate")
    if decision.promoted:
        for reg in registered.values():
            tracking.set_alias(settings.tracking_uri, reg.model_name, reg.model_version, cfg.champion_alias)
    return TrainReport(as_of, {s: r.model_version for s, r in registered.items()}, decision, chain.summary(result),
                       result.seconds)


def champion_embeddings(settings: Settings, catalog: pl.DataFrame, work_dir: Path) -> tuple[np.ndarray, str] | None:
    """The champion student's embeddings of ``catalog`` and its model URI; None without a champion."""
    cfg = settings.training
    champion = tracking.aliased_version(settings.tracking_uri, cfg.student.registered_model, cfg.champion_alias)
    if champion is None:
        return None
    model_dir = tracking.registered_model_dir(settings.tracking_uri, champion.uri, work_dir / f"v{champion.version}")
    vectors = chain.catalog_vectors(model_dir, catalog, device=device_of(cfg), max_length=cfg.student.max_length)
    return vectors, champion.uri
