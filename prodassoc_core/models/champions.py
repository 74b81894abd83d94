"""Scoring with the registered champions: the student's text embeddings, the GNN's node
embeddings over today's graph, and the hybrid weights tuned when they were trained.

    registry --resolve--> ChampionSet (downloaded model directories, URIs, hybrid weights)
    ChampionSet + catalog + window baskets --hybrid_model--> HybridModel (hybrid.py)

The GNN is inductive (GraphSAGE over node features): its embeddings are recomputed on the
graph of the window being scored, so products added since training get them too. Used by
the nightly run (pipeline.associate) and the evaluation harness (harness.model_associations).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import polars as pl

from prodassoc_core.data import PRODUCT_ID
from prodassoc_core.mining import DecayedConfig
from prodassoc_core.models import hybrid, tracking
from prodassoc_core.models.hybrid import read_cooc, read_weights
from prodassoc_core.models.training import Device
from prodassoc_core.ops import Settings

logger = logging.getLogger("prodassoc.champions")

AS_OF_TAG = "prodassoc.as_of"


@dataclass(frozen=True)
class ChampionSet:
    student_dir: Path
    student_uri: str
    gnn_dir: Path | None
    gnn_uri: str | None
    warm: hybrid.Weights
    cold: hybrid.Weights
    cooc: DecayedConfig = DecayedConfig()  # the co-purchase signal's settings the weights were tuned with

    @property
    def uris(self) -> dict[str, str]:
        return {k: v for k, v in (("student", self.student_uri), ("gnn", self.gnn_uri)) if v}


def champion_dir(settings: Settings, name: str, work_dir: Path, not_after: date | None = None
                 ) -> tuple[Path, str] | str | None:
    """``(directory, model URI)`` of ``name``'s champion, downloaded under ``work_dir``; None
    without one; the reason as a string when it was trained on data after ``not_after`` (its
    ``prodassoc.as_of`` tag): the harness never scores a model that has seen the test window."""
    cfg = settings.training
    version = tracking.aliased_version(settings.tracking_uri, name, cfg.champion_alias)
    if version is None:
        return None
    trained = version.tags.get(AS_OF_TAG)
    if not_after is not None and (trained is None or date.fromisoformat(trained) > not_after):
        return f"{version.uri} was trained with data up to {trained}, after {not_after}: it has seen the test window"
    target = work_dir / f"{name}-v{version.version}"
    return tracking.registered_model_dir(settings.tracking_uri, version.uri, target), version.uri


def download(settings: Settings, models, work_dir: Path) -> ChampionSet:
    """``models`` (serving.ServedModels) downloaded under ``work_dir``, with the hybrid weights
    and co-purchase settings saved with the GNN."""
    uri = settings.tracking_uri
    student = models.student
    student_dir = tracking.registered_model_dir(uri, student.uri, work_dir / f"{student.name}-v{student.version}")
    gnn_dir = gnn_uri = None
    if models.gnn is not None:
        gnn_uri = models.gnn.uri
        gnn_dir = tracking.registered_model_dir(uri, gnn_uri, work_dir / f"{models.gnn.name}-v{models.gnn.version}")
    weights = read_weights(gnn_dir) if gnn_dir is not None else None
    warm, cold = weights or (hybrid.Weights(1.0, 0.0, 0.0), hybrid.Weights(0.0, 1.0, 0.0))
    cooc = (read_cooc(gnn_dir) if gnn_dir is not None else None) or DecayedConfig()
    return ChampionSet(student_dir, student.uri, gnn_dir, gnn_uri, warm, cold, cooc)


def resolve(settings: Settings, work_dir: Path, not_after: date | None = None) -> ChampionSet | str:
    """The newest trained student (and its GNN, with its hybrid weights) whose training data
    ends by ``not_after``, whatever the gate decided, downloaded under ``work_dir``; or the
    reason there is none (the harness scores what was trained, served or not)."""
    from prodassoc_core.models import serving

    found = serving.latest_trained(settings, not_after)
    if isinstance(found, str):
        return found
    return download(settings, found, work_dir)


def hybrid_model(settings: Settings, champions: ChampionSet, catalog: pl.DataFrame, train: pl.DataFrame,
                 device: Device) -> hybrid.HybridModel:
    """Student embeddings of the catalog and, with a GNN, its embeddings over the graph of
    the window's baskets ``train`` (all before the scored as_of)."""
    from prodassoc_core.models import chain, gnn, graph

    cfg = settings.training
    text = chain.catalog_vectors(champions.student_dir, catalog, device=device, max_length=cfg.student.max_length)
    gnn_vectors = None
    if champions.gnn_dir is not None:
        model, _ = gnn.load_gnn(champions.gnn_dir)
        g = graph.build_graph(catalog[PRODUCT_ID].to_list(), train["items"].to_list(), text, cfg.graph)
        gnn_vectors = gnn.node_embeddings(model, g, device)
    return hybrid.HybridModel(text=text, gnn=gnn_vectors, warm=champions.warm, cold=champions.cold)
