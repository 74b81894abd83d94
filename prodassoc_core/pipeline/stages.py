"""The nightly stages as plain functions from paths to paths (no orchestration here).

Each stage reads what the previous one wrote under the run's work directory
``<data>/runs/as_of=YYYY-MM-DD/`` and writes its own output there; ``publish``
moves the finished tables into the warehouse. Prefect tasks wrap these one to one
(tasks/nightly.py), and the CLI's ad-hoc commands call them directly. ``nightly_stages`` is
the one ordered composition of the stages: the Prefect flow runs it with a runner that makes
each stage a task, ``run_nightly`` and ``backfill`` with the plain in-process runner.

Rerun safety: ingestion is incremental (the manifest), every stage output and every
published partition is replaced atomically, and the same inputs give byte-identical
outputs. Concurrency (``prodassoc_core.ops.locks``): a whole run for one ``as_of`` holds that
date's run lock (taken by ``run_nightly`` and by the Prefect flow), ingestion holds the
data-dir-wide ingest lock, and the DuckDB view refresh holds the views lock.

What is served (``associate``, prodassoc_core/models/serving.py): the classic method chosen for the
catalog, and per segment (warm, cold) the hybrid of the newest models that passed the serving
gate and were trained on data before ``as_of``; with such models ``product_embeddings`` of the
served student are published with the other tables.

Engines (``settings.engine``): ``local`` runs every stage in this process (polars, pyfim);
``spark`` runs the data stages' heavy work as Spark jobs on ``settings.spark.master``: baskets
(written as a Parquet dataset directory at the same path), rule mining, the classic pair rankings
and the bundles' item sets. Each stage still stages the same table, with the same schema, for the
same ``publish``; what comes back to the driver is the answer (rules, top-K pairs, bundles).
Ingestion reads and validates transaction files in Spark (``data.spark_ingest``: GE's Spark
datasource) and writes staging, quarantine and the manifest with the local code. The catalog's
ingestion, the classic method's choice (``serving.classic_choice``: once per
``selection.reselect_days``, on baskets collected from Spark), ``decayed_damped`` and
``popularity`` rankings and the hybrid run on the driver with the local code.

Fault points (``warehouse.fault_point``, for tests and drills): ``run.locked`` (run lock
taken), ``ingest``, ``baskets``, ``mine``, ``associate``, ``bundle``, ``publish`` (each stage's start),
``publish.between_tables`` (after each table's partition), ``commit.before`` (before the run's commit marker).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from time import perf_counter
from typing import TypeVar

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from prodassoc_core.data import (
    ALL_TABLES,
    ASSOCIATED_PRODUCT_ID,
    ASSOCIATION_RULES,
    BUNDLES,
    CATALOG,
    OPTIONAL_TABLES,
    ORDER_ID,
    PRODUCT_ASSOCIATIONS,
    PRODUCT_EMBEDDINGS,
    PRODUCT_ID,
    PUBLISHED_TABLES,
    TRANSACTIONS,
    baskets,
    in_rank_order,
    ingest,
    quarantine_schema,
    spark,
    storage,
    warehouse,
)
from prodassoc_core.mining import methods, mine_rules, spark_mining
from prodassoc_core.ops import Settings, locks

log = logging.getLogger("prodassoc.pipeline")
T = TypeVar("T")

BASKETS_FILE = "baskets.parquet"
BASKET_ACCOUNT_FILE = "basket_account.parquet"  # where the window's lines went (baskets.line_account)
VIEWS_LOCK_TIMEOUT_S = 600.0  # a refresh takes well under a second; waiting longer means something hangs


class NoDataError(RuntimeError):
    """The run's training window holds no baskets: nothing to publish for that date."""


class RetentionError(ValueError):
    """A run date older than the published history the warehouse keeps (``keep_published_days``):
    publishing it would be undone by the run that commits next."""


@dataclass(frozen=True)
class Window:
    """The training window [start, end): everything before as_of, bounded by the lookback."""

    start: date
    end: date

    @classmethod
    def before(cls, as_of: date, lookback_days: int) -> "Window":
        return cls(as_of - timedelta(days=lookback_days), as_of)


def run_folder(settings: Settings, as_of: date) -> Path:
    """``<data>/runs/as_of=YYYY-MM-DD``: a run's work files (not created here)."""
    return settings.data_dir / "runs" / f"as_of={as_of.isoformat()}"


def run_dir(settings: Settings, as_of: date) -> Path:
    """``run_folder``, created."""
    path = run_folder(settings, as_of)
    path.mkdir(parents=True, exist_ok=True)
    return path


