"""Retraining: the language-model chain on the training window, registered, behind the champion gate.

    landing --ingest, baskets (stages.py)--> training baskets before as_of, staged catalog
            --train_chain (chain.py)--> MLM, teacher, student, GNN under <data>/models/as_of=D,
                      each stage an MLflow run logged while it runs (experiment training.experiment,
                      children of one run "train as_of=D")
            --register--> each stage's run holds its model: versions of prodassoc-mlm / -teacher /
                      -student / -gnn
            --gate--> served (and @champion) only if its hybrid beats, on held-out data, both the
                      classic method this catalog would otherwise be served and the model
                      served now

The serving gate works on the held-out tail of the training window (``pairs.validation_days``
before ``as_of``), which no model trained on, with EVAL.md's protocol (NDCG@k, lists padded
with popular products). The tail's products are split in two by a hash of their id
(selection.split_queries): the hybrid weights, its co-purchase settings and the classic method
are tuned on one half; the decision is made on the other, so it is not the tuning's optimism.
Per segment (warm: sold before the tail; cold: never sold) the hybrid is served only where it
beats the classic ranking by ``selection.gate_margin`` on at least ``selection.gate_min_products``
gate products. The candidate is promoted only if it wins at least one segment and, when a model
is served now (trained with data up to ``as_of``), its served ranking (per segment, what won)
beats that model's served ranking on the same products. There is no promotion because nothing
is served yet. A promoted student takes its teacher, MLM model and GNN with it (all get the
alias and ``prodassoc.gate=champion``); a student that does not win stays a registered version
tagged ``prodassoc.gate=candidate`` (``trial`` with ``--no-promote``). Scores and the decision
are tags of the student version.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

import polars as pl

from prodassoc_core.data import PRODUCT_ID, ingest, warehouse
from prodassoc_core.mining import methods, protocol
from prodassoc_core.models import AS_OF_TAG, Device, chain, device_of, embeddings, mlm, pairs, tracking
from prodassoc_core.ops import Settings, locks
from prodassoc_core.pipeline import stages

logger = logging.getLogger("prodassoc.retrain")



@dataclass
class GateDecision:
    promoted: bool
    segments: dict[str, str]  # warm / cold -> hybrid | classic: what the candidate would serve
    scores: dict[str, dict[str, float]]  # classic / candidate / champion -> warm, cold, served (NDCG@k)
    n_products: dict[str, int]  # gate products per segment
    classic: str  # the classic setting compared with (selection.label)
    champion_version: str | None  # the student served now, if any
    reason: str
    trial: bool = False  # --no-promote: decided and recorded, nothing promoted
    metric: str = "gate_ndcg"

    @property
    def candidate_score(self) -> float:
        return self.scores["candidate"]["served"]

    @property
    def champion_score(self) -> float | None:
        return self.scores["champion"]["served"] if "champion" in self.scores else None

    @property
    def message(self) -> str:
        c, h = self.scores["classic"], self.scores["candidate"]
        seg = ", ".join(
            f"{s} {h[s]:.4f} vs classic {c[s]:.4f} on {self.n_products[s]} products -> {self.segments[s]}"
            for s in ("warm", "cold")
        )
        text = f"hybrid vs {self.classic} on the held-out tail: {seg}; {self.reason}"
        return text + (" (trial run: --no-promote)" if self.trial else "")


@dataclass
class TrainReport:
    as_of: date
    versions: dict[str, str]  # stage -> registered version
    decision: GateDecision
    chain: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)


def training_data(settings: Settings, as_of: date) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(catalog, training baskets): ingest what landed before as_of, then build the window's baskets.

    Raises NoDataError when there is too little to train on (``training.min_products``,
    ``training.min_baskets``): the stages would otherwise fail deep inside, on an empty held-out sample."""
    stages.ingest_landing(settings, as_of)
    baskets_path = stages.build_baskets(settings, as_of)
    catalog, baskets = ingest.read_staged_catalog(settings.staging_dir), stages.read_baskets_frame(baskets_path)
    cfg = settings.training
    if catalog.height < cfg.min_products or baskets.height < cfg.min_baskets:
        raise stages.NoDataError(
            f"as_of {as_of}: too little to train the model chain on: {catalog.height:,} catalog products "
            f"(training.min_products {cfg.min_products}) and {baskets.height:,} baskets (training.min_baskets "
            f"{cfg.min_baskets}) before {as_of}; nothing was trained, the nightly serves the classic method"
        )
    return catalog, baskets


