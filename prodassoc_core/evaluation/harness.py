"""The evaluation harness: run the nightly chain on the training window, score it on the test window.

For ``as_of`` and every selected method: the landing zone is ingested up to its last
partition, the nightly stages build the training-window baskets (before ``as_of``) and
publish each method's ``product_associations`` into the evaluation area
(``<data>/evaluation/as_of=D/product_associations/method=M/data.parquet``), and each
published table is scored against the test baskets (``as_of`` up to the end of the
data) with prodassoc_core.mining.protocol: the product-level metrics of ../shared/EVAL.md and
basket completion. Results go to MLflow (one run per method) and to a Markdown + HTML
report under ``<data>/reports``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from prodassoc_core.data import PRODUCT_ASSOCIATIONS, baskets, ingest, warehouse
from prodassoc_core.evaluation import report
from prodassoc_core.mining import popular_products, protocol
from prodassoc_core.models import tracking
from prodassoc_core.ops import MODEL_METHODS, Settings
from prodassoc_core.pipeline import stages

log = logging.getLogger("prodassoc.harness")

PARTITION_PREFIX = "dt="


@dataclass(frozen=True)
class Split:
    """Training baskets before as_of (within the lookback), test baskets in [as_of, end)."""

    as_of: date
    end: date
    train_path: Path
    test_items: list[list[str]]
    train_items: list[list[str]]
    relevant: dict[str, set[str]]  # scored products of the test window -> their relevant sets
    warm: set[str]  # products sold in the training window
    popular: list[str]  # training products, most popular first (the fill for every method)
    catalog: pl.DataFrame | None = None  # the staged catalog (text methods)


def landing_end(landing_dir: Path) -> date:
    """The day after the newest landed transactions partition (the end of the data, not the clock)."""
    days = [
        date.fromisoformat(p.name.removeprefix(PARTITION_PREFIX))
        for p in (landing_dir / "transactions").glob(f"{PARTITION_PREFIX}*")
        if p.is_dir()
    ]
    if not days:
        raise ValueError(f"{landing_dir / 'transactions'}: no dt=YYYY-MM-DD partitions landed")
    return max(days) + timedelta(days=1)


def prepare(settings: Settings, as_of: date, end: date | None = None) -> Split:
    """Ingest everything landed, then build training and test baskets around as_of."""
    end = end or landing_end(settings.landing_dir)
    if end <= as_of:
        raise ValueError(f"no test window: the landed data ends before {end}, not after as_of {as_of}")
    stages.ingest_landing(settings, end)
    train_path = stages.build_baskets(settings, as_of)
    test = baskets.baskets(ingest.read_staged_transactions(settings.staging_dir, as_of, end), settings.baskets)
    test_items = test.collect()[baskets.ITEMS].to_list()
    train_items = stages.read_baskets(train_path)
    cfg = settings.evaluation
    return Split(
        as_of=as_of,
        end=end,
        train_path=train_path,
        test_items=test_items,
        train_items=train_items,
        relevant=protocol.relevant_sets(test_items, cfg.min_test_baskets, cfg.min_pair_baskets, cfg.min_lift),
        warm={i for b in train_items for i in b},
        popular=popular_products(train_items),
        catalog=ingest.read_staged_catalog(settings.staging_dir),
    )


def method_dir(settings: Settings, as_of: date, method: str) -> Path:
    return settings.data_dir / "evaluation" / f"as_of={as_of.isoformat()}" / PRODUCT_ASSOCIATIONS.name / f"method={method}"


def publish_method(settings: Settings, split: Split, method: str) -> Path | str:
    """Run the nightly association stage with ``method`` and publish its table for scoring.

    Language-model methods (``MODEL_METHODS``) rank by their encoder instead; when the
    method's model is not available (see ``model_dir``), the reason it is skipped (a str)."""
    if method in MODEL_METHODS:
        try:
            table = model_associations(settings, split, method)
        except Exception as exc:  # noqa: BLE001 - e.g. its files gone from the artifact store: the others are scored
            table = f"{method} could not be run ({stages.error_line(exc)})"
            log.warning("evaluation: %s skipped: %s", method, table, exc_info=True)
        if isinstance(table, str):
            return table
        out = method_dir(settings, split.as_of, method) / warehouse.DATA_FILE
        warehouse.atomic_write_parquet(table.to_arrow(), out, settings.data_dir / "evaluation" / warehouse.TMP_DIR)
        return out
    if method == "served":  # the nightly's own association stage: what it would publish for as_of
        chosen = settings
    else:  # the classic method itself (auto: as chosen for the catalog), never the nightly's hybrid
        chosen = settings.model_copy(
            update={
                "associations": settings.associations.model_copy(update={"method": method}),
                "hybrid": settings.hybrid.model_copy(update={"enabled": False}),
            }
        )
    staged = stages.associate(chosen, split.train_path, split.as_of)[PRODUCT_ASSOCIATIONS.name]
    out = method_dir(settings, split.as_of, method) / warehouse.DATA_FILE
    warehouse.atomic_write_parquet(pq.read_table(staged), out, settings.data_dir / "evaluation" / warehouse.TMP_DIR)
    return out