def ingest_landing(settings: Settings, as_of: date) -> ingest.IngestReport:
    """Validate and stage every landed file not yet ingested (partitions before as_of).

    Holds the data-dir-wide ingest lock: the manifest, staging and the GE context are
    shared by the runs of all dates.
    """
    warehouse.fault_point("ingest")
    settings.quarantine_dir.mkdir(parents=True, exist_ok=True)  # where analysts look, even while empty
    with locks.ingest_lock(settings.locks_dir, timeout=settings.ingest_lock_timeout_s):
        # an s3:// landing (storage.object_store_locations) is first copied into the local landing dir
        storage.sync_configured_landing(settings.landing_dir, settings.landing_url)
        return ingest.ingest(
            landing_dir=settings.landing_dir,
            staging_dir=settings.staging_dir,
            quarantine_dir=settings.quarantine_dir,
            manifest_path=settings.manifest_path,
            gx_dir=settings.gx_dir,
            cfg=settings.validation,
            as_of=as_of,
            spark=spark_session(settings) if settings.engine == "spark" else None,
        )


def build_baskets(settings: Settings, as_of: date) -> Path:
    """Baskets of the training window, written to the run directory."""
    warehouse.fault_point("baskets")
    window = Window.before(as_of, settings.lookback_days)
    out = run_dir(settings, as_of) / BASKETS_FILE
    if settings.engine == "spark":
        n, account, split, orders = _spark_baskets(settings, window, out)
    else:
        lines = ingest.read_staged_transactions(settings.staging_dir, window.start, window.end)
        frame, account, split, orders = pl.collect_all([
            baskets.baskets(lines, settings.baskets), baskets.line_account(lines, settings.baskets),
            baskets.split_orders(lines), lines.select(pl.col(ORDER_ID).n_unique()),
        ])
        n, orders = frame.height, orders.item()
        if n:
            warehouse.atomic_write_parquet(frame.to_arrow(), out, out.parent / warehouse.TMP_DIR)
    if split.height:
        log.warning("baskets: %s", baskets.describe_split(split, orders))
    if n == 0:  # publishing empty tables would mark the date done (backfills skip it)
        raise NoDataError(
            f"as_of {as_of}: no baskets in the training window [{window.start}, {window.end}) of "
            f"{settings.staging_dir}; nothing is published (is as_of outside the landed data?)"
            + (f"; {baskets.describe_account(account, 0)}" if account.height else "")
        )
    log.info("baskets: %d orders in [%s, %s); %s", n, window.start, window.end, baskets.describe_account(account, n))
    account_path = out.parent / BASKET_ACCOUNT_FILE
    warehouse.atomic_write_parquet(account.with_columns(baskets=pl.lit(n, pl.Int64)).to_arrow(), account_path,
                                   out.parent / warehouse.TMP_DIR)
    return out


def spark_session(settings: Settings):
    """The Spark session of ``engine: spark`` (data/spark.py: the active one, or one from ``settings.spark``)."""
    return spark.session(settings.spark)


def _spark_baskets(settings: Settings, window: Window, out: Path) -> tuple[int, pl.DataFrame, pl.DataFrame, int]:
    """The window's baskets as a Spark job, written as a Parquet dataset directory at ``out``;
    returns their number (0: nothing written), the lines' account (``baskets.line_account``), the
    orders split over days or stores (``baskets.split_orders``) and the number of orders."""
    session = spark_session(settings)
    lines = spark.read_staged_transactions(session, settings.staging_dir, window.start, window.end)
    if lines is None:
        empty = pl.LazyFrame(schema=TRANSACTIONS.polars_schema)
        return 0, baskets.line_account(empty, settings.baskets).collect(), baskets.split_orders(empty).collect(), 0
    lines = lines.persist()  # read once for the baskets, the account and the split orders
    try:
        rule = spark.line_rule(lines, settings.baskets)
        n = spark.write_parquet(spark.baskets(lines, settings.baskets, rule), out)
        if n == 0:
            spark.remove(out)
        return n, spark.line_account(lines, settings.baskets, rule), *spark.split_orders(lines)
    finally:
        lines.unpersist()


def spark_baskets_between(settings: Settings):
    """``serving.classic_choice``'s ``baskets_between`` for the spark engine: the baskets of the
    staged lines ordered in [start, end), built in Spark, collected (the choice runs on the driver)."""

    def load(start: date, end: date) -> pl.DataFrame:
        session = spark_session(settings)
        lines = spark.read_staged_transactions(session, settings.staging_dir, start, end)
        if lines is None:
            return baskets.baskets(pl.LazyFrame(schema=TRANSACTIONS.polars_schema), settings.baskets).collect()
        return pl.from_arrow(spark.baskets(lines, settings.baskets).toArrow())

    return load


def read_baskets(path: Path) -> list[list[str]]:
    """The item lists of a run's baskets (a file, or the spark engine's dataset directory)."""
    return read_baskets_frame(path, columns=[baskets.ITEMS])[baskets.ITEMS].to_list()


def read_baskets_frame(path: Path, columns: list[str] | None = None) -> pl.DataFrame:
    """A run's baskets (order_id, ordered_at, items) in their order: ``build_baskets``' file, or
    the Parquet dataset directory the spark engine writes there (its part files in order)."""
    return pl.from_arrow(pq.read_table(path, columns=columns))