def models_dir(settings: Settings, as_of: date) -> Path:
    """``<data>/models/as_of=D/cfg-<hash>``: a rerun with the same settings resumes (and reuses
    finished stages); different settings (other than time budgets) train in a new directory."""
    import hashlib
    import json

    from prodassoc_core.models import flatten

    flat = {k: v for k, v in flatten({"training": settings.training.model_dump(mode="json")}).items()
            if k not in chain.RESUMABLE}
    digest = hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:10]
    return settings.data_dir / "models" / f"as_of={as_of.isoformat()}" / f"cfg-{digest}"


def gate_score(model_dir: str | Path, catalog: pl.DataFrame, task: pairs.PairTask, popular: list[str],
               device: Device, k: int = 10) -> float:
    """NDCG@k of an encoder's nearest products on the held-out tail (lists padded with popular ones)."""
    if not task.validation:
        raise ValueError("the held-out tail has no product with associations: cannot gate; widen pairs.validation_days")
    model, tokenizer = embeddings.load_encoder(model_dir)
    vectors = embeddings.embed_texts(model, tokenizer, mlm.catalog_texts(catalog), device=device)
    ranked = embeddings.top_k_similar(catalog[PRODUCT_ID].to_list(), vectors, k, queries=sorted(task.validation))
    filled = protocol.fill_with_popular(ranked, task.validation, popular, k)
    return float(protocol.score_associations(filled, task.validation, set(), k)["ndcg_all"])


@dataclass
class GateData:
    """The held-out tail's gate half: fit baskets (before the tail), relevance of the gate
    products, warm products (sold in the fit baskets), popular fill, and the tune half's relevance."""

    fit: pl.DataFrame
    cut: datetime
    relevant: dict[str, set[str]]
    tune_relevant: dict[str, set[str]]
    warm: set[str]
    popular: list[str]

    @classmethod
    def build(cls, settings: Settings, train: pl.DataFrame, as_of: date) -> "GateData":
        from datetime import timedelta

        from prodassoc_core.mining import selection

        start = datetime.combine(as_of, time())
        fit, held = pairs.split_fit_validation(train, start, settings.training.pairs.validation_days)
        relevant = selection.tail_relevance(held, settings.selection)
        tune, gate_half = selection.split_queries(sorted(relevant))
        fit_items = pairs.items_of(fit)
        return cls(fit, start - timedelta(days=settings.training.pairs.validation_days),
                   {p: relevant[p] for p in gate_half}, {p: relevant[p] for p in tune},
                   {i for b in fit_items for i in b}, methods.popular_products(fit_items))

    def per_product(self, ranking: pl.DataFrame, k: int) -> pl.DataFrame:
        from prodassoc_core.mining import selection

        return selection.per_product(ranking, self.relevant, self.warm, self.popular, k)


def segment_means(table: pl.DataFrame) -> dict[str, float]:
    """Mean NDCG per segment of a per-product table (nan for an empty segment)."""
    out = {}
    for name, frame in (("warm", table.filter(pl.col("warm"))), ("cold", table.filter(~pl.col("warm")))):
        out[name] = float(frame["ndcg"].mean()) if frame.height else float("nan")
    return out


def served_mean(classic: pl.DataFrame, hybrid_table: pl.DataFrame, segments: dict[str, str]) -> float:
    """Mean NDCG over every gate product of the list it would be served: per segment, hybrid or classic."""
    joined = classic.select(PRODUCT_ID, "warm", pl.col("ndcg").alias("classic")).join(
        hybrid_table.select(PRODUCT_ID, pl.col("ndcg").alias("hybrid")), on=PRODUCT_ID)
    served = pl.when(pl.col("warm")).then(pl.col(segments["warm"])).otherwise(pl.col(segments["cold"]))
    return float(joined.select(served.mean()).item()) if joined.height else float("nan")


def _hybrid_per_product(settings: Settings, found, catalog: pl.DataFrame, data: GateData, device: Device,
                        k: int, fit_window: chain.FitWindow | None = None) -> pl.DataFrame:
    """The gate products' NDCG of ``found``'s hybrid on the gate's fit window; ``fit_window``: the
    embeddings and signals the chain computed on that window for this candidate, when they fit."""
    from dataclasses import replace

    from prodassoc_core.models import champions, hybrid

    candidates_k = settings.hybrid.candidates_k
    signals = None
    if fit_window is not None and fit_window.serves(found.student_dir, found.gnn_dir, data.cut, candidates_k,
                                                     found.cooc):
        model, signals = replace(fit_window.model, warm=found.warm, cold=found.cold), fit_window.signals
    else:
        model = champions.hybrid_model(settings, found, catalog, data.fit, device)
    ranked = hybrid.hybrid_associations(catalog, data.fit, data.cut, model, top_k=k, candidates_k=candidates_k,
                                        decayed=found.cooc, signals=signals,
                                        queries=sorted(set(data.relevant) & set(catalog[PRODUCT_ID].to_list())))
    return data.per_product(ranked, k)