def score_method(settings: Settings, split: Split, method: str, published: Path) -> dict:
    """Product-level and basket-completion metrics of one published table.

    The teacher reranks the scored products' shortlists only, so its basket completion
    (which needs every product's list) is not computed (NaN)."""
    cfg = settings.evaluation
    table = pl.read_parquet(published, columns=["product_id", "associated_product_id", "rank"])
    filled = protocol.fill_with_popular(table, split.relevant, split.popular, cfg.k)
    scores = protocol.score_associations(filled, split.relevant, split.warm, cfg.k)
    if method == "teacher":
        completion = {"hr": math.nan, "ndcg": math.nan, "n": len(split.test_items)}
    else:
        completion = protocol.basket_completion(split.test_items, table, split.popular, cfg.seed, cfg.k)
    return {"method": method, **scores, **{f"bc_{k}": v for k, v in completion.items()}}


# --- language-model methods -------------------------------------------------------------------


def model_dir(settings: Settings, split: Split, stage: str) -> tuple[Path | str, str] | str:
    """``(directory, source)`` of a language-model stage for this split, or the reason it is skipped.

    ``pretrained``: the configured base encoder (the packaged all-MiniLM-L6-v2 by default).
    ``mlm``, ``teacher``, ``student``: the ``@champion`` version of the registered model, which
    must have been trained on data before the split's as_of (its ``prodassoc.as_of`` tag);
    a model that has seen the test window is never scored."""
    from prodassoc_core.models import champion_dir, resolve_pretrained

    cfg = settings.training
    if stage == "pretrained":
        if cfg.encoder.kind != "pretrained":
            return "the configured encoder is trained from scratch: no pretrained model"
        source = resolve_pretrained(cfg.encoder)
        return source, source
    name = {"mlm": "prodassoc-mlm", "teacher": cfg.teacher.registered_model, "student": cfg.student.registered_model}[stage]
    found = champion_dir(settings, name, settings.data_dir / "evaluation" / "models", not_after=split.as_of)
    if found is None:
        return f"no {name}@{cfg.champion_alias} registered (run `prodassoc train`)"
    return found


def graph_associations(settings: Settings, split: Split, method: str, device) -> pl.DataFrame | str:
    """``gnn``: nearest products by the champion GNN's embeddings over the training window's
    graph; ``hybrid``: the nightly hybrid ranking (hybrid.py) with the champions' weights."""
    from datetime import datetime, time

    from prodassoc_core.models import champions, embeddings, hybrid

    found = champions.resolve(settings, settings.data_dir / "evaluation" / "models", not_after=split.as_of)
    if isinstance(found, str) or (method == "gnn" and found.gnn_dir is None):
        reason = found if isinstance(found, str) else "no champion GNN"
        log.warning("evaluation: %s skipped: %s", method, reason)
        return reason
    train = pl.read_parquet(split.train_path)
    model = champions.hybrid_model(settings, found, split.catalog, train, device)
    top_k = settings.associations.top_k
    if method == "gnn":
        return embeddings.top_k_similar(split.catalog["product_id"].to_list(), model.gnn, top_k, method="gnn")
    return hybrid.hybrid_associations(
        split.catalog, train, datetime.combine(split.as_of, time()), model, top_k=top_k,
        candidates_k=settings.hybrid.candidates_k, decayed=found.cooc,
    ).select("product_id", "associated_product_id", "rank", "score", "method")