def basket_count(path: Path) -> int:
    """The number of baskets at ``path`` (file or dataset directory), from the Parquet footers."""
    import pyarrow.dataset as ds

    return ds.dataset(path, format="parquet").count_rows()


def _stage(table: pa.Table, name: str, baskets_path: Path) -> Path:
    """Write a finished table next to the run's baskets, ready for publish."""
    out = baskets_path.parent / f"{name}.parquet"
    warehouse.atomic_write_parquet(table, out, out.parent / warehouse.TMP_DIR)
    log.info("%s: %d rows", name, table.num_rows)
    return out


def mine(settings: Settings, baskets_path: Path, as_of: date) -> Path:
    """Association rules of the training window's baskets."""
    warehouse.fault_point("mine")
    if settings.engine == "spark":
        lines = spark.read_parquet(spark_session(settings), baskets_path)
        m = settings.mining
        passed = spark_mining.count_itemsets(lines, m.min_support, m.max_len, n=basket_count(baskets_path))
        rules = spark_mining.mine_rules(lines, m, counts=passed)
    else:
        rules = mine_rules(read_baskets(baskets_path), settings.mining)
    return _stage(rules, ASSOCIATION_RULES.name, baskets_path)


SERVING_FILE = "serving.json"


def associate(settings: Settings, baskets_path: Path, as_of: date) -> dict[str, Path]:
    """``product_associations`` for ``as_of`` as the serving plan says (serving.py), and the
    served student's ``product_embeddings`` when one is served.

    Per segment: warm products (sold in the window) get the classic ranking chosen for this
    catalog or the hybrid, cold products (never sold) the hybrid or nothing, as the served
    models' gate proved on their held-out tail; only models trained on data before ``as_of``
    are served. Every row says its ``source`` and, for hybrid rows, the model versions. The plan
    is written next to the staged tables (``serving.json``) for the run's record.
    Returns table name -> staged file.
    """
    from prodassoc_core.models import serving

    warehouse.fault_point("associate")
    on_spark = settings.engine == "spark"
    plan = serving.plan(settings, as_of, spark_baskets_between(settings) if on_spark else None)
    train: pl.DataFrame | None = None
    served = catalog = None
    if plan.serves_hybrid:
        train, catalog = read_baskets_frame(baskets_path), _associable_catalog(settings)
        served, plan = _load_served(settings, plan, catalog, train, baskets_path)
    log.info("associate: %s", plan.describe())
    staged: dict[str, Path] = {}
    parts = []
    if plan.source("warm") == serving.CLASSIC:  # the classic ranking only where it is served
        if on_spark and plan.classic.method in spark_mining.PAIR_METHODS:
            lines = spark.read_parquet(spark_session(settings), baskets_path)
            n = basket_count(baskets_path)
            ranked = pl.from_arrow(spark_mining.product_associations(lines, plan.classic, n))
            # the metrics as the local engine publishes them (methods.publishable): the same bits
            classic = pl.from_arrow(methods.publishable_counts(ranked, n))
        else:
            if on_spark:
                log.info("associate: %s runs on the driver (the spark engine ranks %s in Spark)",
                         plan.classic.method, ", ".join(spark_mining.PAIR_METHODS))
            train = read_baskets_frame(baskets_path)
            ranking = methods.config_associations(train, datetime.combine(as_of, time()), plan.classic)
            classic = pl.from_arrow(methods.publishable(ranking, train[baskets.ITEMS].to_list()))
        parts.append(classic.with_columns(source=pl.lit(serving.CLASSIC), is_cold_start=pl.lit(False)))
    if plan.serves_hybrid:
        rows, embeddings = _hybrid_rows(settings, plan, served, catalog, train, as_of)
        parts.append(rows)
        staged[PRODUCT_EMBEDDINGS.name] = _stage(embeddings, PRODUCT_EMBEDDINGS.name, baskets_path)
        del rows, embeddings  # else held until the function returns, while the table is copied below
    # One copy of the table at a time (at 50,000 products it is a million rows): the segments are
    # aligned in polars and appended as they are, sorted only when out of order, converted once.
    table = pl.concat([PRODUCT_ASSOCIATIONS.conform_frame(part) for part in parts], rechunk=False)
    del parts
    table = current_products_only(table, ingest.read_staged_catalog(settings.staging_dir)[PRODUCT_ID])
    if not in_rank_order(table):
        table = table.sort(PRODUCT_ID, "rank")
    table = PRODUCT_ASSOCIATIONS.conform(table.to_arrow())
    staged[PRODUCT_ASSOCIATIONS.name] = _stage(table, PRODUCT_ASSOCIATIONS.name, baskets_path)
    warehouse.write_json(baskets_path.parent / SERVING_FILE, plan.as_json())
    return staged