def gate(
    settings: Settings, registered: dict[str, tracking.RegisteredRun], result: chain.ChainResult,
    catalog: pl.DataFrame, train: pl.DataFrame, as_of: date, device: Device, work_dir: Path, *, promote: bool = True,
) -> GateDecision:
    """The serving gate (module docstring): decide, tag the candidate's versions, move the alias on a win."""
    from prodassoc_core.mining import selection
    from prodassoc_core.models import champions, serving

    sel = settings.selection
    k = sel.k
    data = GateData.build(settings, train, as_of)
    gnn_dir = result.gnn.model_dir if result.gnn is not None else None
    weights = champions.read_weights(gnn_dir) if gnn_dir is not None else None
    warm_w, cold_w = weights or (hybrid_weights_default())
    candidate = champions.ChampionSet(
        result.student.model_dir, registered["student"].model_uri, gnn_dir,
        registered["gnn"].model_uri if "gnn" in registered else None, warm_w, cold_w,
        (champions.read_cooc(gnn_dir) if gnn_dir is not None else None) or methods.DecayedConfig(),
    )
    # the candidate first, with the GNN stage's embeddings and signals (result.fit_window), which
    # are then released: the classic selection after it need not share memory with them
    fit_window, result.fit_window = result.fit_window, None
    cand_pp = _hybrid_per_product(settings, candidate, catalog, data, device, k, fit_window)
    del fit_window
    classic = settings.associations  # what the catalog would otherwise be served: as set, or chosen on the tune half
    if classic.method == "auto":
        classic = selection.select_on(data.fit, data.cut, data.tune_relevant, classic, sel).chosen
    classic_pp = data.per_product(methods.config_associations(data.fit, data.cut, classic), k)
    classic_s, cand_s = segment_means(classic_pp), segment_means(cand_pp)
    n = {"warm": int(classic_pp["warm"].sum()), "cold": int((~classic_pp["warm"]).sum())}
    segments = {
        s: serving.HYBRID if n[s] >= sel.gate_min_products and cand_s[s] > classic_s[s] + sel.gate_margin
        else serving.CLASSIC
        for s in serving.SEGMENTS
    }
    scores = {"classic": classic_s | {"served": float(classic_pp["ndcg"].mean()) if classic_pp.height else float("nan")},
              "candidate": cand_s | {"served": served_mean(classic_pp, cand_pp, segments)}}
    current = serving.served_models(settings, as_of)
    champion_version = None if isinstance(current, str) else current.student.version
    if serving.HYBRID not in segments.values():
        promoted, reason = False, f"the hybrid does not beat {selection.label(classic)} by {sel.gate_margin:g} in any segment"
    elif isinstance(current, str):
        promoted, reason = True, f"no model is served for {as_of}; the hybrid beats the classic method where it serves"
    else:
        try:
            found = champions.download(settings, current, work_dir / "champion")
            champ_pp = _hybrid_per_product(settings, found, catalog, data, device, k)
        except Exception as exc:  # noqa: BLE001 - e.g. its files gone from the artifact store
            # a candidate not shown to beat the served model is not promoted; the training is kept
            logger.warning("gate: the served %s could not be scored", current.student.uri, exc_info=True)
            promoted, reason = False, (
                f"the served {current.student.uri} could not be scored ({stages.error_line(exc)}), so the "
                f"candidate is not shown to beat it. Restore its files, or revoke it (prodassoc promote --version "
                f"{current.student.version} --revoke --reason ...) so that the gate compares with the classic method "
                f"only; or promote this version by hand")
        else:
            scores["champion"] = segment_means(champ_pp) | {"served": served_mean(classic_pp, champ_pp, current.segments)}
            promoted = scores["candidate"]["served"] > scores["champion"]["served"]
            verdict = "beats" if promoted else "does not beat"
            reason = (f"served NDCG@{k} {scores['candidate']['served']:.4f} {verdict} the served {current.student.uri} "
                      f"({scores['champion']['served']:.4f})")
    decision = GateDecision(promoted and promote, segments, scores, n, selection.label(classic), champion_version, reason,
                            trial=not promote)
    _tag_decision(settings, registered, decision, promoted)
    logger.info("gate: %s", decision.message)
    return decision


