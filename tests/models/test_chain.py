"""The language-model chain on the shipped sample with the tiny scratch BERT: pairs, teacher,
student, resume, embeddings, the champion gate and the harness's model methods."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from prodassoc_core.data import baskets, importers, warehouse
from prodassoc_core.models import chain, champions, embeddings, mlm, pairs, student, teacher, tracking, training
from prodassoc_core.ops.settings import BasketConfig, Settings
from prodassoc_core.pipeline import retrain

from conftest import TEST_HYBRID, TEST_SELECTION

AS_OF = datetime(2011, 11, 8)
CPU = training.choose_device("cpu")
# the hybrid weights on a 0.5 grid (6 points, not 66): tuned all the same, in a tenth of the time;
# the tuning itself is tested in test_hybrid.py


@pytest.fixture(scope="module")
def data(sample_cut):
    lines = importers.online_retail_lines([sample_cut])
    catalog = importers.derive_catalog(lines)
    frame = baskets.baskets(lines, BasketConfig()).collect()
    return catalog, frame


@pytest.fixture(scope="module")
def cfg():
    return chain.tiny_training_config(7)


@pytest.fixture(scope="module")
def trained(data, cfg, tmp_path_factory):
    catalog, frame = data
    out = tmp_path_factory.mktemp("chain")
    return chain.train_chain(catalog, frame, AS_OF, cfg, device=CPU, out_dir=out, progress=False,
                             hybrid_cfg=TEST_HYBRID, selection_cfg=TEST_SELECTION), out


# --- pairs ------------------------------------------------------------------------------------


def test_positives_come_from_the_fit_window_only(data, cfg):
    catalog, frame = data
    task = pairs.build_task(catalog, mlm.catalog_texts(catalog), frame, AS_OF, cfg.pairs)
    cut = AS_OF - timedelta(days=cfg.pairs.validation_days)
    fit = frame.filter(pl.col("ordered_at") < cut)[baskets.ITEMS].to_list()
    # every positive pair is bought together in >= min_count fit baskets
    ids = task.space.product_ids
    together = {}
    for b in fit:
        s = set(b)
        for a, c in task.positives[:200]:
            if ids[a] in s and ids[c] in s:
                together[(a, c)] = together.get((a, c), 0) + 1
    assert all(together.get((int(a), int(c)), 0) >= cfg.pairs.min_count for a, c in task.positives[:200])
    # a pair bought together only in the held-out tail is a validation pair, never a positive
    a, b = ids[int(task.positives[0, 0])], "PLANTED"
    extra = pl.DataFrame({
        "order_id": ["X1", "X2", "X3"], "ordered_at": [AS_OF - timedelta(days=1)] * 3, "items": [[a, b]] * 3,
    }).cast(frame.schema)
    planted_catalog = pl.concat([catalog, catalog.head(1).with_columns(product_id=pl.lit(b), title=pl.lit("PLANTED"))])
    planted = pairs.build_task(planted_catalog, mlm.catalog_texts(planted_catalog), pl.concat([frame, extra]), AS_OF,
                               cfg.pairs)
    k = planted.space.index[b]
    assert not (planted.positives == k).any()
    assert b in planted.validation and a in planted.validation[b]
    with pytest.raises(ValueError, match="before as_of"):
        pairs.build_task(catalog, mlm.catalog_texts(catalog), frame, datetime(2011, 10, 20), cfg.pairs)


def test_negatives_are_never_bought_together_and_are_deterministic(data, cfg):
    catalog, frame = data
    task = pairs.build_task(catalog, mlm.catalog_texts(catalog), frame, AS_OF, cfg.pairs)
    rows = pairs.examples(task, cfg.pairs, np.random.default_rng(0), task.positives[:300])
    again = pairs.examples(task, cfg.pairs, np.random.default_rng(0), task.positives[:300])
    assert np.array_equal(rows, again)
    negatives = rows[rows[:, 2] == 0]
    assert len(negatives) >= 2 * 300  # hard + popular + random per positive (topped up when short)
    for a, n, _ in negatives:
        assert not task.space.co_bought(int(a), np.array([n]))[0]
    # hard negatives share a title word with their anchor (the sample has no categories)
    words = [pairs._title_words(t) for t in catalog["title"].to_list()]
    first = rows[np.flatnonzero(rows[:, 2] == 1) + 1]  # the first negative after each positive: the hard one
    shared = np.mean([bool(words[a] & words[n]) for a, n, _ in first])
    assert shared > 0.9


def test_auc():
    assert pairs.auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert pairs.auc(np.array([1.0, 1.0]), np.array([0, 1])) == pytest.approx(0.5)


# --- embeddings -------------------------------------------------------------------------------


def test_top_k_similar_matches_brute_force_blockwise_with_id_ties():
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(57, 8)).astype(np.float32)
    emb[5] = emb[9]  # two identical products: equal scores for every query
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ids = [f"P{i:03d}" for i in range(57)][::-1]
    got = embeddings.top_k_similar(ids, emb, 6, block_size=10)
    sims = emb @ emb.T
    for q in (0, 5, 9, 33):
        order = sorted((j for j in range(57) if j != q), key=lambda j: (-sims[q, j], ids[j]))[:6]
        listed = got.filter(pl.col("product_id") == ids[q]).sort("rank")
        assert listed["associated_product_id"].to_list() == [ids[j] for j in order]
        assert listed["rank"].to_list() == list(range(1, 7))
    assert got.height == 57 * 6
    only = embeddings.top_k_similar(ids, emb, 3, queries=[ids[4]])
    assert only["product_id"].unique().to_list() == [ids[4]]


# --- the chain ----------------------------------------------------------------------------------


def test_chain_trains_every_stage_and_embeds_every_product(trained, data):
    result, out = trained
    catalog, _ = data
    for stage in ("mlm", "teacher", "student"):
        assert (result.model_dir(stage) / "config.json").is_file()
    # the GNN over the fit graph, with the hybrid weights tuned on the held-out tail beside it
    assert (result.gnn.model_dir / "gnn.pt").is_file()
    warm, cold = champions.read_weights(result.gnn.model_dir)
    assert sum(warm.as_dict().values()) == pytest.approx(1) and cold.cooc == 0
    assert result.weights == {"warm": warm.as_dict(), "cold": cold.as_dict()}
    assert result.teacher.steps == 20 and result.student.steps == 20
    # finished stages keep their model, not their checkpoints (optimizer state too); the GNN resumes itself
    for stage in ("mlm", "teacher", "student"):
        assert not (out / stage / mlm.CHECKPOINTS).exists(), stage
    assert (out / "gnn" / "checkpoints").is_dir()
    assert set(result.teacher.after) == {"val_auc", "val_loss", "val_pairs"}
    assert 0 <= result.student.after["val_ndcg"] <= 1
    assert result.student.extra["lists"] == 300
    # the student keeps one layer of the two the MLM encoder has
    model, _ = embeddings.load_encoder(result.student.model_dir)
    assert model.config.num_hidden_layers == 1
    vectors = chain.catalog_vectors(result.student.model_dir, catalog, device=CPU)
    assert vectors.shape == (catalog.height, 64)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    table = chain.embeddings_table(catalog, vectors, "models:/prodassoc-student/1")
    assert table.num_rows == catalog.height and table["dim"][0].as_py() == 64
    # a product never sold still gets an embedding and associations (cold start)
    sold = {i for b in data[1][baskets.ITEMS].to_list() for i in b}
    unsold = [p for p in catalog["product_id"].to_list() if p not in sold]
    assert unsold
    assoc = chain.text_associations(result.student.model_dir, catalog, 5, device=CPU, method="student",
                                    queries=unsold[:3])
    assert assoc.group_by("product_id").len()["len"].to_list() == [5, 5, 5]


def test_rerunning_the_chain_reuses_finished_stages(trained, data, cfg):
    result, out = trained
    catalog, frame = data
    saved = {s: (getattr(result, s).model_dir / "model.safetensors").stat().st_mtime_ns for s in ("teacher", "student")}
    again = chain.train_chain(catalog, frame, AS_OF, cfg, device=CPU, out_dir=out, progress=False,
                              hybrid_cfg=TEST_HYBRID)
    assert again.student.after == result.student.after and again.teacher.steps == result.teacher.steps
    assert again.fit_window is None  # the weights were tuned by the first call: the gate computes its own
    # reused, not retrained: their weights were not written again
    assert {s: (getattr(again, s).model_dir / "model.safetensors").stat().st_mtime_ns for s in saved} == saved
    # other settings (not just a new time budget) must not reuse these stages
    with pytest.raises(ValueError, match="different run.*training.seed"):
        chain.train_chain(catalog, frame, AS_OF, cfg.model_copy(update={"seed": 8}), device=CPU, out_dir=out)
    budget = cfg.model_copy(update={"mlm_minutes": 5.0})
    assert chain.train_chain(catalog, frame, AS_OF, budget, device=CPU, out_dir=out, progress=False,
                             hybrid_cfg=TEST_HYBRID).student.steps == 20


@pytest.mark.parametrize("keep", [False, True])
def test_a_finished_stages_checkpoints_go_unless_kept(tmp_path, cfg, keep):
    stage = tmp_path / "teacher"
    checkpoint = stage / mlm.CHECKPOINTS / "step-00000020"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.pt").write_bytes(b"x" * 1000)
    cfg = cfg.model_copy(update={"keep_finished_checkpoints": keep})
    assert chain.drop_finished_checkpoints(tmp_path, "teacher", cfg) == 0  # not finished: they resume it
    (stage / training.MODEL_SUBDIR).mkdir()
    (stage / "teacher_results.json").write_text("{}")
    assert chain.drop_finished_checkpoints(tmp_path, "teacher", cfg) == (0 if keep else 1000)
    assert checkpoint.is_dir() == keep


def test_checkpoints_that_cannot_be_removed_do_not_fail_the_training(tmp_path, cfg, monkeypatch, caplog):
    stage = tmp_path / "student"
    (stage / mlm.CHECKPOINTS / "step-00000020").mkdir(parents=True)
    (stage / training.MODEL_SUBDIR).mkdir()
    (stage / "student_results.json").write_text("{}")

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(warehouse.shutil, "rmtree", refuse)
    assert chain.drop_finished_checkpoints(tmp_path, "student", cfg) == 0
    assert "chain: student checkpoints: " in caplog.text and "not removed" in caplog.text and (stage / mlm.CHECKPOINTS).is_dir()


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


class _Crash(RuntimeError):
    pass


def _crash_at(step: int):
    def on_step(state):
        if state.step == step:
            raise _Crash(f"killed at step {state.step}")

    return on_step


@pytest.mark.parametrize("stage", ["teacher", "student"])
def test_resume_after_a_crash_gives_the_uninterrupted_result(trained, data, cfg, tmp_path, stage):
    result, _ = trained
    catalog, frame = data
    task = pairs.build_task(catalog, mlm.catalog_texts(catalog), frame, AS_OF, cfg.pairs)

    def run(out: Path, on_step=None):
        if stage == "teacher":
            return teacher.train_teacher(task, result.mlm.model_dir, cfg, device=CPU, out_dir=out, on_step=on_step,
                                         progress=False)
        return student.train_student(task, result.mlm.model_dir, result.teacher.model_dir, cfg, device=CPU,
                                     out_dir=out, on_step=on_step, progress=False)

    whole = run(tmp_path / "whole")
    with pytest.raises(_Crash):
        run(tmp_path / "broken", on_step=_crash_at(17))  # checkpoints every 10 steps: resumes from 10
    resumed = run(tmp_path / "broken")
    assert resumed.resumed_from == 10 and resumed.steps == whole.steps == 20
    a, b = _weights(whole.model_dir), _weights(resumed.model_dir)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed.train_losses == whole.train_losses
    assert resumed.after == whole.after


def test_a_seed_is_required(data, tmp_path):
    catalog, frame = data
    with pytest.raises(ValueError, match="seed"):
        chain.train_chain(catalog, frame, AS_OF, chain.tiny_training_config(0).model_copy(update={"seed": None}),
                          device=CPU, out_dir=tmp_path)


# --- the champion gate --------------------------------------------------------------------------


def _spoiled_copy(model_dir: Path, dst: Path) -> Path:
    """The same encoder with its embeddings zeroed: every text gets the same vector."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(model_dir)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "embeddings" in name:
                param.zero_()
    model.save_pretrained(dst)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(dst)
    return dst