def current_products_only(table: pl.DataFrame, catalog_ids: pl.Series) -> pl.DataFrame:
    """``product_associations`` rows whose two products are in the current catalog: a product a
    newer snapshot delisted still counts in the window's statistics, but is not served. The other
    products' lists close up (ranks 1, 2, ... in their order)."""
    current = catalog_ids.implode()
    keep = pl.col(PRODUCT_ID).is_in(current) & pl.col(ASSOCIATED_PRODUCT_ID).is_in(current)
    gone = table.filter(~keep)
    if gone.is_empty():
        return table
    names = sorted((set(gone[PRODUCT_ID]) | set(gone[ASSOCIATED_PRODUCT_ID])) - set(catalog_ids))
    log.info("associate: %d rows name %d product(s) no longer in the catalog (%s%s): not published",
             gone.height, len(names), ", ".join(names[:5]), ", ..." if len(names) > 5 else "")
    return (table.filter(keep).sort(PRODUCT_ID, "rank")
            .with_columns(pl.int_range(1, pl.len() + 1).over(PRODUCT_ID).cast(table.schema["rank"]).alias("rank")))


def error_line(exc: BaseException) -> str:
    """``Type: first line of the message``: an error quoted in a record (a serving plan, a gate
    decision, a skipped method) that goes on without it; the log keeps the traceback."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def _associable_catalog(settings: Settings) -> pl.DataFrame:
    """The staged catalog without the non-product codes (postage, discounts, samples: the basket
    rules), which are never associated products."""
    return ingest.read_staged_catalog(settings.staging_dir).filter(
        ~baskets.is_non_product(settings.baskets)).sort(PRODUCT_ID)


def _load_served(settings: Settings, plan, catalog: pl.DataFrame, train: pl.DataFrame, baskets_path: Path):
    """``((champion set, hybrid model), plan)`` for a plan that serves the hybrid; when its models
    cannot be downloaded or loaded (the artifact store lost their files, or is unreachable), the
    nightly still publishes: ``(None, the plan with the classic method everywhere)``, saying why."""
    from prodassoc_core.models import champions, device_of

    try:
        with tempfile.TemporaryDirectory(prefix=".champions-", dir=baskets_path.parent) as work:
            found = champions.download(settings, plan.models, Path(work))
            model = champions.hybrid_model(settings, found, catalog, train, device_of(settings.training))
    except Exception as exc:  # noqa: BLE001 - whatever stops the models loading, the classic method serves
        why = f"the served models {plan.models.describe()} could not be loaded ({error_line(exc)})"
        log.warning("associate: %s: serving the classic method", why, exc_info=True)
        return None, plan.without_models(why)
    return (found, model), plan


def _hybrid_rows(settings: Settings, plan, served, catalog: pl.DataFrame, train: pl.DataFrame, as_of: date
                 ) -> tuple[pl.DataFrame, pa.Table]:
    """The hybrid rows of the segments that serve it, and the student's embeddings of ``catalog``
    (``_associable_catalog``; embedded once, for both); ``served``: ``_load_served``'s champion set
    and hybrid model."""
    from prodassoc_core.models import chain, hybrid, serving

    models, (found, model) = plan.models, served
    a = settings.associations
    sold = {i for b in train[baskets.ITEMS].to_list() for i in b}
    queries = [p for p in catalog[PRODUCT_ID].to_list()
               if plan.source("warm" if p in sold else "cold") == serving.HYBRID]
    ranked = hybrid.hybrid_associations(catalog, train, datetime.combine(as_of, time()), model, top_k=a.top_k,
                                        candidates_k=settings.hybrid.candidates_k, decayed=found.cooc,
                                        queries=queries)
    log.info("associate: hybrid of %s for %d products (weights warm %s, cold %s)", models.describe(), len(queries),
             found.warm, found.cold)
    rows = hybrid.publishable_hybrid(ranked, train, catalog).with_columns(
        source=pl.lit(serving.HYBRID), student_model=pl.lit(models.student.uri),
        gnn_model=pl.lit(models.gnn.uri if models.gnn else None, dtype=pl.String),
        model_as_of=pl.lit(models.trained_as_of, dtype=pl.Date),
    )
    return rows, chain.embeddings_table(catalog, model.text, models.student.uri)


def bundle(settings: Settings, baskets_path: Path, associations_path: Path) -> Path:
    """Promotion bundles: frequent item sets of the window whose products are all associated
    with each other in the staged ``product_associations`` (hybrid.bundles)."""
    from prodassoc_core.models import hybrid

    warehouse.fault_point("bundle")
    h = settings.hybrid
    associated = pl.read_parquet(associations_path, columns=[PRODUCT_ID, "associated_product_id"], glob=False)
    if settings.engine == "spark":
        lines = spark.read_parquet(spark_session(settings), baskets_path)
        # the items' own counts come with the sets (every item of a frequent set is frequent)
        passed = spark_mining.count_itemsets(lines, h.bundle_min_support, h.bundle_max_size,
                                             n=basket_count(baskets_path))
        sets = pl.from_arrow(spark_mining.frequent_itemsets(lines, h.bundle_min_support, min_len=1,
                                                            max_len=h.bundle_max_size, counts=passed))
        singles = sets.filter(pl.col("length") == 1)
        counts = dict(zip(singles["itemset"].list.first().to_list(), singles["count"].to_list()))
        sized = sets.filter(pl.col("length") >= h.bundle_min_size).select("itemset", "count").iter_rows()
        found = hybrid.bundles_of(sized, counts, passed.n, associated, top_n=h.bundle_top_n)
    else:
        items = read_baskets(baskets_path)
        found = hybrid.bundles(items, associated, min_support=h.bundle_min_support, min_size=h.bundle_min_size,
                               max_size=h.bundle_max_size, top_n=h.bundle_top_n)
    catalog = ingest.read_staged_catalog(settings.staging_dir)
    titles = dict(zip(catalog[PRODUCT_ID].to_list(), catalog["title"].to_list()))
    found = found.with_columns(
        titles=pl.col("products").map_elements(lambda ps: [titles.get(p, p) for p in ps], return_dtype=pl.List(pl.String))
    )
    return _stage(BUNDLES.conform(found.to_arrow()), BUNDLES.name, baskets_path)


def served_summary(baskets_path: Path) -> dict:
    """The serving plan a run's ``associate`` recorded next to its baskets (serving.ServingPlan.as_json)."""
    import json

    return json.loads((baskets_path.parent / SERVING_FILE).read_text())