def hybrid_weights_default():
    from prodassoc_core.models import hybrid

    return hybrid.Weights(1.0, 0.0, 0.0), hybrid.Weights(0.0, 1.0, 0.0)


def _tag_decision(settings: Settings, registered: dict[str, tracking.RegisteredRun], d: GateDecision,
                  won: bool) -> None:
    from prodassoc_core.models import serving

    state = "trial" if d.trial else ("champion" if d.promoted else "candidate")
    tags = {serving.GATE_TAG: state, "prodassoc.gate_classic": d.classic, "prodassoc.gate_reason": d.reason[:4000],
            "prodassoc.gate_won": str(won).lower()}
    tags |= {serving.segment_tag(s): d.segments[s] for s in serving.SEGMENTS}
    tags |= {f"prodassoc.gate_{who}_{what}": f"{v:.6f}" for who, vals in d.scores.items() for what, v in vals.items()}
    tags |= {f"prodassoc.gate_n_{s}": str(v) for s, v in d.n_products.items()}
    for reg in registered.values():
        tracking.tag_version(settings.tracking_uri, reg.model_name, reg.model_version, tags)


def register(settings: Settings, result: chain.ChainResult, as_of: date) -> dict[str, tracking.RegisteredRun]:
    """Each stage's model registered (prodassoc-mlm, -teacher, -student, -gnn) from its MLflow run:
    the run the chain logged while the stage ran (``result.runs``), or, for a chain trained
    without one (or whose run already holds a model), a run logged now with the stage's record."""
    cfg = settings.training
    tags = {AS_OF_TAG: as_of.isoformat(), "prodassoc.seed": str(cfg.seed)}
    stages = [s for s in chain.STAGES if s != "gnn" or result.gnn is not None]
    out = {}
    for stage in stages:
        record = chain.stage_record(stage, getattr(result, stage), cfg, as_of, weights=result.weights)
        name, model_dir = chain.registered_name(cfg, stage), result.model_dir(stage)
        run_id = result.runs.get(stage)
        if run_id is not None and not tracking.holds_model(settings.tracking_uri, run_id):
            out[stage] = tracking.register_model(settings.tracking_uri, run_id, model_dir=model_dir,
                                                 registered_model=name, tags=tags | record.tags, files=record.files)
        else:
            out[stage] = tracking.log_model_run(
                settings.tracking_uri, cfg.experiment, settings.data_dir / "mlartifacts",
                run_name=f"{stage} as_of={as_of.isoformat()}", params=record.params, metrics=record.metrics,
                model_dir=model_dir, registered_model=name, series=record.series, tags=tags | record.tags,
                files=record.files,
            )
    lineage = {f"prodassoc.{s}_version": r.model_version for s, r in out.items()}
    for reg in out.values():
        tracking.tag_version(settings.tracking_uri, reg.model_name, reg.model_version, lineage)
    return out


def train_rank(settings: Settings, as_of: date) -> chain.ChainResult:
    """What a rank other than 0 does under ``torchrun`` (``prodassoc train``): the same data and
    the same chain call as rank 0's ``train_models``, taking part in the DDP steps of MLM,
    teacher and student; no MLflow, registry, gate or files (rank 0 writes them all) and no GNN."""
    cfg = settings.training
    if cfg.seed is None:
        raise ValueError("training.seed is required to train (PRODASSOC_TRAINING__SEED or `prodassoc train --seed`)")
    return train_chain_for(settings, *training_data(settings, as_of), as_of)


REGISTERED_FILE = "registered.json"  # in a training's folder once its models are in the registry


def mark_registered(out_dir: Path, as_of: date, registered: dict) -> None:
    """Record in ``out_dir`` that its training registered its models (``tidy_trainings`` may then
    remove the folder once newer trainings exist)."""
    warehouse.write_json(out_dir / REGISTERED_FILE, {"as_of": as_of.isoformat(),
                                                    "versions": {s: r.model_version for s, r in registered.items()}})


