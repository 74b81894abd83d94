"""`prodassoc` command line: import a source, run the nightly flow, train the language models, mine rules
ad hoc, show results.

Heavy libraries (Prefect, Great Expectations) are imported only by the commands
that need them, so `prodassoc rules` and `prodassoc top` start fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from datetime import date
from pathlib import Path

# Quiet, offline defaults for the libraries' telemetry; users can still override them.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")

log = logging.getLogger("prodassoc")


def _settings(args: argparse.Namespace):
    from prodassoc_core.settings import Settings

    return Settings(data_dir=args.data_dir) if args.data_dir else Settings()


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def cmd_import(args: argparse.Namespace) -> int:
    from prodassoc_core import importers

    settings = _settings(args)
    summary = importers.import_source(
        kind=args.kind,
        inputs=[Path(p) for p in args.inputs],
        landing_dir=settings.landing_dir,
        catalog=Path(args.catalog) if args.catalog else None,
        mapping=args.map,
        catalog_mapping=args.catalog_map,
        item_info=Path(args.item_info) if args.item_info else None,
        start=args.date,
    )
    print(
        f"imported {summary.rows:,} transaction lines in {summary.partitions} day partition(s) "
        f"and {summary.products:,} catalog products into {settings.landing_dir}"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from flows.nightly import nightly

    settings = _settings(args)
    result = nightly(as_of=args.as_of, settings=settings)
    ing = result["ingest"]
    print(f"as_of {result['as_of']}: ingested {ing['files_ingested']} file(s), skipped {ing['files_skipped']} already ingested")
    for table in ("catalog", "transactions"):
        parts = [p for p in ing["partitions"] if p["table"] == table]
        read, accepted, quarantined = (sum(p[k] for p in parts) for k in ("rows_read", "rows_accepted", "rows_quarantined"))
        print(f"  {table}: {read:,} rows read = {accepted:,} accepted + {quarantined:,} quarantined")
    for p in result["published"]:
        print(f"published {p['table']}: {p['rows']:,} rows -> {p['path']}")
    print(f"DuckDB views: {settings.duckdb_path}")
    return 0


def cmd_backfill(args: argparse.Namespace) -> int:
    from flows.nightly import backfill

    settings = _settings(args)
    result = backfill(start=args.start, end=args.end, settings=settings, force=args.force)
    for run in result["runs"]:
        rows = ", ".join(f"{p['table']} {p['rows']:,}" for p in run["published"])
        print(f"as_of {run['as_of']}: published {rows}")
    if result["skipped"]:
        print(f"skipped (already published): {', '.join(result['skipped'])}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from flows.evaluate import evaluate
    from prodassoc_core.report import markdown_table

    settings = _settings(args)
    if args.methods:
        methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
        settings = settings.model_copy(
            update={"evaluation": settings.evaluation.model_validate({**settings.evaluation.model_dump(), "methods": methods})}
        )
    out = evaluate(as_of=args.as_of, settings=settings, end=args.end)
    results = out["results"]
    print(f"scored products: {results['n_all'][0]:,} ({results['n_warm'][0]:,} warm, {results['n_cold'][0]:,} cold)")
    print(markdown_table(results))
    print(f"report: {out['report_md']} and {out['report_html']}")
    print(f"MLflow: {settings.tracking_uri} (experiment {settings.evaluation.experiment!r}, {len(out['mlflow_runs'])} runs)")
    return 0


# `train` options -> training settings (dotted path inside TrainingConfig)
TRAIN_OPTIONS = {
    "device": "device",
    "max_minutes": "max_minutes",
    "mlm_minutes": "mlm_minutes",
    "teacher_minutes": "teacher.max_minutes",
    "lists_minutes": "student.teacher_minutes",
    "student_minutes": "student.max_minutes",
    "gnn_minutes": "gnn.max_minutes",
    "progress_seconds": "progress_seconds",
}


def training_settings(settings, args: argparse.Namespace):
    """``settings.training`` with the `train` options given on the command line, validated
    together before any data loads (budgets > 0, a known device)."""
    training = settings.training.model_dump()
    for option, path in TRAIN_OPTIONS.items():
        value = getattr(args, option, None)
        if value is None:
            continue
        *parents, key = path.split(".")
        node = training
        for parent in parents:
            node = node[parent]
        node[key] = value
    if getattr(args, "budget_split", None):
        training["budget"] = {**training["budget"], **args.budget_split}
    return settings.training.model_validate(training)


def _split(text: str) -> dict[str, float]:
    """``mlm=0.1,teacher=0.3`` -> {"mlm": 0.1, "teacher": 0.3} (training.budget's fields)."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not KEY=NUMBER: {part!r}") from None
        if not sep:
            raise argparse.ArgumentTypeError(f"not KEY=NUMBER: {part!r}")
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from flows.train import train

    settings = _settings(args)
    settings = settings.model_copy(update={"training": training_settings(settings, args)})
    if settings.training.device == "cuda":
        from prodassoc_core.training import choose_device

        try:
            choose_device("cuda")
        except RuntimeError as exc:
            print(f"prodassoc: error: --device cuda: {exc}", file=sys.stderr)
            return 2
    out = train(as_of=args.as_of, seed=args.seed, settings=settings, progress=sys.stderr.isatty())
    print(f"as_of {out['as_of']}: trained in {out['total_seconds']:.0f} s, registered:")
    for stage, uri in out["model_uris"].items():
        print(f"  {stage}: {uri}")
    print(f"gate: {out['verdict']}")
    print(f"MLflow: {settings.tracking_uri} (experiment {settings.training.experiment!r})")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from deployments import production
    from deployments.commands import prefect_worker

    overrides = {k: v for k, v in (("cron", args.cron), ("timezone", args.timezone)) if v is not None}
    cfg = production.DeployConfig(**overrides)
    try:
        api = production.api_url()
    except production.MissingApiUrl as exc:
        print(f"prodassoc: {exc}", file=sys.stderr)
        return 2
    settings = _settings(args)
    data_dir = settings.data_dir.resolve()
    ids = production.register(cfg, data_dir, settings.training)
    print(f"registered with {api} (data directory {data_dir}):")
    for name, deployment_id in ids.items():
        print(f"  {name}  {deployment_id}")
    print(f"nightly: cron {cfg.cron!r} in {cfg.timezone}; nightly and backfill share queue {cfg.queue!r} (one run at a time)")
    seed = "" if settings.training.seed is not None else " (no seed: set PRODASSOC_TRAINING__SEED on the gpu worker)"
    print(f"train: cron {settings.training.schedule!r} in {cfg.timezone} on pool {cfg.gpu_pool!r}{seed}")
    print(f"start a worker: {' '.join(prefect_worker(cfg.cpu_pool))}")
    print(f"on a GPU host: {' '.join(prefect_worker(cfg.gpu_pool))}")
    return 0


def cmd_rules(args: argparse.Namespace) -> int:
    import pyarrow.parquet as pq

    from prodassoc_core import mining, pipeline
    from prodassoc_core.settings import MiningConfig

    cfg = MiningConfig(
        min_support=args.min_support,
        min_confidence=args.min_confidence,
        min_len=args.min_len,
        max_len=args.max_len,
    )
    baskets = pipeline.load_baskets_file(Path(args.input))
    log.info("mining %d baskets from %s", len(baskets), args.input)
    rules = mining.mine_rules(baskets, cfg)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(rules, out, compression="zstd")
    print(f"{rules.num_rows:,} rules from {len(baskets):,} baskets -> {out}")
    return 0


def cmd_top(args: argparse.Namespace) -> int:
    import duckdb

    settings = _settings(args)
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        rows = con.execute(
            """
            SELECT a.product_id, ct.title, a.associated_product_id, ca.title AS associated_title,
                   a.n_rule, round(a.confidence, 3), round(a.lift, 2)
            FROM latest_product_associations a
            LEFT JOIN catalog ct ON ct.product_id = a.product_id
            LEFT JOIN catalog ca ON ca.product_id = a.associated_product_id
            WHERE a.rank = 1
            ORDER BY a.n_rule DESC, a.product_id
            LIMIT ?
            """,
            [args.limit],
        ).fetchall()
    print(f"top associations (rank 1, by co-purchase orders) from {settings.duckdb_path}:")
    for pid, title, aid, atitle, n, conf, lift in rows:
        print(f"  {title} [{pid}] -> {atitle} [{aid}]: {n} orders, confidence {conf}, lift {lift}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prodassoc", description=__doc__)
    parser.add_argument("--data-dir", help="data directory (default: $PRODASSOC_DATA_DIR or ./.prodassoc)")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("import", help="convert a source into the landing layout")
    p.add_argument("kind", choices=["online-retail", "basket-csv", "canonical"])
    p.add_argument("inputs", nargs="+", help="source file(s); for 'canonical' the transactions file")
    p.add_argument("--catalog", help="'canonical': the catalog file")
    p.add_argument("--map", help="'canonical': transactions column mapping, e.g. order_id=InvoiceNo,product_id=SKU")
    p.add_argument("--catalog-map", help="'canonical': catalog column mapping, e.g. title=Name")
    p.add_argument("--item-info", help="'basket-csv': CSV with labels,level2,level1 categories")
    p.add_argument("--date", type=_date, default=date(2000, 1, 1), help="'basket-csv': date given to the baskets")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("run", help="run the nightly flow for one as_of date")
    p.add_argument("--as-of", type=_date, required=True)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("backfill", help="run the nightly flow for every date in a range, oldest first")
    p.add_argument("--start", type=_date, required=True)
    p.add_argument("--end", type=_date, required=True, help="included")
    p.add_argument("--force", action="store_true", help="rerun dates that are already published")
    p.set_defaults(func=cmd_backfill)

    p = sub.add_parser("evaluate", help="score every association method on a temporal holdout")
    p.add_argument("--as-of", type=_date, required=True, help="train before it, test from it on")
    p.add_argument("--end", type=_date, help="end of the test window (default: the end of the landed data)")
    p.add_argument("--methods", help="comma-separated subset of the association methods (default: all)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("train", help="train the language-model chain for one as_of date and apply the champion gate")
    p.add_argument("--as-of", type=_date, required=True, help="train on everything landed before it")
    p.add_argument("--seed", type=int, help="required unless $PRODASSOC_TRAINING__SEED is set")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: training.device (auto: CUDA if present)")
    p.add_argument("--max-minutes", type=float, help="time budget of the whole chain, split across the stages "
                   "(training.max_minutes; default: sized from the number of training baskets, 2 to 30 min)")
    p.add_argument("--mlm-minutes", type=float, help="budget of the MLM stage, instead of its share (training.mlm_minutes)")
    p.add_argument("--teacher-minutes", type=float,
                   help="budget of the teacher stage: pairs, validation, training (training.teacher.max_minutes)")
    p.add_argument("--student-minutes", type=float, help="budget of the student stage: teacher lists, validation, "
                   "training (training.student.max_minutes)")
    p.add_argument("--lists-minutes", type=float, help="part of the student stage for scoring its lists with the "
                   "teacher (training.student.teacher_minutes)")
    p.add_argument("--gnn-minutes", type=float, help="budget of the GNN stage: graph, training, hybrid weights "
                   "(training.gnn.max_minutes)")
    p.add_argument("--budget-split", type=_split, metavar="STAGE=SHARE,...",
                   help="how --max-minutes is shared (training.budget), e.g. mlm=0.1,teacher=0.3,student=0.3,gnn=0.3; "
                   "also student_lists=SHARE and hybrid_seconds=S")
    p.add_argument("--progress-seconds", type=float,
                   help="without a terminal, a progress log line this often (training.progress_seconds)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("deploy", help="register the production deployments with the Prefect API at $PREFECT_API_URL")
    p.add_argument("--cron", help="nightly schedule (default: $PRODASSOC_DEPLOY_CRON or '0 2 * * *')")
    p.add_argument("--timezone", help="IANA time zone of the schedule (default: $PRODASSOC_DEPLOY_TIMEZONE or UTC)")
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("rules", help="mine association rules from a basket CSV or transactions Parquet")
    p.add_argument("--input", required=True)
    p.add_argument("--min-support", type=float, required=True)
    p.add_argument("--min-confidence", type=float, required=True)
    p.add_argument("--min-len", type=int, default=2)
    p.add_argument("--max-len", type=int)
    p.add_argument("--output", required=True)
    p.set_defaults(func=cmd_rules)

    p = sub.add_parser("top", help="print the strongest published associations")
    p.add_argument("--limit", type=int, default=10)
    p.set_defaults(func=cmd_top)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Prefect API call otherwise
    from prodassoc_core.ingest import IngestError
    from prodassoc_core.locks import LockBusyError

    try:
        return args.func(args)
    except IngestError as exc:  # bad input: files and partitions are named in the message
        print(f"prodassoc: ingestion failed: {exc}", file=sys.stderr)
        return 1
    except LockBusyError as exc:  # another run holds this date (or the ingestion) right now
        print(f"prodassoc: {exc}", file=sys.stderr)
        return 3
    except (ValueError, FileNotFoundError) as exc:
        print(f"prodassoc: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