def test_the_gate_scores_the_candidate_with_the_chains_fit_window_as_from_scratch(trained, data, cfg, tmp_path):
    """The GNN stage's embeddings and co-purchase signals on the fit window are the gate's for
    that candidate: the same per-product scores as computing them again; another student's are not."""
    from dataclasses import replace

    from polars.testing import assert_frame_equal

    result, _ = trained
    catalog, frame = data
    settings = Settings(data_dir=tmp_path, training=cfg)
    window = retrain.GateData.build(settings, frame, AS_OF.date())
    gnn_dir = result.gnn.model_dir
    candidate = champions.ChampionSet(result.student.model_dir, "models:/s/1", gnn_dir, "models:/g/1",
                                      *champions.read_weights(gnn_dir), champions.read_cooc(gnn_dir))
    fit = result.fit_window
    assert fit.serves(candidate.student_dir, gnn_dir, window.cut, settings.hybrid.candidates_k, candidate.cooc)
    reused = retrain._hybrid_per_product(settings, candidate, catalog, window, CPU, 10, fit)
    assert_frame_equal(reused, retrain._hybrid_per_product(settings, candidate, catalog, window, CPU, 10))
    assert reused.height > 50
    other = replace(candidate, student_dir=tmp_path / "another")
    assert not fit.serves(other.student_dir, gnn_dir, window.cut, settings.hybrid.candidates_k, other.cooc)