def embedding_model(path: Path) -> str:
    """The model URI of a staged or published ``product_embeddings`` file (one per file)."""
    uris = pq.read_table(path, columns=["model_uri"]).column("model_uri").unique().to_pylist()
    if len(uris) != 1:
        raise ValueError(f"{path}: expected one model_uri, found {uris}")
    return uris[0]


def run_report_path(settings: Settings, as_of: date) -> Path:
    """``<data>/reports/nightly_as_of=YYYY-MM-DD.html``: the run's report page."""
    return settings.reports_dir / f"nightly_as_of={as_of.isoformat()}.html"


def _read_columns(path: Path, columns) -> pl.DataFrame:
    """The columns of ``columns`` that the Parquet file at ``path`` has (older partitions lack some)."""
    names = set(pq.read_schema(path).names)
    return pl.from_arrow(pq.read_table(path, columns=[c for c in columns if c in names]))


def write_run_report(
    settings: Settings, as_of: date, ingest_report: dict, published: list[dict], served: dict
) -> Path:
    """Write the run's HTML report (prodassoc_core/pipeline/run_report.py) to ``run_report_path``, atomically.

    Reads this run's published product_associations and bundles, the staged catalog's titles and,
    for "what changed", the product_associations of the newest committed run before ``as_of``.
    """
    import os

    from prodassoc_core.pipeline import run_report

    paths = {p["table"]: Path(p["path"]) for p in published}
    pairs_path = paths.get(PRODUCT_ASSOCIATIONS.name) or (
        warehouse.partition_dir(settings.warehouse_dir, PRODUCT_ASSOCIATIONS.name, as_of) / warehouse.DATA_FILE)
    associations = _read_columns(pairs_path, run_report.PAIR_COLUMNS)
    bundles = _read_columns(paths[BUNDLES.name], run_report.BUNDLE_COLUMNS) if BUNDLES.name in paths else None
    earlier = [d for d, tables in warehouse.committed_dates(settings.warehouse_dir).items()
               if d < as_of and PRODUCT_ASSOCIATIONS.name in tables]
    previous = None
    if earlier:
        before = warehouse.partition_dir(settings.warehouse_dir, PRODUCT_ASSOCIATIONS.name, earlier[-1])
        previous = (earlier[-1], _read_columns(before / warehouse.DATA_FILE, run_report.PAIR_COLUMNS))
    try:
        catalog = ingest.read_staged_catalog(settings.staging_dir)
        titles = dict(zip(catalog[PRODUCT_ID].to_list(), catalog["title"].to_list()))
    except FileNotFoundError:
        titles = {}
    account_path = run_dir(settings, as_of) / BASKET_ACCOUNT_FILE
    account = pl.from_arrow(pq.read_table(account_path)) if account_path.is_file() else None  # a path, not a glob
    page = run_report.render(as_of, served, ingest_report, published, associations, bundles, titles, previous,
                             basket_account=account)
    path = run_report_path(settings, as_of)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("run report for %s: %s", as_of, path)
    return path


