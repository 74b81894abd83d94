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
    if results.height:
        print(f"scored products: {results['n_all'][0]:,} ({results['n_warm'][0]:,} warm, {results['n_cold'][0]:,} cold)")
        print(markdown_table(results))
    for method, why in out.get("skipped", {}).items():
        print(f"not evaluated: {method}: {why}")
    print(f"report: {out['report_md']} and {out['report_html']}")
    print(f"MLflow: {settings.tracking_uri} (experiment {settings.evaluation.experiment!r}, {len(out['mlflow_runs'])} runs)")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from flows.train import train

    settings = _settings(args)
    training = settings.training.model_dump()
    for key, value in (("device", args.device), ("mlm_minutes", args.mlm_minutes)):
        if value is not None:
            training[key] = value
    for stage, minutes in (("teacher", args.teacher_minutes), ("student", args.student_minutes)):
        if minutes is not None:
            training[stage] = {**training[stage], "max_minutes": minutes}
    # validated together before any data loads (time budgets > 0, a known device)
    settings = settings.model_copy(update={"training": settings.training.model_validate(training)})
    if settings.training.device == "cuda":
        from prodassoc_core.training import choose_device

        try:
            choose_device("cuda")
        except RuntimeError as exc:
            print(f"prodassoc: error: --device cuda: {exc}", file=sys.stderr)
            return 2
    out = train(as_of=args.as_of, seed=args.seed, settings=settings, progress=sys.stderr.isatty(),
                promote=not args.no_promote)
    print(f"as_of {out['as_of']}: trained in {out['total_seconds']:.0f} s, registered:")
    for stage, uri in out["model_uris"].items():
        print(f"  {stage}: {uri}")
    print(f"gate: {out['verdict']}")
    for line in out["gate_table"]:
        print(f"  {line}")
    print(f"MLflow: {settings.tracking_uri} (experiment {settings.training.experiment!r})")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    """An operator's override of the serving gate (serving.promote / serving.revoke)."""
    from prodassoc_core import serving

    settings = _settings(args)
    if args.revoke:
        v = serving.revoke(settings, args.version, args.reason)
        print(f"{v.uri}: revoked; runs from now on serve the newest version still eligible for their date, "
              f"or the classic method")
        return 0
    segments = {s: (serving.HYBRID if s in args.segments.split(",") else serving.CLASSIC) for s in serving.SEGMENTS}
    if serving.HYBRID not in segments.values() or not set(args.segments.split(",")) <= set(serving.SEGMENTS):
        raise ValueError(f"--segments: a comma-separated subset of warm,cold, got {args.segments!r}")
    v = serving.promote(settings, args.version, segments, args.reason)
    print(f"{v.uri}: promoted by hand (@{settings.training.champion_alias}), hybrid for "
          f"{', '.join(s for s, x in segments.items() if x == serving.HYBRID)}; served for dates from "
          f"{v.tags[serving.AS_OF_TAG]} on")
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


def _run_date_of(con, view: str, run_date: date | None) -> date:
    """``run_date`` when ``view`` has rows for it, else the newest run date; ValueError when there is none."""
    dates = [r[0] for r in con.execute(f"SELECT DISTINCT run_date FROM {view} ORDER BY run_date DESC").fetchall()]
    if not dates:
        raise ValueError(f"nothing published yet in {view}; run `prodassoc run --as-of YYYY-MM-DD` first")
    if run_date is None:
        return dates[0]
    if run_date not in dates:
        shown = ", ".join(d.isoformat() for d in dates[:10]) + (" ..." if len(dates) > 10 else "")
        raise ValueError(f"no published run for --run-date {run_date}; published run dates: {shown}")
    return run_date


def _find_product(con, text: str) -> tuple[str, str] | list[tuple[str, str]]:
    """(id, title) of the product ``text`` names: its id, else its title, else the one title
    containing it (case-insensitive); a list of candidates (at most 20) when that is ambiguous."""
    exact = con.execute(
        "SELECT product_id, title FROM catalog WHERE product_id = ? OR lower(title) = lower(?) "
        "ORDER BY product_id <> ?, product_id LIMIT 2",
        [text, text, text],
    ).fetchall()
    if exact and (exact[0][0] == text or len(exact) == 1):
        return exact[0]
    found = con.execute(
        "SELECT product_id, title FROM catalog WHERE contains(lower(title), lower(?)) ORDER BY title, product_id LIMIT 21",
        [text],
    ).fetchall()
    return found[0] if len(found) == 1 else found