def tidy_trainings(settings: Settings, as_of: date) -> int:
    """After ``as_of``'s training registered: remove the folders of registered trainings other
    than the newest ``settings.keep_trainings`` as_of dates (each is a rerun's resume cache of
    about 250 MB on the demo; the models are in MLflow). ``as_of``'s own folder stays; so do
    folders of trainings that did not register (a failed one's resume cache) and a date whose
    training lock is held. Best effort; returns the bytes freed."""
    by_date: dict[date, list[Path]] = {}
    for marker in (settings.data_dir / "models").glob(f"as_of=*/cfg-*/{REGISTERED_FILE}"):
        try:
            day = date.fromisoformat(marker.parent.parent.name.removeprefix("as_of="))
        except ValueError:
            continue  # not a folder this code made
        by_date.setdefault(day, []).append(marker.parent)
    freed = 0
    for day in sorted(by_date, reverse=True)[settings.keep_trainings:]:
        if day == as_of:
            continue
        try:
            with locks.training_lock(settings.locks_dir, day):
                freed += sum(warehouse.remove_work(folder, "training folders") for folder in by_date[day])
                with contextlib.suppress(OSError):  # the date's folder, once empty (a failed training's stays)
                    by_date[day][0].parent.rmdir()
        except locks.TrainingLockedError:
            logger.info("training folders: as_of=%s kept, a training for it is in progress", day)
    if freed:
        logger.info("training folders: %.0f MB of older registered trainings removed (the newest %d dates kept: "
                    "keep_trainings; their models are in MLflow)", freed / 1e6, settings.keep_trainings)
    return freed


def train_chain_for(settings: Settings, catalog: pl.DataFrame, train: pl.DataFrame, as_of: date, *,
                    progress: bool = False, tracker: tracking.TrainingRun | None = None) -> chain.ChainResult:
    """The chain for ``as_of`` on its training data (``training_data``), in ``models_dir``, with
    the settings' training, hybrid and selection configs: what every rank trains."""
    cfg = settings.training
    return chain.train_chain(catalog, train, datetime.combine(as_of, time()), cfg, device=device_of(cfg),
                             out_dir=models_dir(settings, as_of), progress=progress, hybrid_cfg=settings.hybrid,
                             selection_cfg=settings.selection, tracker=tracker)


def train_models(settings: Settings, as_of: date, *, progress: bool = False, promote: bool = True) -> TrainReport:
    """The whole retraining run for ``as_of``: data, chain, registration, gate (``promote``
    False: the gate decides and records, nothing is promoted); then older trainings' folders
    are tidied (``tidy_trainings``). One training of a date at a time (``locks.training_lock``)."""
    if settings.training.seed is None:
        raise ValueError("training.seed is required to train (PRODASSOC_TRAINING__SEED or `prodassoc train --seed`)")
    with locks.training_lock(settings.locks_dir, as_of):
        report = _train(settings, as_of, progress, promote)
        tidy_trainings(settings, as_of)
    return report


def _train(settings: Settings, as_of: date, progress: bool, promote: bool) -> TrainReport:
    cfg = settings.training
    device = device_of(cfg)
    tags = {AS_OF_TAG: as_of.isoformat(), "prodassoc.seed": str(cfg.seed)}
    # One MLflow run for the whole training, open while it runs; each stage's run is its child.
    with tracking.TrainingRun(settings.tracking_uri, cfg.experiment, settings.data_dir / "mlartifacts",
                              run_name=f"train as_of={as_of.isoformat()}", tags=tags) as tracker:
        catalog, train = training_data(settings, as_of)
        out_dir = models_dir(settings, as_of)
        tracker.parent.log_params({"as_of": as_of.isoformat(), "models_dir": str(out_dir), "device": device.describe(),
                                   "promote": promote})
        result = train_chain_for(settings, catalog, train, as_of, progress=progress, tracker=tracker)
        registered = register(settings, result, as_of)
        mark_registered(out_dir, as_of, registered)
        decision = gate(settings, registered, result, catalog, train, as_of, device, out_dir / "gate", promote=promote)
        if decision.promoted:
            for reg in registered.values():
                tracking.set_alias(settings.tracking_uri, reg.model_name, reg.model_version, cfg.champion_alias)
        tracker.parent.log(0, {f"seconds_{k}": v for k, v in result.seconds.items()})
        tracker.parent.set_tags({f"prodassoc.{s}_version": r.model_version for s, r in registered.items()}
                                | {"prodassoc.promoted": str(decision.promoted).lower()})
    return TrainReport(as_of, {s: r.model_version for s, r in registered.items()}, decision, chain.summary(result),
                       result.seconds)