def publish(settings: Settings, as_of: date, staged: dict[str, Path]) -> list[warehouse.WriteResult]:
    """Move finished tables into the warehouse partition for as_of, commit them as one, refresh the views.

    ``staged``: table name (contracts.ALL_TABLES) -> staged Parquet file. The date's commit
    marker is withdrawn first, each table's partition is replaced atomically, and the marker,
    listing exactly these tables, is written last (``warehouse.commit``): the views, their
    ``latest_*`` and backfill's "published" see the run's tables all old or all new, never a
    mix. A run that stops part way (a kill, a full disk, a read-only partition) leaves the
    date uncommitted; the next run or backfill redoes it. A write that fails for space or
    permission raises ``warehouse.StorageError`` naming the path and the bytes needed.
    """
    warehouse.fault_point("publish")
    adopt_legacy(settings)
    (settings.warehouse_dir / warehouse.RUNS_DIR).mkdir(parents=True, exist_ok=True)  # from now on, commits count
    if warehouse.commit_path(settings.warehouse_dir, as_of).exists():  # a rerun: withdraw the date from the views first
        warehouse.uncommit(settings.warehouse_dir, as_of)
        refresh_views(settings)
    # an s3:// warehouse (storage.object_store_locations) gets the tables first: the local
    # commit, written last, is what marks the date published (is_published, backfill)
    storage.publish_configured(staged, as_of, settings.warehouse_url)
    results = []
    for name, path in sorted(staged.items()):
        results.append(warehouse.write_partition(pq.read_table(path), ALL_TABLES[name], settings.warehouse_dir, as_of))
        warehouse.fault_point("publish.between_tables")
    warehouse.commit(settings.warehouse_dir, as_of, results)
    refresh_views(settings)
    return results


def tidy_run_folders(settings: Settings, as_of: date, staged: dict[str, Path]) -> int:
    """After ``as_of`` committed: its run folder's copies of the published tables go (the
    warehouse holds them; a rerun recomputes every stage), and so do the baskets of committed
    dates other than the newest ``settings.keep_run_baskets`` (each night's baskets hold the
    whole lookback window). A run folder keeps its serving plan and line account. ``as_of``'s
    baskets stay (the flow still counts them; a backfilled date's go at a later night), and a
    date whose run lock is held (a rerun in flight) is left alone. Returns the bytes freed."""
    freed = sum(_remove(path) for path in staged.values())
    folders = ((day, run_folder(settings, day) / BASKETS_FILE)
               for day in sorted(warehouse.committed_dates(settings.warehouse_dir), reverse=True))
    holding = [(day, path) for day, path in folders if path.exists()]
    for day, baskets_path in holding[settings.keep_run_baskets:]:
        if day == as_of:
            continue
        try:
            with locks.run_lock(settings.locks_dir, day):
                freed += _remove(baskets_path)
        except locks.RunLockedError:
            log.info("run folder %s: baskets kept, a run for %s is in progress", baskets_path.parent, day)
    if freed:
        log.info("run folders: %.2f MB of work files removed (published tables, baskets beyond the newest %d dates)",
                 freed / 1e6, settings.keep_run_baskets)
    return freed


def _remove(path: Path) -> int:
    return warehouse.remove_work(path, "run folders")  # the run is committed: never fails it


def retention_cutoff(settings: Settings, through: date) -> date | None:
    """The newest run date the warehouse no longer keeps once ``through`` is published: dates on
    or before it expire (``keep_published_days`` back from the newest published date or
    ``through``, whichever is later). None: every date is kept."""
    if settings.keep_published_days is None:
        return None
    newest = max([through, *warehouse.committed_dates(settings.warehouse_dir)])
    return newest - timedelta(days=settings.keep_published_days)


def check_retention(settings: Settings, first: date, last: date) -> None:
    """Refuse runs for [first, last] whose first date would expire once they are published
    (RetentionError naming the setting, the newest date and the oldest date kept)."""
    cutoff = retention_cutoff(settings, last)
    if cutoff is not None and first <= cutoff:
        raise RetentionError(
            f"as_of {first} is outside the published history the warehouse keeps: keep_published_days="
            f"{settings.keep_published_days} keeps run dates after {cutoff} (the newest being "
            f"{cutoff + timedelta(days=settings.keep_published_days)}), so the next run would remove it again; "
            "nothing was run (raise keep_published_days to publish older dates)"
        )


def expire_published(settings: Settings, as_of: date) -> list[date]:
    """After ``as_of`` committed: remove the run dates older than ``keep_published_days`` (see
    ``retention_cutoff``): their tables and commit markers (``warehouse.remove_run_date``; the
    object store's copies are left to its lifecycle rules), run folders and report pages, then
    refresh the views. ``as_of`` itself is never removed, nor a date whose run lock is held.
    Partitions of dates that never committed are removed too. Returns the dates removed."""
    cutoff = retention_cutoff(settings, as_of)
    if cutoff is None:
        return []
    expired, freed = [], 0
    for day in warehouse.run_dates(settings.warehouse_dir, sorted(ALL_TABLES)):
        if day > cutoff or day == as_of:
            continue
        try:
            with locks.run_lock(settings.locks_dir, day):
                freed += warehouse.remove_run_date(settings.warehouse_dir, day, sorted(ALL_TABLES))
                freed += _remove(run_folder(settings, day))
                freed += _remove(run_report_path(settings, day))
        except locks.RunLockedError:
            log.info("warehouse retention: %s kept, a run for it is in progress", day)
            continue
        except warehouse.StorageError as exc:
            log.warning("warehouse retention: %s kept, its commit could not be withdrawn: %s", day, exc)
            continue
        expired.append(day)
    if expired:
        refresh_views(settings)
        log.info("warehouse retention (keep_published_days=%d): removed %d run date(s) up to %s, %.2f MB",
                 settings.keep_published_days, len(expired), expired[-1], freed / 1e6)
    return expired