def cmd_top(args: argparse.Namespace) -> int:
    import duckdb

    settings = _settings(args)
    if not settings.duckdb_path.exists():
        raise FileNotFoundError(f"no DuckDB views at {settings.duckdb_path}; run `prodassoc run --as-of YYYY-MM-DD` first")
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
        if "product_associations_named" not in views:
            raise FileNotFoundError(
                f"{settings.duckdb_path} has no product_associations_named view (no run published yet, or the "
                "views predate it); run `prodassoc run --as-of YYYY-MM-DD` to publish and refresh them"
            )
        run_date = _run_date_of(con, "product_associations", args.run_date)
        if args.product is None:
            rows = con.execute(
                """
                SELECT product_title, product_id, associated_title, associated_product_id,
                       n_rule, round(confidence, 3), round(lift, 2)
                FROM product_associations_named
                WHERE run_date = ? AND rank = 1
                ORDER BY n_rule DESC, product_id
                LIMIT ?
                """,
                [run_date, args.limit],
            ).fetchall()
            print(f"top associations of run {run_date} (rank 1, by co-purchase orders) from {settings.duckdb_path}:")
            for title, pid, atitle, aid, n, conf, lift in rows:
                print(f"  {title} [{pid}] -> {atitle} [{aid}]: {n} orders, confidence {conf}, lift {lift}")
            return 0
        found = _find_product(con, args.product)
        if isinstance(found, list):
            if not found:
                print(f"prodassoc: no product with id or title {args.product!r} in the catalog", file=sys.stderr)
                return 2
            more = " (first 20)" if len(found) > 20 else ""
            print(f"{args.product!r} matches several products{more}; pass one id with --product:", file=sys.stderr)
            for pid, title in found[:20]:
                print(f"  {pid}  {title}", file=sys.stderr)
            return 2
        pid, title = found
        rows = con.execute(
            """
            SELECT rank, associated_title, associated_product_id, score, method, score_scale,
                   n_rule, confidence, lift, explanation
            FROM product_associations_named
            WHERE run_date = ? AND product_id = ?
            ORDER BY rank
            LIMIT ?
            """,
            [run_date, pid, args.limit],
        ).fetchall()
    print(f"{title} [{pid}]: associated products of run {run_date}")
    if not rows:
        print("  none published (the product was not bought with others often enough in the window)")
        return 0
    method, scale = rows[0][4], rows[0][5]
    print(f"  method {method}; score = {scale}")
    for rank, atitle, aid, score, _, _, n, conf, lift, why in rows:
        evidence = f"{n} orders together" + (f", confidence {conf:.3f}, lift {lift:.2f}" if conf is not None else "")
        print(f"  {rank:>2}. {atitle} [{aid}]  score {score:.4g}; {evidence}")
        if why:
            print(f"      {why}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prodassoc", description=__doc__)
    parser.add_argument("--data-dir", metavar="DIR",
                        help="data directory: landing, staging, warehouse, DuckDB, Data Docs, MLflow "
                             "(default: $PRODASSOC_DATA_DIR or ./.prodassoc)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level (default: INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("import", help="convert a source into the landing layout")
    p.add_argument("kind", choices=["online-retail", "basket-csv", "canonical"],
                   help="online-retail: UCI Online Retail as CSV or Parquet; basket-csv: one basket per "
                        "line, items comma separated; canonical: transactions in the canonical schema or mapped")
    p.add_argument("inputs", nargs="+", metavar="FILE", help="source file(s); for 'canonical' the transactions file")
    p.add_argument("--catalog", metavar="FILE",
                   help="'canonical': the catalog file (default: none, every product is titled by its id)")
    p.add_argument("--map", metavar="COL=SRC,...",
                   help="'canonical': transactions column mapping, e.g. order_id=InvoiceNo,product_id=SKU "
                        "(default: the columns already have the canonical names)")
    p.add_argument("--catalog-map", metavar="COL=SRC,...",
                   help="'canonical': catalog column mapping, e.g. title=Name (default: canonical names)")
    p.add_argument("--item-info", metavar="FILE",
                   help="'basket-csv': CSV with labels,level2,level1 categories (default: none, titles are the items)")
    p.add_argument("--date", type=_date, default=date(2000, 1, 1), metavar="YYYY-MM-DD",
                   help="'basket-csv': the order date given to every basket (default: %(default)s)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("run", help="run the nightly flow for one as_of date")
    p.add_argument("--as-of", type=_date, required=True, metavar="YYYY-MM-DD",
                   help="the run date (required): trains on orders before it, publishes run_date=YYYY-MM-DD")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("backfill", help="run the nightly flow for every date in a range, oldest first")
    p.add_argument("--start", type=_date, required=True, metavar="YYYY-MM-DD", help="first run date (required)")
    p.add_argument("--end", type=_date, required=True, metavar="YYYY-MM-DD", help="last run date, included (required)")
    p.add_argument("--force", action="store_true",
                   help="rerun dates that are already published, replacing their partitions "
                        "(default: skip them)")
    p.set_defaults(func=cmd_backfill)

    p = sub.add_parser("evaluate", help="score every association method on a temporal holdout")
    p.add_argument("--as-of", type=_date, required=True, metavar="YYYY-MM-DD",
                   help="split date (required): train before it, test from it on")
    p.add_argument("--end", type=_date, metavar="YYYY-MM-DD",
                   help="end of the test window, excluded (default: the end of the landed data)")
    p.add_argument("--methods", metavar="M1,M2,...",
                   help="comma-separated subset of the methods, e.g. count,decayed_damped,student (default: all of "
                        "evaluation.methods)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("train", help="train the language-model chain for one as_of date and apply the champion gate")
    p.add_argument("--as-of", type=_date, required=True, metavar="YYYY-MM-DD",
                   help="train on everything landed before it (required)")
    p.add_argument("--seed", type=int, metavar="N",
                   help="integer seed every stage derives its seeds from (default: $PRODASSOC_TRAINING__SEED; "
                        "one of them is required)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"],
                   help="auto: CUDA (bf16) if present, else CPU (default: training.device, auto)")
    p.add_argument("--mlm-minutes", type=float, metavar="M",
                   help="time budget of the MLM stage in minutes, e.g. 2.5 (default: training.mlm_minutes, none)")
    p.add_argument("--teacher-minutes", type=float, metavar="M",
                   help="time budget of the teacher's training in minutes (default: training.teacher.max_minutes, none)")
    p.add_argument("--student-minutes", type=float, metavar="M",
                   help="time budget of the student's training in minutes (default: training.student.max_minutes, none)")
    p.add_argument("--no-promote", action="store_true",
                   help="trial run: train, register and run the serving gate, record its decision, promote nothing "
                        "(default: off)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("promote", help="override the serving gate: serve a trained student version by hand, or revoke one")
    p.add_argument("--version", required=True, metavar="N",
                   help="prodassoc-student version number, as `prodassoc train` prints it (required)")
    p.add_argument("--segments", default="warm,cold", metavar="warm,cold",
                   help="where its hybrid is served: warm, cold or warm,cold (default: warm,cold)")
    p.add_argument("--revoke", action="store_true", help="stop serving this version (rollback) instead (default: off)")
    p.add_argument("--reason", required=True, metavar="TEXT",
                   help="why, recorded as a tag of every version touched (required)")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("deploy", help="register the production deployments with the Prefect API at $PREFECT_API_URL")
    p.add_argument("--cron", metavar="'M H DOM MON DOW'",
                   help="nightly schedule, 5-field cron (default: $PRODASSOC_DEPLOY_CRON or '0 2 * * *')")
    p.add_argument("--timezone", metavar="ZONE",
                   help="IANA time zone of the schedule, e.g. Europe/London (default: $PRODASSOC_DEPLOY_TIMEZONE or UTC)")
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("rules", help="mine association rules from a basket CSV or transactions Parquet")
    p.add_argument("--input", required=True, metavar="FILE",
                   help="a basket CSV (one basket per line, items comma separated) or a canonical transactions "
                        "Parquet (required)")
    p.add_argument("--min-support", type=float, required=True, metavar="S",
                   help="share of baskets holding all the rule's items, 0 < S <= 1, e.g. 0.01 (required)")
    p.add_argument("--min-confidence", type=float, required=True, metavar="C",
                   help="share of the antecedent's baskets that also hold the consequent, 0 <= C <= 1, e.g. 0.5 "
                        "(required)")
    p.add_argument("--min-len", type=int, default=2, metavar="N",
                   help="fewest items per rule, antecedent + consequent (default: %(default)s)")
    p.add_argument("--max-len", type=int, metavar="N",
                   help="most items per rule, antecedent + consequent (default: no limit; low support without one "
                        "can explode)")
    p.add_argument("--output", required=True, metavar="FILE", help="rules Parquet to write (required)")
    p.set_defaults(func=cmd_rules)

    p = sub.add_parser(
        "top", help="print the strongest published associations, or one product's",
        description="Without --product: each product's rank-1 association, most co-purchase orders first. "
        "With --product: that product's associated products in rank order, with score and evidence.",
    )
    p.add_argument("--product", metavar="ID|TEXT",
                   help="a product id, a full title or part of one (case-insensitive; ambiguous text lists the "
                        "matching products) (default: no product, the top pairs overall)")
    p.add_argument("--run-date", type=_date, metavar="YYYY-MM-DD",
                   help="which published run to read (default: the newest)")
    p.add_argument("--limit", type=int, default=10, metavar="N", help="rows to print (default: %(default)s)")
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