def test_the_gate_serves_only_what_beats_the_classic_method_and_the_served_model(trained, data, cfg, tmp_path):
    from dataclasses import replace

    from prodassoc_core.models import serving

    result, _ = trained
    catalog, frame = data
    settings = Settings(data_dir=tmp_path, training=cfg)
    sel = settings.selection
    given = replace(result)  # the gate takes the chain's fit window: the module's result keeps its own
    first = retrain.gate(settings, retrain.register(settings, given, AS_OF.date()), given, catalog, frame,
                         AS_OF.date(), CPU, tmp_path / "g1")
    assert given.fit_window is None and result.fit_window is not None  # used, then released
    # nothing served yet is no reason to promote: only segments the hybrid won on the gate half
    for s, source in first.segments.items():
        won = first.n_products[s] >= sel.gate_min_products and \
            first.scores["candidate"][s] > first.scores["classic"][s] + sel.gate_margin
        assert (source == "hybrid") == won, s
    assert first.promoted == ("hybrid" in first.segments.values()) and first.champion_version is None
    student = tracking.model_version(settings.tracking_uri, cfg.student.registered_model, "1")
    assert student.tags["prodassoc.gate"] == ("champion" if first.promoted else "candidate")
    # trained without a tracker: each stage's run is logged at registration, the MLM's beside the others
    experiments = {stage: tracking.runs_experiment(settings.tracking_uri, tracking.model_version(
        settings.tracking_uri, chain.registered_name(cfg, stage), "1").run_id) for stage in chain.STAGES}
    assert set(experiments.values()) == {cfg.experiment}

    serving.promote(settings, "1", {"warm": "hybrid", "cold": "hybrid"}, "test: served by hand")
    bad_dir = _spoiled_copy(result.student.model_dir, tmp_path / "bad")
    spoiled = replace(result, student=replace(result.student, model_dir=bad_dir))
    second = retrain.gate(settings, retrain.register(settings, spoiled, AS_OF.date()), spoiled, catalog, frame,
                          AS_OF.date(), CPU, tmp_path / "g2")
    assert not second.promoted and second.champion_version == "1"
    if "champion" in second.scores:  # it won a segment against the classic method: judged against v1
        assert second.scores["candidate"]["served"] <= second.scores["champion"]["served"]
    assert tracking.aliased_version(settings.tracking_uri, cfg.student.registered_model, "champion").version == "1"
    assert serving.served_models(settings, AS_OF.date()).student.version == "1"
    assert tracking.model_version(settings.tracking_uri, cfg.student.registered_model, "2").tags[
        "prodassoc.gate"] == "candidate"