def adopt_legacy(settings: Settings) -> list[date]:
    """Commit the dates a warehouse published before run commits existed (once; see warehouse.adopt_uncommitted)."""
    adopted = warehouse.adopt_uncommitted(settings.warehouse_dir, sorted(PUBLISHED_TABLES), sorted(OPTIONAL_TABLES))
    if adopted:
        log.info("warehouse %s: committed %d run date(s) published before run commits", settings.warehouse_dir, len(adopted))
    return adopted


def _glob_under(directory: Path, pattern: str) -> str:
    """A DuckDB glob: ``directory`` taken literally (its glob characters escaped), then ``pattern``.

    The staged and quarantined views stay globs, so files staged after the refresh are read too."""
    return f"{warehouse.duckdb_literal_path(directory)}/{pattern}"


def refresh_views(settings: Settings) -> list[str]:
    """DuckDB views over the committed runs' tables and the staged, quarantined and manifest data.

    The published tables' views list the committed files; the staged and quarantined ones are
    globs below the data dir, whose own glob characters are escaped (a data dir named ``s*t``
    reads only itself). The views record the data dir they were built for, so ``open_views`` rebuilds them when the data
    dir has moved. Holds the views lock: DuckDB allows one writing process per database file.
    """
    adopt_legacy(settings)
    runs = warehouse.committed_dates(settings.warehouse_dir)
    sources = warehouse.warehouse_sources(settings.warehouse_dir, sorted(ALL_TABLES), runs)
    staging, quarantine = settings.staging_dir.resolve(), settings.quarantine_dir.resolve()
    manifest = settings.manifest_path.resolve()
    sources |= {
        "transactions": _glob_under(staging / "transactions", "dt=*/*.parquet"),
        "catalog": _glob_under(staging / "catalog", "*.parquet"),
        "quarantine_transactions": _glob_under(quarantine / "transactions", "dt=*/*.parquet"),
        "quarantine_catalog": _glob_under(quarantine / "catalog", "*.parquet"),
        "manifest": [manifest],
    }
    meta = {"data_dir": str(settings.data_dir.resolve()), "runs": _runs_key(runs)}
    empty = {"quarantine_transactions": quarantine_schema(TRANSACTIONS), "quarantine_catalog": quarantine_schema(CATALOG)}
    with locks.views_lock(settings.locks_dir, timeout=VIEWS_LOCK_TIMEOUT_S):
        return warehouse.refresh_views(settings.duckdb_path, sources, meta, empty)


def _runs_key(runs: dict[date, dict]) -> str:
    """The committed run dates a set of views was built over, as one string."""
    return ",".join(day.isoformat() for day in sorted(runs))


def open_views(settings: Settings):
    """A read-only DuckDB connection to the views, rebuilt first when they were built for
    another data dir (the directory was moved or restored elsewhere), predate run commits, or
    list a run that is no longer committed (a published file deleted or changed by hand)."""
    meta = warehouse.views_meta(settings.duckdb_path) if settings.duckdb_path.is_file() else {}
    if meta.get("data_dir") != str(settings.data_dir.resolve()):
        log.info("views in %s were built for %s: rebuilding", settings.duckdb_path, meta.get("data_dir", "another layout"))
        refresh_views(settings)
    elif meta.get("runs") != _runs_key(warehouse.committed_dates(settings.warehouse_dir)):
        log.info("views in %s list other runs than are committed now: rebuilding", settings.duckdb_path)
        refresh_views(settings)
    import duckdb

    return duckdb.connect(str(settings.duckdb_path), read_only=True)


# --- whole runs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class NightlyResult:
    as_of: date
    ingest: ingest.IngestReport
    published: list[warehouse.WriteResult]
    served: dict = field(default_factory=dict)  # the serving plan (served_summary)
    report: Path | None = None  # the run's HTML report page
    baskets_path: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)  # stage -> wall seconds, and "total"


def is_published(settings: Settings, as_of: date) -> bool:
    """Whether ``as_of``'s run is committed with every table of PUBLISHED_TABLES (see ``publish``)."""
    adopt_legacy(settings)
    tables = warehouse.committed(settings.warehouse_dir, as_of)
    return tables is not None and all(name in tables for name in PUBLISHED_TABLES)


