"""Choosing the classic method per catalog on its own tail (prodassoc_core/mining/selection.py) and the
serving plan's point-in-time rules (prodassoc_core/models/serving.py), on small baskets built to make
one answer right."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import polars as pl
import pytest

from prodassoc_core.mining import selection
from prodassoc_core.models import serving
from prodassoc_core.ops.settings import AssociationConfig, SelectionConfig, Settings

AS_OF = datetime(2024, 6, 1)


def _baskets(recency_shift: bool, anchors: int = 30) -> pl.DataFrame:
    """Anchors P_i bought with an old partner O_i long ago (10 baskets, 150-200 days back) and
    with a new partner N_i lately (4 fit baskets in the last 20 days before the tail, 6 in the
    28-day tail). Without ``recency_shift`` the old partner is N_i too: one right answer for all."""
    rows = []
    order = 0

    def add(day: datetime, items: list[str]) -> None:
        nonlocal order
        order += 1
        rows.append({"order_id": f"o{order:05d}", "ordered_at": day, "items": items})

    for i in range(anchors):
        old = f"O{i:02d}" if recency_shift else f"N{i:02d}"
        for k in range(10):
            add(AS_OF - timedelta(days=200 - 5 * k, hours=i), [f"P{i:02d}", old])
        for k in range(4):
            add(AS_OF - timedelta(days=45 - 4 * k, hours=i), [f"P{i:02d}", f"N{i:02d}"])
        for k in range(6):
            add(AS_OF - timedelta(days=25 - 4 * k, hours=i), [f"P{i:02d}", f"N{i:02d}"])
    for k in range(60):  # unrelated baskets keep every lift of the tail high
        add(AS_OF - timedelta(days=1 + k % 200, minutes=k), [f"F{k % 40:02d}", f"G{k % 7}"])
    return pl.DataFrame(rows).sort("ordered_at", "order_id")


def test_without_baskets_before_the_tail_count_is_kept_saying_why():
    """One day of history (a basket file imported with one date): the tail holds it all, and no
    candidate can be scored."""
    one_day = _baskets(recency_shift=True).with_columns(ordered_at=pl.lit(AS_OF - timedelta(days=1)))
    found = selection.select_classic(one_day, AS_OF, AssociationConfig(), SelectionConfig())
    assert found.chosen.method == "count" and found.scores.is_empty()
    assert found.reason == "no baskets before the tail (from 2024-05-31) to score the candidates on: count, the floor"


def test_count_is_the_floor_when_nothing_beats_it():
    found = selection.select_classic(_baskets(recency_shift=False), AS_OF, AssociationConfig(), SelectionConfig())
    assert found.chosen.method == "count" and found.n_products == 60  # P_i and N_i
    assert found.chosen_ndcg == pytest.approx(found.floor_ndcg) == pytest.approx(1.0)
    assert "nothing beats count" in found.reason
    assert found.scores["label"][0] == "count"  # every candidate is scored, count first


def test_a_setting_that_wins_on_the_tail_replaces_count():
    found = selection.select_classic(_baskets(recency_shift=True), AS_OF, AssociationConfig(), SelectionConfig())
    assert found.chosen.method == "decayed_damped" and found.chosen.half_life_days == 30.0
    assert found.chosen_ndcg >= found.floor_ndcg + SelectionConfig().min_gain
    assert found.chosen_ndcg == pytest.approx(1.0) and found.floor_ndcg < 0.9  # count ranks the old partner first


def test_too_few_scorable_products_keep_count():
    found = selection.select_classic(_baskets(recency_shift=True, anchors=5), AS_OF, AssociationConfig(),
                                     SelectionConfig())
    assert found.chosen.method == "count" and found.n_products == 10 and "< 20" in found.reason


def test_the_tail_is_at_most_a_quarter_of_the_history_and_never_leaks():
    frame = _baskets(recency_shift=False)
    assert selection.tail_days(frame, AS_OF, 28) == 28
    short = frame.filter(pl.col("ordered_at") >= AS_OF - timedelta(days=20))
    span = (AS_OF - short["ordered_at"].min()).days
    assert selection.tail_days(short, AS_OF, 28) == span // 4 < 28
    with pytest.raises(ValueError, match="before as_of"):
        selection.tail_split(frame, AS_OF - timedelta(days=30), 28)


def test_tune_and_gate_halves_are_stable_and_disjoint():
    ids = [f"p{i}" for i in range(200)]
    tune, gate = selection.split_queries(ids)
    assert set(tune).isdisjoint(gate) and set(tune) | set(gate) == set(ids) and 60 < len(tune) < 140
    tune_sub, gate_sub = selection.split_queries(ids[:50])  # a product's half never depends on the others
    assert set(tune_sub) <= set(tune) and set(gate_sub) <= set(gate)


def test_the_classic_choice_is_made_once_per_anchor_from_data_before_it(tmp_path):
    settings = Settings(data_dir=tmp_path)
    frame = _baskets(recency_shift=True)
    day = date(2024, 6, 1)
    anchor = serving.selection_anchor(day, 7)
    assert anchor <= day and (day - anchor).days < 7
    assert all(serving.selection_anchor(anchor + timedelta(days=k), 7) == anchor for k in range(7))
    asked = []

    def between(start: date, end: date) -> pl.DataFrame:
        asked.append((start, end))
        t0, t1 = datetime.combine(start, datetime.min.time()), datetime.combine(end, datetime.min.time())
        return frame.filter((pl.col("ordered_at") >= t0) & (pl.col("ordered_at") < t1))

    chosen, reason = serving.classic_choice(settings, day, between)
    assert serving.selection_path(settings, anchor).is_file() and f"before {anchor}" in reason
    assert asked == [(anchor - timedelta(days=settings.lookback_days), anchor)]  # nothing from the anchor on
    # the cached choice is what every date of the period serves, whichever date made it
    again, _ = serving.classic_choice(settings, anchor + timedelta(days=6), between)
    assert again == chosen and len(asked) == 1
    explicit = settings.model_copy(update={"associations": AssociationConfig(method="jaccard")})
    assert serving.classic_choice(explicit, day, between)[0].method == "jaccard"


def test_no_model_is_served_without_a_registry(tmp_path):
    settings = Settings(data_dir=tmp_path)
    frame = _baskets(recency_shift=False)
    plan = serving.plan(settings, date(2024, 6, 1), lambda start, end: frame.filter(
        pl.col("ordered_at") < datetime.combine(end, datetime.min.time())))
    assert plan.models is None and plan.segments == {"warm": "classic", "cold": "classic"}
    assert "passed the serving gate" in plan.reason and plan.as_json()["student_model"] is None
    assert not (tmp_path / "mlflow.db").exists()  # looking did not create the store