def model_associations(settings: Settings, split: Split, method: str) -> pl.DataFrame | str:
    """A language-model method's ranking: cosine of the encoder's embeddings (pretrained, mlm,
    student; every catalog product), or the teacher reordering the student's top
    ``rerank_depth`` (scored products only: the cross-encoder reads every pair); the reason
    it is skipped (a str) when its model is not available."""
    from prodassoc_core.models import chain, device_of

    cfg, top_k = settings.training, settings.associations.top_k
    device = device_of(cfg)
    if method in ("gnn", "hybrid"):
        return graph_associations(settings, split, method, device)
    found = model_dir(settings, split, "student" if method == "teacher" else method)
    if isinstance(found, str):
        log.warning("evaluation: %s skipped: %s", method, found)
        return found
    if method != "teacher":
        length = cfg.student.max_length if method == "student" else cfg.encoder.max_length
        return chain.text_associations(found[0], split.catalog, top_k, device=device, method=method, max_length=length)
    teacher = model_dir(settings, split, "teacher")
    if isinstance(teacher, str):
        log.warning("evaluation: teacher skipped: %s", teacher)
        return teacher
    shortlist = chain.text_associations(
        found[0], split.catalog, settings.evaluation.rerank_depth, device=device, method="student",
        queries=sorted(set(split.relevant) & set(split.catalog["product_id"].to_list())),
        max_length=cfg.student.max_length,
    )
    return chain.teacher_reranked(teacher[0], split.catalog, shortlist, device=device, seed=cfg.seed or 0,
                                  max_length=cfg.teacher.max_length)


def write_report(
    settings: Settings, split: Split, results: pl.DataFrame, skipped: dict[str, str] | None = None
) -> tuple[Path, Path]:
    """The Markdown and HTML report; ``skipped``: methods not evaluated -> why."""
    cfg = settings.evaluation
    first = results.row(0, named=True) if results.height else {"n_all": 0, "n_warm": 0, "n_cold": 0, "bc_n": 0}
    context = {
        "data": str(settings.landing_dir.resolve()),
        "train": f"baskets before {split.as_of} (lookback {settings.lookback_days} days): {len(split.train_items):,}",
        "test": f"baskets from {split.as_of} to {split.end - timedelta(days=1)}: {len(split.test_items):,}",
        "scored products": f"{first['n_all']:,} ({first['n_warm']:,} warm, {first['n_cold']:,} cold)",
        "relevance": f">= {cfg.min_pair_baskets} test baskets together and test lift >= {cfg.min_lift}; "
        f"products in >= {cfg.min_test_baskets} test baskets",
        "basket completion": f"{first['bc_n']:,} test baskets, one item hidden (seed {cfg.seed})",
    }
    md, page = report.render(results, context, skipped)
    settings.reports_dir.mkdir(parents=True, exist_ok=True)
    stem = settings.reports_dir / f"evaluation_as_of={split.as_of.isoformat()}"
    md_path, html_path = stem.with_suffix(".md"), stem.with_suffix(".html")
    md_path.write_text(md)
    html_path.write_text(page)
    return md_path, html_path


def log_results(settings: Settings, split: Split, results: pl.DataFrame, artifacts: list[Path]) -> list[str]:
    """One MLflow run per method; the report files are attached to each."""
    cfg = settings.evaluation
    ids = []
    for row in results.iter_rows(named=True):
        params = {
            "method": row["method"],
            "as_of": split.as_of.isoformat(),
            "test_end": split.end.isoformat(),
            "lookback_days": settings.lookback_days,
            "k": cfg.k,
            "seed": cfg.seed,
            "min_test_baskets": cfg.min_test_baskets,
            "min_pair_baskets": cfg.min_pair_baskets,
            "min_lift": cfg.min_lift,
            "min_pair_count": settings.associations.min_pair_count,
            "top_k": settings.associations.top_k,
        }
        if row["method"] == "decayed_damped":
            a = settings.associations
            params |= {"half_life_days": a.half_life_days, "size_exponent": a.size_exponent,
                       "popularity_exponent": a.popularity_exponent}
        metrics = {k: v for k, v in row.items() if k != "method"}
        ids.append(
            tracking.log_run(
                settings.tracking_uri,
                cfg.experiment,
                settings.data_dir / "mlartifacts",
                run_name=f"{row['method']} as_of={split.as_of.isoformat()}",
                params=params,
                metrics=metrics,
                tags={"prodassoc.kind": "evaluation", "prodassoc.dataset": str(settings.landing_dir.resolve())},
                artifacts=artifacts,
            )
        )
    return ids