class StageRunner:
    """Runs the nightly's stages in this process, one after another, timing each.

    The Prefect flow's runner (tasks/nightly.py) overrides ``call`` and ``side_by_side`` to run
    each stage as a Prefect task of the same name; ``nightly_stages`` is the one place the
    stages and their order are written down.
    """

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    def call(self, name: str, fn: Callable[..., T], *args) -> T:
        start = perf_counter()
        try:
            return fn(*args)
        finally:
            self.timings[timing_key(name)] = perf_counter() - start

    def side_by_side(self, *calls: tuple[str, Callable, tuple]) -> list:
        """Stages that need only what is already done; a runner may run them at the same time."""
        return [self.call(name, fn, *args) for name, fn, args in calls]


def timing_key(stage: str) -> str:
    """'mine-rules' -> 'mine_rules', the key of its wall time in a run's records."""
    return stage.replace("-", "_")


def nightly_stages(settings: Settings, as_of: date, run: StageRunner) -> NightlyResult:
    """The nightly for ``as_of``, stage by stage, under that date's run lock: ingest, baskets, rules and
    associations (side by side), bundles, publish, then the run's report page and the warehouse's
    retention (``expire_published``).

    Raises locks.RunLockedError (having done nothing) when another run for ``as_of`` holds the lock
    beyond ``settings.run_lock_timeout_s``. A run that failed part way resumes on rerun: ingested
    files are skipped, later stages are recomputed and replaced.
    """
    start = perf_counter()
    storage.object_store_locations(settings.warehouse_url, settings.landing_url)  # a bad URL fails now, not at publish
    check_retention(settings, as_of, as_of)
    with locks.run_lock(settings.locks_dir, as_of, timeout=settings.run_lock_timeout_s):
        warehouse.fault_point("run.locked")
        report = run.call("ingest", ingest_landing, settings, as_of)
        log.info("ingested %d file(s): %d rows read, %d accepted, %d quarantined", report.files_ingested,
                 report.rows_read, report.rows_accepted, report.rows_quarantined)
        baskets_path = run.call("baskets", build_baskets, settings, as_of)
        rules, associated = run.side_by_side(
            ("mine-rules", mine, (settings, baskets_path, as_of)),
            ("product-associations", associate, (settings, baskets_path, as_of)),
        )
        staged = {ASSOCIATION_RULES.name: rules} | associated
        staged[BUNDLES.name] = run.call("bundles", bundle, settings, baskets_path, staged[PRODUCT_ASSOCIATIONS.name])
        served = served_summary(baskets_path)
        log.info("served: %s", served["served"])
        log.info("classic method: %s; models: %s", served["classic_reason"], served["reason"])
        if PRODUCT_EMBEDDINGS.name not in staged:
            log.info("no student served for %s: product_embeddings not published", as_of)
        published = run.call("publish", publish, settings, as_of, staged)
        tidy_run_folders(settings, as_of, staged)
    run.timings["total"] = perf_counter() - start
    log.info("nightly as_of %s: published %s", as_of, ", ".join(f"{p.table} ({p.rows} rows)" for p in published))
    page = run.call("run-report", write_run_report, settings, as_of, asdict(report), [asdict(p) for p in published],
                    served)
    expire_published(settings, as_of)  # after the report, which compares with the previous committed run
    return NightlyResult(as_of, report, published, served, page, baskets_path, dict(run.timings))


def run_nightly(settings: Settings, as_of: date) -> NightlyResult:
    """``nightly_stages`` in this process, without an orchestrator (tests, scripts, drills).

    The Prefect flow (flows/nightly.py) runs the same stages as tasks and also records the run
    (Prefect artifact, MLflow run), which this plain runner does not.
    """
    return nightly_stages(settings, as_of, StageRunner())


def backfill_dates(settings: Settings, start: date, end: date, force: bool = False) -> tuple[list[date], list[date]]:
    """(dates to run, dates skipped) for a backfill over [start, end], both ends included.

    A date whose tables are all published is skipped unless ``force``. RetentionError when the
    first date to run is older than the published history kept (``check_retention``).
    """
    if end < start:
        raise ValueError(f"backfill: end {end} is before start {start}")
    days = [start + timedelta(days=i) for i in range((end - start).days + 1)]
    skipped = [] if force else [d for d in days if is_published(settings, d)]
    to_run = [d for d in days if d not in skipped]
    if to_run:
        check_retention(settings, to_run[0], end)
    return to_run, skipped


@dataclass(frozen=True)
class BackfillResult:
    ran: list[NightlyResult]
    skipped: list[date]


def backfill(settings: Settings, start: date, end: date, *, force: bool = False) -> BackfillResult:
    """Run the nightly chain for each date in [start, end] in order, oldest first.

    Dates already published are skipped unless ``force`` (a forced rerun replaces their
    partitions with identical bytes when the inputs are unchanged). Stops at the first
    failing date: the dates before it stay published, rerunning the backfill resumes there.
    """
    to_run, skipped = backfill_dates(settings, start, end, force)
    log.info("backfill %s..%s: %d date(s) to run, %d already published", start, end, len(to_run), len(skipped))
    return BackfillResult([run_nightly(settings, d) for d in to_run], skipped)
