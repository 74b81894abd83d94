"""Training time is bounded: one budget for the chain, split across the stages, each stage's
budget covering its data, validation (one bounded sample, before and after), training and
checkpoints; a stage out of time stops with a usable model; progress shows in the log without
a terminal; every budget is a `prodassoc train` option and a setting.

Tiny models (chain.tiny_training_config) with step counts far beyond what the budgets allow,
so only the budgets can end the stages. Timing checks are loose on purpose (a loaded 2-core
machine): what they catch is a stage that ignores its budget, which would run for hours.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import date, datetime

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from flows.cli import build_parser, training_settings
from prodassoc_core.data import baskets, importers
from prodassoc_core.models import chain, champions, mlm, pairs, student, teacher, training
from prodassoc_core.ops.settings import BasketConfig, Settings

from conftest import TEST_HYBRID, TEST_SELECTION

AS_OF = datetime(2011, 11, 8)
CPU = training.choose_device("cpu")
SEED = 7
# What a chain may take beyond its budget: work no budget can shorten — importing transformers,
# the scratch tokenizer, the pairs and the graph, at least one step and two validations per
# stage on their bounded samples, the hybrid weights — on a loaded machine.
SLACK_S = 45.0


@pytest.fixture(scope="module")
def data(sample_cut):
    lines = importers.online_retail_lines([sample_cut])
    return importers.derive_catalog(lines), baskets.baskets(lines, BasketConfig()).collect()


def endless(seed: int = SEED, **overrides):
    """The tiny chain with schedules far longer than any test budget allows (hours of steps)."""
    base = chain.tiny_training_config(seed)
    values = dict(
        mlm_epochs=1000.0,
        teacher=base.teacher.model_copy(update={"max_steps": 100_000, "checkpoint_every": 100_000}),
        student=base.student.model_copy(update={"max_steps": 100_000, "checkpoint_every": 100_000}),
        gnn=base.gnn.model_copy(update={"max_epochs": 100_000, "patience": 100_000, "checkpoint_every": 100_000}),
    )
    values.update(overrides)
    return base.model_copy(update=values)


# --- the split ------------------------------------------------------------------------------------


def test_the_default_budget_is_sized_from_the_data_and_bounded():
    cfg = chain.tiny_training_config(SEED)
    assert cfg.max_minutes is None
    assert chain.chain_minutes(cfg, 2_555) == pytest.approx(2.555 * cfg.minutes_per_1k_baskets)  # shipped sample
    assert chain.chain_minutes(cfg, 2_555) <= 3.5  # leaves room for data, registration and gate within 4 min
    assert chain.chain_minutes(cfg, 10) == chain.AUTO_MINUTES[0]
    assert chain.chain_minutes(cfg, 18_500) <= 25  # full Online Retail
    assert chain.chain_minutes(cfg, 10**6) == chain.AUTO_MINUTES[1]
    assert chain.chain_minutes(cfg.model_copy(update={"max_minutes": 7.5}), 10**6) == 7.5


def test_the_budget_is_split_by_shares_and_what_is_left_flows_to_later_stages():
    cfg = chain.tiny_training_config(SEED, max_minutes=10.0)
    split = cfg.budget
    budget = chain.ChainBudget(cfg, training.Deadline.after(600))
    first = budget.deadline("mlm", ["teacher", "student", "gnn"]).remaining()
    assert first == pytest.approx(600 * split.mlm / (split.mlm + split.teacher + split.student + split.gnn), abs=1)
    # the last stage gets all that is left, however little the others used
    assert budget.deadline("gnn", []).remaining() == pytest.approx(600, abs=1)
    # a stage that starts with 300 s left shares them with the stages after it only
    late = chain.ChainBudget(cfg, training.Deadline.after(300))
    assert late.deadline("student", ["gnn"]).remaining() == pytest.approx(
        300 * split.student / (split.student + split.gnn), abs=1)
    # a stage's own budget replaces its share, and is kept back from the others' share
    own = cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update={"max_minutes": 2.0})})
    budget = chain.ChainBudget(own, training.Deadline.after(600))
    assert budget.deadline("teacher", ["student", "gnn"]).remaining() == pytest.approx(120, abs=1)
    assert budget.deadline("mlm", ["teacher", "student", "gnn"]).remaining() == pytest.approx(
        (600 - 120) * split.mlm / (split.mlm + split.student + split.gnn), abs=1)
    # out of time: a stage still gets a deadline (now), never an error
    spent = chain.ChainBudget(cfg, training.Deadline.after(0))
    assert spent.deadline("teacher", ["student"]).remaining() <= 0


# --- a tiny budget ends every stage ----------------------------------------------------------------


def test_a_tiny_budget_stops_every_stage_with_a_usable_model_and_the_chain_goes_on(data, tmp_path, caplog):
    catalog, frame = data
    budget_s = 8.0
    # checkpoints kept: the model a stage saved at its deadline is checked against its last checkpoint
    cfg = endless(max_minutes=budget_s / 60, keep_finished_checkpoints=True)
    caplog.set_level(logging.INFO, logger="prodassoc")
    started = time.monotonic()
    result = chain.train_chain(catalog, frame, AS_OF, cfg, device=CPU, out_dir=tmp_path, progress=False,
                               hybrid_cfg=TEST_HYBRID, selection_cfg=TEST_SELECTION)
    wall = time.monotonic() - started
    assert wall <= budget_s + SLACK_S, f"{wall:.0f} s for a {budget_s:.0f} s budget"
    assert result.budget_seconds == pytest.approx(budget_s)
    assert set(result.budgets) == {"mlm", "teacher", "student", "gnn"}
    # the stages share one budget: none is given time beyond what the chain has left when it starts
    # (nothing, once the stages before it have overrun it: a stage ends at its next step after its
    # deadline, then validates and saves, which a loaded machine slows; the wall check above bounds that)
    elapsed = 0.0
    for stage in ("mlm", "teacher", "student", "gnn"):
        assert result.budgets[stage] <= max(budget_s - elapsed, 0.0) + 0.5, stage
        elapsed += result.seconds[stage]

    for stage in ("mlm", "teacher", "student"):
        r = getattr(result, stage)
        assert r.stop_reason == "budget", stage
        assert 1 <= r.steps < r.total_steps, stage
        assert (r.loss_after if stage == "mlm" else r.after) and r.model_dir.is_dir(), stage  # validated after
        # the model the stage saved is the one its checkpoint holds, and it loads
        assert training.checkpoint_step(training.latest_checkpoint(r.model_dir.parent / "checkpoints")) == r.steps
    assert result.gnn.stop_reason == "budget" and 1 <= result.gnn.epochs < cfg.gnn.max_epochs
    assert (result.gnn.model_dir / "gnn.pt").is_file() and champions.read_weights(result.gnn.model_dir) is not None
    # every stage's model is usable: the student embeds the catalog
    vectors = chain.catalog_vectors(result.student.model_dir, catalog, device=CPU)
    assert vectors.shape[0] == catalog.height and np.isfinite(vectors).all()
    # the log says how far each stage got
    text = caplog.text
    for stage, planned in (("mlm", result.mlm.total_steps), ("teacher", 100_000), ("student", 100_000)):
        # the schedule (warm-up, decay) was fitted to the time left rather than cut inside its warm-up
        assert re.search(rf"{stage}: schedule fitted to the budget: \d+ of {planned} planned steps", text), stage
        r = getattr(result, stage)
        assert r.steps <= r.scheduled_steps < planned, stage
    assert re.search(r"chain: teacher \d+/100000 steps \(budget\); [\d.]+ s of a [\d.]+ s budget", text)
    assert re.search(r"gnn: .*\d+ of 100000 epochs, budget\)", text)
    # the train flow's summary lines (one per stage)
    lines = chain.budget_lines(chain.summary(result))
    assert [line.split(":")[0] for line in lines] == ["mlm", "teacher", "student", "gnn"]
    assert all(re.search(r"\(budget\), [\d.]+ s of a [\d.]+ s budget$", line) for line in lines), lines


def test_time_a_stage_leaves_goes_to_the_next(data, tmp_path):
    catalog, frame = data
    total_s = 12.0
    cfg = endless(max_minutes=total_s / 60, mlm_epochs=0.05)  # the MLM's 5 steps take a second or two
    cfg = cfg.model_copy(update={"budget": cfg.budget.model_copy(update={"mlm": 0.5, "teacher": 0.2, "student": 0.2,
                                                                         "gnn": 0.1})})
    result = chain.train_chain(catalog, frame, AS_OF, cfg, device=CPU, out_dir=tmp_path, progress=False,
                               hybrid_cfg=TEST_HYBRID, selection_cfg=TEST_SELECTION)
    assert result.mlm.stop_reason == "completed" and result.seconds["mlm"] < 0.5 * total_s
    # the teacher gets its share of what is left, more than its share of the whole
    assert result.budgets["teacher"] > 1.2 * 0.2 * total_s
    assert result.teacher.stop_reason == "budget"


# --- validation on one bounded sample --------------------------------------------------------------


def test_validation_scores_the_same_bounded_sample_before_and_after(data, tmp_path, monkeypatch):
    catalog, frame = data
    cfg = chain.tiny_training_config(SEED)
    cfg = cfg.model_copy(update={
        "teacher": cfg.teacher.model_copy(update={"max_steps": 3, "max_validation_pairs": 40}),
        "student": cfg.student.model_copy(update={"max_steps": 3, "max_lists": 64, "max_validation_anchors": 25,
                                                  "max_validation_products": 400}),
    })
    task = pairs.build_task(catalog, mlm.catalog_texts(catalog), frame, AS_OF, cfg.pairs)
    assert len(task.validation) > 25 and len(task.texts) > 400  # the caps do bind

    # MLM: the held-out loss on at most max_heldout_texts texts, the same tokens both times
    seen_mlm = []
    real_loss = mlm.masked_lm_loss
    monkeypatch.setattr(mlm, "masked_lm_loss", lambda model, tok, enc, **kw: seen_mlm.append(enc) or real_loss(
        model, tok, enc, **kw))
    mlm_cfg = mlm.tiny_config(SEED, max_steps=3, max_heldout_texts=50)
    mlm_result = mlm.run_mlm(catalog, mlm_cfg, device=CPU, out_dir=tmp_path / "mlm", progress=False)
    assert len(seen_mlm) == 2 and len(seen_mlm[0]) == 50 and seen_mlm[0] == seen_mlm[1]
    assert mlm_result.n_heldout == 50

    # teacher: the same (anchor, other, label) rows, at most max_validation_pairs positives
    seen_teacher = []
    real_score = teacher.score_pairs
    monkeypatch.setattr(teacher, "score_pairs", lambda m, t, texts, rows, **kw: seen_teacher.append(rows.copy())
                        or real_score(m, t, texts, rows, **kw))
    teacher_result = teacher.train_teacher(task, mlm_result.model_dir, cfg, device=CPU, out_dir=tmp_path / "teacher",
                                           progress=False)
    assert len(seen_teacher) == 2 and np.array_equal(seen_teacher[0], seen_teacher[1])
    assert int(seen_teacher[0][:, 2].sum()) == 40

    # student: the same anchors ranked among the same products, both capped
    seen_student = []
    real_ndcg = student.validation_ndcg
    monkeypatch.setattr(student, "validation_ndcg", lambda *a, sample=None, **kw: seen_student.append(sample)
                        or real_ndcg(*a, sample=sample, **kw))
    result = student.train_student(task, mlm_result.model_dir, teacher_result.model_dir, cfg, device=CPU,
                                   out_dir=tmp_path / "student", progress=False)
    assert len(seen_student) == 2 and seen_student[0] == seen_student[1]
    products, relevant = seen_student[0]
    assert 0 < len(relevant) <= 25 and len(products) == 400
    assert {task.space.index[q] for a, qs in relevant.items() for q in (a, *qs)} <= set(products)
    assert all(qs <= task.validation[a] for a, qs in relevant.items())
    assert result.before["val_anchors"] == result.after["val_anchors"] <= 25
    # the sample depends on the seed only: a rerun validates on the same products
    assert student.validation_sample(task, SEED, 25, 400) == seen_student[0]


def test_gnn_validation_scores_a_seeded_sample_of_anchors(data):
    catalog, frame = data
    from prodassoc_core.models import gnn

    cfg = chain.tiny_training_config(SEED)
    task = pairs.build_task(catalog, mlm.catalog_texts(catalog), frame, AS_OF, cfg.pairs)
    queries = gnn.validation_queries(task, SEED, 30)
    assert len(queries) == 30 and queries == sorted(queries) and set(queries) <= set(task.validation)
    assert gnn.validation_queries(task, SEED, 30) == queries
    assert gnn.validation_queries(task, SEED, 10**6) == sorted(task.validation)


# --- progress without a terminal ---------------------------------------------------------------------


def test_progress_is_logged_every_n_seconds_without_a_terminal(data, tmp_path, caplog):
    catalog, _ = data
    caplog.set_level(logging.INFO, logger="prodassoc")
    mlm.run_mlm(catalog, mlm.tiny_config(SEED, max_steps=6, max_minutes=5.0), device=CPU, out_dir=tmp_path,
                progress=False, progress_seconds=0)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("mlm: step ")]
    assert len(lines) >= 6  # every step with progress_seconds 0
    pattern = r"mlm: step \d/6 \(\d+%\), [\d.]+ examples/s, eta \d:\d\d:\d\d, budget left \d:\d\d:\d\d, loss [\d.]+"
    assert all(re.fullmatch(pattern, line) for line in lines), lines[:2]
    assert lines[-1].startswith("mlm: step 6/6 (100%)")

    # every 30 s (the default): a run of seconds logs only its final line
    caplog.clear()
    mlm.run_mlm(catalog, mlm.tiny_config(SEED, max_steps=6), device=CPU, out_dir=tmp_path / "quiet", progress=False)
    assert [r.getMessage()[:15] for r in caplog.records if r.getMessage().startswith("mlm: step ")] == [
        "mlm: step 6/6 ("]


def test_progress_helper_throttles_its_lines(caplog):
    log = logging.getLogger("prodassoc.test")
    caplog.set_level(logging.INFO, logger="prodassoc.test")
    bar = training.Progress("scoring", 100, bar=False, every_s=3600, deadline=training.Deadline.after(60), log=log,
                            unit="list")
    for _ in range(100):
        bar.update(1, 4)
    bar.close()
    (line,) = [r.getMessage() for r in caplog.records]
    assert re.fullmatch(r"scoring: list 100/100 \(100%\), [\d.]+ examples/s, eta 0:00:00, budget left 0:00:[0-5]\d",
                        line)


# --- options and settings --------------------------------------------------------------------------


def test_every_budget_is_a_train_option_and_a_setting(monkeypatch):
    monkeypatch.setenv("PRODASSOC_TRAINING__MAX_MINUTES", "12")
    monkeypatch.setenv("PRODASSOC_TRAINING__GNN__MAX_MINUTES", "2")
    settings = Settings()
    assert settings.training.max_minutes == 12 and settings.training.gnn.max_minutes == 2
    args = build_parser().parse_args([
        "train", "--as-of", "2011-11-08", "--max-minutes", "7.5", "--mlm-minutes", "1", "--teacher-minutes", "2",
        "--student-minutes", "3", "--lists-minutes", "0.5", "--gnn-minutes", "1.5", "--progress-seconds", "10",
    ])
    cfg = training_settings(settings, args)
    assert (cfg.max_minutes, cfg.mlm_minutes, cfg.teacher.max_minutes, cfg.student.max_minutes,
            cfg.student.teacher_minutes, cfg.gnn.max_minutes, cfg.progress_seconds) == (7.5, 1, 2, 3, 0.5, 1.5, 10)
    # options not given keep the settings (environment included)
    cfg = training_settings(settings, build_parser().parse_args(["train", "--as-of", "2011-11-08"]))
    assert cfg.max_minutes == 12 and cfg.gnn.max_minutes == 2 and cfg.teacher.max_minutes is None
    with pytest.raises(ValidationError, match="max_minutes"):
        training_settings(settings, build_parser().parse_args(["train", "--as-of", "2011-11-08", "--max-minutes", "0"]))
    # the split is an option too; a misspelt stage is an error, not ignored
    split = ["train", "--as-of", "2011-11-08", "--budget-split", "mlm=0.1,teacher=0.4,hybrid_seconds=20"]
    cfg = training_settings(settings, build_parser().parse_args(split))
    assert (cfg.budget.mlm, cfg.budget.teacher, cfg.budget.student, cfg.budget.hybrid_seconds) == (0.1, 0.4, 0.3, 20)
    with pytest.raises(ValidationError, match="mlmm"):
        training_settings(settings, build_parser().parse_args(["train", "--as-of", "2011-11-08",
                                                               "--budget-split", "mlmm=0.1"]))
    # budgets are resumable settings: a new budget continues the same run directory
    assert {"training.max_minutes", "training.gnn.max_minutes", "training.budget.teacher"} <= chain.RESUMABLE


def test_a_budget_change_resumes_the_same_models_directory(tmp_path):
    from prodassoc_core.pipeline import retrain

    a = Settings(data_dir=tmp_path, training=chain.tiny_training_config(SEED))
    b = Settings(data_dir=tmp_path, training=chain.tiny_training_config(SEED, max_minutes=9.0, progress_seconds=5))
    c = Settings(data_dir=tmp_path, training=chain.tiny_training_config(SEED + 1))
    day = date(2011, 11, 8)
    assert retrain.models_dir(a, day) == retrain.models_dir(b, day) != retrain.models_dir(c, day)


def test_deadline_slices():
    d = training.Deadline.after(100)
    assert d.bounded and 99 < d.remaining() <= 100
    assert 49 < d.fraction(0.5).remaining() <= 50
    assert 89 < d.minus(10).remaining() <= 90
    assert d.earliest(training.Deadline()) is d and not training.Deadline().bounded
    assert training.Deadline.minutes(None).remaining() == float("inf")
    assert training.Deadline.after(-5).expired()


def test_a_crashed_budgeted_stage_resumes_its_fitted_schedule(data, tmp_path):
    catalog, frame = data
    cfg = endless(teacher=endless().teacher.model_copy(update={"checkpoint_every": 3}))
    task = pairs.build_task(catalog, mlm.catalog_texts(catalog), frame, AS_OF, cfg.pairs)
    init = mlm.run_mlm(catalog, mlm.tiny_config(SEED, max_steps=2), device=CPU, out_dir=tmp_path / "mlm",
                       progress=False).model_dir

    def crash(state):
        if state.step == 4:
            raise RuntimeError("killed")

    # 5 s: validation and the time kept for the end take 2-3 s of it; with 4 s, a loaded machine
    # once ran out at step 4 (its budget stop wrote a checkpoint there before the crash)
    with pytest.raises(RuntimeError, match="killed"):
        teacher.train_teacher(task, init, cfg, device=CPU, out_dir=tmp_path / "t", progress=False,
                              deadline=training.Deadline.after(5), on_step=crash)
    checkpoint = training.latest_checkpoint(tmp_path / "t" / "checkpoints")
    assert training.checkpoint_step(checkpoint) == 3
    fitted = training.saved_total_steps(checkpoint)
    assert 4 <= fitted < 100_000  # the schedule was fitted to the 5 s budget
    # the rerun keeps that schedule (its warm-up and decay), whatever its own budget
    resumed = teacher.train_teacher(task, init, cfg, device=CPU, out_dir=tmp_path / "t", progress=False,
                                    deadline=training.Deadline.after(120))
    assert resumed.resumed_from == 3 and resumed.steps == resumed.scheduled_steps == fitted
    assert resumed.stop_reason == "budget" and resumed.total_steps == 100_000


def test_the_schedule_is_fitted_to_a_warm_step_not_the_first_pass_s_one_off_costs():
    """On an H200 the first forward and backward (CUDA context, kernels, allocator) took about
    5x a training step, and every stage's schedule was cut to a fifth of what fitted. Here
    the first pass costs 1 s and every later one nothing: the whole plan fits."""
    model = torch.nn.Linear(4, 1)
    calls = []

    def loss_fn(m, batch):
        if not calls:
            time.sleep(1.0)
        calls.append(1)
        return m(batch["x"]).pow(2).mean()

    device = training.choose_device("cpu")
    deadline = training.Deadline.after(10.0)
    steps = training.fit_schedule(model, lambda i: {"x": torch.ones(2, 4)}, loss_fn, device=device, planned=1000,
                                  deadline=deadline, desc="test")
    assert steps == 1000 and len(calls) == 2  # timed on the second pass; the old fit gave 9 steps
    assert all(p.grad is None for p in model.parameters())  # gradients dropped, weights untouched
