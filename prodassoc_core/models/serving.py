"""What a nightly (or backfill) run for ``as_of = D`` serves, and why: point in time, proven per catalog.

    registry: versions of the student that passed the serving gate (``prodassoc.gate`` champion
              or manual), trained on data up to ``prodassoc.as_of`` <= D
              --served_models--> the newest of them (training as_of, then version), with its GNN
              (lineage tag) and per segment what the gate proved: hybrid or classic
    <data>/selection/as_of=A.json, A = D rounded down to ``selection.reselect_days``
              --classic_choice--> the classic method chosen on the tail of the baskets before A
              (computed once per A; ``associations.method`` other than ``auto`` skips the choice)
    both --> ServingPlan: per segment (warm: sold in the window; cold: never sold) the source

A model trained after D is never served for D, so a backfill over a range may mix classic
and hybrid dates, each correct for its date. Nothing here reads the clock: D is explicit.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta
from pathlib import Path

import polars as pl

from prodassoc_core.data import write_json
from prodassoc_core.models import tracking
from prodassoc_core.ops import AssociationConfig, Settings

log = logging.getLogger("prodassoc.serving")

AS_OF_TAG = "prodassoc.as_of"
GATE_TAG = "prodassoc.gate"
SERVED_GATES = ("champion", "manual")  # passed the gate, or promoted by an operator (prodassoc promote)
SEGMENTS = ("warm", "cold")
HYBRID, CLASSIC = "hybrid", "classic"


def segment_tag(segment: str) -> str:
    return f"prodassoc.serve_{segment}"


@dataclass(frozen=True)
class ServedModels:
    student: tracking.ModelVersion
    gnn: tracking.ModelVersion | None
    trained_as_of: date
    segments: dict[str, str]  # warm / cold -> hybrid | classic

    def describe(self) -> str:
        uris = ", ".join(v.uri for v in (self.student, self.gnn) if v is not None)
        return f"{uris} (trained on data before {self.trained_as_of})"


@dataclass(frozen=True)
class ServingPlan:
    as_of: date
    classic: AssociationConfig
    classic_reason: str
    models: ServedModels | None
    reason: str  # why these models, or why none
    segments: dict[str, str] = field(default_factory=lambda: {s: CLASSIC for s in SEGMENTS})

    def source(self, segment: str) -> str:
        return self.segments[segment]

    @property
    def serves_hybrid(self) -> bool:
        return HYBRID in self.segments.values()

    def without_models(self, why: str) -> "ServingPlan":
        """This plan with the classic method for every segment: its models could not be loaded."""
        return replace(self, segments={s: CLASSIC for s in SEGMENTS},
                       reason=f"{why}; the classic method is served instead, until they load again")

    def describe(self) -> str:
        """One line: what each segment gets, e.g. ``warm: classic count; cold: hybrid of models:/…``."""
        from prodassoc_core.mining import label

        parts = []
        for s in SEGMENTS:
            if self.segments[s] == HYBRID and self.models is not None:
                parts.append(f"{s}: hybrid of {self.models.describe()}")
            elif s == "cold":
                parts.append("cold: none (classic has no co-purchases for them; consumers fall back to popularity)")
            else:
                parts.append(f"{s}: classic {label(self.classic)}")
        return "; ".join(parts)

    def as_json(self) -> dict:
        from prodassoc_core.mining import label

        m = self.models
        return {
            "as_of": self.as_of.isoformat(),
            "segments": dict(self.segments),
            "classic": label(self.classic),
            "classic_settings": self.classic.model_dump(mode="json"),
            "classic_reason": self.classic_reason,
            "student_model": m.student.uri if m and self.serves_hybrid else None,
            "gnn_model": m.gnn.uri if m and m.gnn and self.serves_hybrid else None,
            "model_as_of": m.trained_as_of.isoformat() if m and self.serves_hybrid else None,
            "reason": self.reason,
            "served": self.describe(),
        }


# --- models -----------------------------------------------------------------------------------------


def served_models(settings: Settings, as_of: date) -> ServedModels | str:
    """The newest student that passed the gate with training as_of <= ``as_of``, with its GNN;
    or why there is none."""
    def passed(v: tracking.ModelVersion) -> bool:
        # a version promoted before the serving gate existed was never proven against the classic method
        return v.tags.get(GATE_TAG) in SERVED_GATES and all(segment_tag(s) in v.tags for s in SEGMENTS)

    return _newest(settings, as_of, passed, "passed the serving gate")


def latest_trained(settings: Settings, as_of: date | None) -> ServedModels | str:
    """The newest student trained on data up to ``as_of`` (None: any), served or not, with its
    GNN; segments as its gate tagged them (hybrid where untagged). For the evaluation harness."""
    return _newest(settings, as_of, lambda v: True, "was trained")


def _newest(settings: Settings, as_of: date | None, accept, what: str) -> ServedModels | str:
    cfg = settings.training
    eligible, later = [], []
    for v in tracking.model_versions(settings.tracking_uri, cfg.student.registered_model):
        if AS_OF_TAG not in v.tags or not accept(v):
            continue
        trained = date.fromisoformat(v.tags[AS_OF_TAG])
        (eligible if as_of is None or trained <= as_of else later).append((trained, int(v.version), v))
    if not eligible:
        future = f"; {len(later)} with data after {as_of} (never used for it)" if later else ""
        return f"no {cfg.student.registered_model} version {what} with data up to {as_of}{future}"
    trained, _, student = max(eligible, key=lambda t: (t[0], t[1]))
    gnn = None
    if (gnn_version := student.tags.get("prodassoc.gnn_version")) is not None:
        gnn = tracking.model_version(settings.tracking_uri, cfg.gnn_registered_model, gnn_version)
    segments = {s: student.tags.get(segment_tag(s), HYBRID) for s in SEGMENTS}
    return ServedModels(student, gnn, trained, segments)


# --- the classic method -----------------------------------------------------------------------------


def selection_anchor(as_of: date, every_days: int) -> date:
    """``as_of`` rounded down to a multiple of ``every_days`` days (proleptic ordinal): the choice
    made at the anchor serves every date until the next, whatever order the dates run in."""
    return date.fromordinal(as_of.toordinal() - as_of.toordinal() % every_days)


def selection_path(settings: Settings, anchor: date) -> Path:
    return settings.data_dir / "selection" / f"as_of={anchor.isoformat()}.json"


def staged_baskets(settings: Settings, start: date, end: date) -> pl.DataFrame:
    """The baskets of the staged (validated) transactions ordered in [start, end)."""
    from prodassoc_core.data import baskets, ingest

    return baskets.baskets(ingest.read_staged_transactions(settings.staging_dir, start, end), settings.baskets).collect()


def classic_choice(settings: Settings, as_of: date, baskets_between=None) -> tuple[AssociationConfig, str]:
    """(setting, reason): ``associations`` as set, or with ``method: auto`` the choice of
    ``selection.select_classic`` on the baskets of [anchor - lookback, anchor), cached per anchor:
    every date of the period gets the same choice, whichever date made it and in whatever order
    dates run. ``baskets_between(start, end)`` gives baskets (default: the staged transactions')."""
    from prodassoc_core.mining import selection

    a = settings.associations
    if a.method != "auto":
        return a, f"{selection.label(a)}, set by associations.method"
    anchor = selection_anchor(as_of, settings.selection.reselect_days)
    path = selection_path(settings, anchor)
    if path.is_file():
        saved = json.loads(path.read_text())
        chosen = a.model_copy(update=saved["chosen"])
        return chosen, saved["reason"] + f" (chosen on the tail before {anchor})"
    load = baskets_between or (lambda start, end: staged_baskets(settings, start, end))
    before = load(anchor - timedelta(days=settings.lookback_days), anchor)
    found = selection.select_classic(before, datetime.combine(anchor, time()), a, settings.selection)
    record = {
        "as_of": anchor.isoformat(),
        "chosen": {k: v for k, v in found.chosen.model_dump(mode="json").items()
                   if k in ("method", "half_life_days", "size_exponent", "popularity_exponent")},
        "label": found.label,
        "reason": found.reason,
        "n_products": found.n_products,
        "baskets": before.height,
        "scores": found.scores.to_dicts(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, record)
    log.info("classic method for %s: %s", anchor, found.reason)
    return found.chosen, found.reason + f" (chosen on the tail before {anchor})"


def plan(settings: Settings, as_of: date, baskets_between=None) -> ServingPlan:
    """What the run for ``as_of`` serves (``baskets_between``: see ``classic_choice``)."""
    classic, classic_reason = classic_choice(settings, as_of, baskets_between)
    if not settings.hybrid.enabled:
        return ServingPlan(as_of, classic, classic_reason, None, "hybrid.enabled is false")
    found = served_models(settings, as_of)
    if isinstance(found, str):
        return ServingPlan(as_of, classic, classic_reason, None, found)
    reason = f"{found.student.uri} passed the serving gate ({found.student.tags.get(GATE_TAG)})"
    return ServingPlan(as_of, classic, classic_reason, found, reason, dict(found.segments))


# --- operators' overrides -----------------------------------------------------------------------------


def promote(settings: Settings, version: str, segments: dict[str, str], reason: str) -> tracking.ModelVersion:
    """An operator serves student ``version`` (and the MLM, teacher and GNN trained with it) for
    ``segments``, overriding the gate: tagged ``prodassoc.gate=manual`` with the reason, aliased
    ``@champion``. Still point in time: never served for dates before its training as_of."""
    return _set_gate(settings, version, "manual", segments, reason, alias=True)


def revoke(settings: Settings, version: str, reason: str) -> tracking.ModelVersion:
    """Stop serving student ``version`` (a rollback): tagged ``prodassoc.gate=revoked``; the next
    runs serve the newest version still eligible for their date, or the classic method."""
    return _set_gate(settings, version, "revoked", None, reason, alias=False)


def _set_gate(settings: Settings, version: str, state: str, segments: dict[str, str] | None, reason: str,
              alias: bool) -> tracking.ModelVersion:
    cfg = settings.training
    student = tracking.model_version(settings.tracking_uri, cfg.student.registered_model, version)
    if student is None or AS_OF_TAG not in student.tags:
        raise ValueError(f"{cfg.student.registered_model} version {version} is not a trained student of this registry")
    tags = {GATE_TAG: state, "prodassoc.gate_reason": reason}
    if segments is not None:
        unknown = set(segments) - set(SEGMENTS) or {v for v in segments.values() if v not in (HYBRID, CLASSIC)}
        if unknown or set(segments) != set(SEGMENTS):
            raise ValueError(f"segments must give warm and cold each hybrid or classic, got {segments}")
        tags |= {segment_tag(s): segments[s] for s in SEGMENTS}
    names = {"mlm": "prodassoc-mlm", "teacher": cfg.teacher.registered_model, "gnn": cfg.gnn_registered_model}
    linked = [(cfg.student.registered_model, version)] + [
        (name, student.tags[f"prodassoc.{stage}_version"]) for stage, name in names.items()
        if f"prodassoc.{stage}_version" in student.tags
    ]
    for name, v in linked:
        tracking.tag_version(settings.tracking_uri, name, v, tags)
        if alias:
            tracking.set_alias(settings.tracking_uri, name, v, cfg.champion_alias)
    log.info("%s v%s: gate %s (%s)", cfg.student.registered_model, version, state, reason)
    return tracking.model_version(settings.tracking_uri, cfg.student.registered_model, version)
