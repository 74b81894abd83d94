"""`prodassoc` command line: import a source, run the nightly flow, train the language models, mine rules
ad hoc, show results.

Heavy libraries (Prefect, Great Expectations) are imported only by the commands
that need them, so `prodassoc rules` and `prodassoc top` start fast. Arguments, the data
directory, the dates, the run lock and the engine's Java are checked before Prefect starts: a
mistake costs a second, not a server start-up.

Expected failures print one line on stderr (an ingestion failure lists each problem) and
exit with a documented code; ``-v`` also prints the traceback:

    0  success
    1  ingestion failed: bad landed data (files, rules and the quarantine are named)
    2  invalid arguments or input: a bad option, a missing/unreadable input, a data dir that is a file
    3  another run holds the lock for this date (or the ingestion)
    4  storage: disk full, read-only or not writable (the path and the bytes needed are named)
    5  no data: nothing landed or published yet, or as_of outside the landed data
    6  the engine cannot start: engine spark without pyspark or Java, or its master does not answer
"""

from __future__ import annotations

import argparse
import errno
import gc
import importlib
import logging
import os
import re
import subprocess
import sys
import traceback
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

# Quiet, offline defaults for the libraries' telemetry; users can still override them.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
# the project's log lines (counts, what was served, weights) go to the Prefect run's logs too
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "prodassoc")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no download bars in logs

log = logging.getLogger("prodassoc")

EXIT_INGEST, EXIT_USAGE, EXIT_LOCKED, EXIT_STORAGE, EXIT_NO_DATA, EXIT_ENGINE = 1, 2, 3, 4, 5, 6
SETTINGS_ENV_PREFIX = "PRODASSOC_"  # prodassoc_core.ops.settings.Settings reads PRODASSOC_* (not imported here: start-up)
PREFECT_STARTUP_TIMEOUT_S = 120
MINING_MAX_LEN = 4  # the nightly's default (settings.MiningConfig.max_len)
DEFAULT_MAX_RULES = 5_000_000  # Prefect's default (20 s) is missed on a busy machine
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


class CliError(Exception):
    """An expected failure: one line on stderr and ``code`` as the exit status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _settings(args: argparse.Namespace):
    from prodassoc_core.ops import Settings, unknown_environment

    unknown = unknown_environment(os.environ)
    if unknown:
        raise CliError(EXIT_USAGE, f"unknown setting(s) in the environment: {'; '.join(unknown)}")
    settings = Settings(data_dir=args.data_dir) if args.data_dir else Settings()
    if settings.warehouse_url or settings.landing_url:
        from prodassoc_core.data import storage

        storage.object_store_locations(settings.warehouse_url, settings.landing_url)  # ValueError: not s3://…
    if settings.data_dir.exists() and not settings.data_dir.is_dir():
        raise CliError(EXIT_USAGE, f"data dir {settings.data_dir} is not a directory")
    return settings


def _writable(settings) -> None:
    """The data dir exists (created if needed) and a file can be written in it."""
    data = settings.data_dir
    probe = data / f".prodassoc-write-test.{os.getpid()}"
    try:
        data.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise CliError(EXIT_STORAGE, f"data dir {data} is not writable: {exc.strerror or exc}") from exc


def _landed_days(settings) -> list[date]:
    """Transaction days landed or staged (``dt=YYYY-MM-DD`` partitions), sorted."""
    from prodassoc_core.data import landing

    days = {d for root in (settings.landing_dir, settings.staging_dir)
            for d, _ in landing.partition_dirs(root / "transactions")}
    return sorted(days)


def _check_as_of(settings, as_of: date, *, allow_stale: bool, window: bool = True) -> None:
    """Refuse, before anything starts, a date the run cannot publish anything for.

    Its training window [as_of - lookback, as_of) must hold a landed day, and as_of may lie at
    most ``stale_margin_days`` after the day following the newest landed one (``allow_stale``).
    """
    try:
        start = as_of - timedelta(days=settings.lookback_days)
    except OverflowError:
        raise CliError(EXIT_USAGE, f"as_of {as_of}: its training window ({settings.lookback_days} days of lookback) "
                                   "starts before the year 1") from None
    days = _landed_days(settings)
    if not days:
        raise CliError(EXIT_NO_DATA, f"no landed transactions in {settings.landing_dir}: import a source first "
                                     "(prodassoc import …)")
    late = (as_of - days[-1]).days - 1
    if late > settings.stale_margin_days and not allow_stale:
        raise CliError(
            EXIT_NO_DATA,
            f"as_of {as_of} is {late:,} day(s) after the day following the newest landed day ({days[-1]}), more than "
            f"stale_margin_days={settings.stale_margin_days}; nothing was run (pass --allow-stale to run anyway)",
        )
    if window and not any(start <= d < as_of for d in days):
        raise CliError(
            EXIT_NO_DATA,
            f"as_of {as_of}: its training window [{start}, {as_of}) holds no landed day (landed: {days[0]} .. "
            f"{days[-1]}); nothing was run or published",
        )


def _check_retention(settings, first: date, last: date) -> None:
    """Refuse, before Prefect starts, dates the warehouse's retention would remove again (exit 2)."""
    if settings.keep_published_days is None:
        return
    from prodassoc_core.pipeline import stages

    stages.check_retention(settings, first, last)


def _check_run_locks(settings, dates: list[date]) -> None:
    """Fail now, before Prefect starts, when another run holds one of these dates (lock free: nothing held)."""
    from prodassoc_core.ops import locks

    if settings.run_lock_timeout_s > 0:  # the run waits for the lock: nothing to say in advance
        return
    for d in dates:
        with locks.run_lock(settings.locks_dir, d, timeout=0):
            pass


def _check_engine(settings) -> None:
    """``engine: spark``: fail now, before Prefect starts, without pyspark or Java (exit 6). A master
    that does not answer is found when the session starts, and fails the run the same way."""
    if settings.engine == "spark":
        from prodassoc_core.data import check_spark_available

        check_spark_available()


def _die_with_parent(parent: int) -> None:
    """In a child process (before exec): be killed when the parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (AttributeError, OSError):  # not Linux: no parent-death signal
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _start_prefect() -> None:
    """Start Prefect's ephemeral API server for this process (unless PREFECT_API_URL names one).

    The server process gets a parent-death signal, so a ``kill -9`` of this process does not
    leave it running. Start-up waits ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS`` when
    set, else PREFECT_STARTUP_TIMEOUT_S, and is retried once, with twice that, on a timeout.
    """
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return
    from prefect.server.api import server as srv  # Prefect's server app: about 2 s to import

    cls = srv.SubprocessASGIServer
    if not getattr(cls, "_prodassoc_deathsig", False):
        original = cls._run_uvicorn_command
        parent = os.getpid()

        def run_uvicorn(self):  # Prefect's own command, started with a parent-death signal
            popen = subprocess.Popen

            def popen_dying(*args, **kwargs):
                kwargs.setdefault("preexec_fn", lambda: _die_with_parent(parent))
                return popen(*args, **kwargs)

            srv.subprocess.Popen = popen_dying
            try:
                return original(self)
            finally:
                srv.subprocess.Popen = popen

        cls._run_uvicorn_command = run_uvicorn
        cls._prodassoc_deathsig = True
    configured = os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS")
    timeout = int(float(configured)) if configured else PREFECT_STARTUP_TIMEOUT_S
    server = cls()
    try:
        server.start(timeout=timeout)
    except RuntimeError as exc:
        if "Timed out" not in str(exc):
            raise
        retry = max(2 * timeout, PREFECT_STARTUP_TIMEOUT_S)
        print(f"prodassoc: Prefect's temporary API server did not start within {timeout} s; retrying once "
              f"with {retry} s", file=sys.stderr, flush=True)
        server.stop()  # the half-started process, if any
        cls().start(timeout=retry)


def _quiet_expected_failures() -> None:
    """Prefect logs a failed task's or flow's traceback before the CLI can print its message;
    for the failures the CLI explains itself, that traceback is dropped (``-v`` keeps it)."""

    class _NoTraceback(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if record.exc_info and _expected(record.exc_info[1]):
                record.exc_info, record.exc_text = None, None
            return True

    for name in ("prefect.flow_runs", "prefect.task_runs", "prefect.flow_engine", "prefect.task_engine"):
        logger = logging.getLogger(name)
        if not any(type(f).__name__ == "_NoTraceback" for f in logger.filters):  # once per process
            logger.addFilter(_NoTraceback())


def _expected(exc: BaseException | None) -> bool:
    return exc is not None and _classify(exc)[0] is not None


def _loaded_class(package: str, name: str) -> type | tuple[()]:
    """The class a core package exports as ``name`` if its module is loaded, else ``()`` (no class).

    An exception of a class that was never loaded was never raised; loading it to find out
    would import its module (MLflow, Great Expectations) for a failed `prodassoc rules`.
    """
    module = sys.modules.get(f"{package}.{importlib.import_module(package).NAMES[name]}")
    return getattr(module, name) if module is not None else ()


def _classify(exc: BaseException) -> tuple[int | None, str]:
    """(exit code, message) for an expected failure; (None, "") for a bug (traceback shown)."""
    pydantic = sys.modules.get("pydantic")
    ValidationError = pydantic.ValidationError if pydantic is not None else ()
    IngestError = _loaded_class("prodassoc_core.data", "IngestError")
    StorageError = _loaded_class("prodassoc_core.data", "StorageError")
    StoreError = _loaded_class("prodassoc_core.models", "StoreError")
    LockBusyError = _loaded_class("prodassoc_core.ops", "LockBusyError")
    SparkUnavailableError = _loaded_class("prodassoc_core.data", "SparkUnavailableError")
    NoDataError = _loaded_class("prodassoc_core.pipeline", "NoDataError")

    if isinstance(exc, CliError):
        return exc.code, f"error: {exc}"
    if isinstance(exc, IngestError):  # bad input: files and partitions are named in the message
        return EXIT_INGEST, f"ingestion failed: {exc}"
    if isinstance(exc, LockBusyError):  # another run holds this date (or the ingestion) right now
        return EXIT_LOCKED, str(exc)
    if isinstance(exc, NoDataError):
        return EXIT_NO_DATA, f"error: {exc}"
    if isinstance(exc, SparkUnavailableError):  # engine: spark without pyspark or Java, or its master down
        return EXIT_ENGINE, f"error: {exc}"
    if isinstance(exc, ValidationError):  # a setting or option out of range
        return EXIT_USAGE, f"error: invalid setting: {_problems(exc)}"
    if type(exc).__name__ == "SettingsError" and (field := re.search(r'field "(\w+)"', str(exc))):
        # pydantic-settings' message names neither the variable nor what is wrong with its value
        cause = f": {type(exc.__cause__).__name__}: {exc.__cause__}" if exc.__cause__ else ""
        return EXIT_USAGE, (f"error: invalid setting: ${SETTINGS_ENV_PREFIX}{field.group(1).upper()} cannot be read "
                            f"(a nested setting is JSON, e.g. '{{\"seed\": 1}}'){cause}")
    if isinstance(exc, StorageError):  # one line naming the path and the bytes needed
        return EXIT_STORAGE, f"storage error: {exc.strerror}"
    if isinstance(exc, StoreError):  # an MLflow store it is not safe to repair automatically
        return EXIT_STORAGE, f"storage error: {exc}"
    spark = sys.modules.get("prodassoc_core.data.spark")  # loaded if a Spark job ran
    if spark is not None and (code := spark.spark_storage_errno(exc)) is not None:  # a shuffle, a checkpoint
        return EXIT_STORAGE, (f"storage error: a Spark job could not write: {os.strerror(code).lower()}, in the data "
                              "directory or in Spark's local directory (spark.local.dir, /tmp unless set)")
    if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS and not isinstance(exc, FileNotFoundError):
        where = f"cannot write {exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc)
        return EXIT_STORAGE, f"storage error: {where}"
    if isinstance(exc, (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError, FileExistsError)):
        return EXIT_USAGE, f"error: {exc}"
    return None, ""


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _input_file(path: str, what: str = "input") -> Path:
    p = Path(path)
    if not p.exists():
        raise CliError(EXIT_USAGE, f"{what} {p} does not exist")
    if not p.is_file():
        raise CliError(EXIT_USAGE, f"{what} {p} is not a file")
    return p


def cmd_import(args: argparse.Namespace) -> int:
    from prodassoc_core.data import importers

    settings = _settings(args)
    for path in args.inputs:
        _input_file(path)
    for option in ("catalog", "item_info"):
        if getattr(args, option):
            _input_file(getattr(args, option), f"--{option.replace('_', '-')}")
    _writable(settings)
    summary = importers.import_source(
        kind=args.kind,
        inputs=[Path(p) for p in args.inputs],
        landing_dir=settings.landing_dir,
        catalog=Path(args.catalog) if args.catalog else None,
        mapping=args.map,
        catalog_mapping=args.catalog_map,
        item_info=Path(args.item_info) if args.item_info else None,
        start=args.date,
        spread=timedelta(days=args.spread_days) if args.spread_days else None,
    )
    print(
        f"imported {summary.rows:,} transaction lines in {summary.partitions} day partition(s) "
        f"and {summary.products:,} catalog products into {settings.landing_dir}"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _check_as_of(settings, args.as_of, allow_stale=args.allow_stale)  # reads only: a mistyped dir is not created
    _writable(settings)
    _check_retention(settings, args.as_of, args.as_of)
    _check_run_locks(settings, [args.as_of])
    _check_engine(settings)
    from flows.nightly import nightly

    _start_prefect()
    result = nightly(as_of=args.as_of, settings=settings)
    ing = result["ingest"]
    print(f"as_of {result['as_of']}: ingested {ing['files_ingested']} file(s), skipped {ing['files_skipped']} already ingested")
    _print_repairs(ing)
    for table in ("catalog", "transactions"):
        parts = [p for p in ing["partitions"] if p["table"] == table]
        read, accepted, quarantined = (sum(p[k] for p in parts) for k in ("rows_read", "rows_accepted", "rows_quarantined"))
        line = f"  {table}: {read:,} rows read = {accepted:,} accepted + {quarantined:,} quarantined"
        if table == "transactions" and ing.get("files_duplicate"):
            line += (f"; {ing['rows_duplicate']:,} rows of {ing['files_duplicate']} duplicate file(s) skipped "
                     "(same bytes as accepted files, named in the manifest)")
        print(line)
    for p in result["published"]:
        print(f"published {p['table']}: {p['rows']:,} rows -> {p['path']}")
    if result.get("served"):
        print(f"served: {result['served']['served']}\n  why: {result['served']['reason']}")
    print(f"DuckDB views: {settings.duckdb_path}")
    print(f"report: {result['report']}")
    return 0


def _print_repairs(ingest: dict) -> None:
    """What an ingestion rebuilt from the landing zone (an unreadable manifest, damaged outputs)."""
    for note in filter(None, [ingest.get("manifest_rebuilt"), *ingest.get("restaged", ())]):
        print(f"  {note}")


def cmd_backfill(args: argparse.Namespace) -> int:
    if args.end < args.start:
        raise CliError(EXIT_USAGE, f"backfill: --end {args.end} is before --start {args.start}")
    settings = _settings(args)
    _check_as_of(settings, args.start, allow_stale=True)  # the first date's window must hold data
    _check_as_of(settings, args.end, allow_stale=args.allow_stale, window=False)
    _writable(settings)
    days = [args.start + timedelta(days=i) for i in range((args.end - args.start).days + 1)]
    if settings.keep_published_days is not None:
        from prodassoc_core.pipeline import stages

        stages.backfill_dates(settings, args.start, args.end, args.force)  # RetentionError: exit 2
    _check_run_locks(settings, days)
    _check_engine(settings)
    from flows.nightly import backfill

    _start_prefect()
    result = backfill(start=args.start, end=args.end, settings=settings, force=args.force)
    for run in result["runs"]:
        rows = ", ".join(f"{p['table']} {p['rows']:,}" for p in run["published"])
        print(f"as_of {run['as_of']}: published {rows}; report {run['report']}")
        _print_repairs(run["ingest"])
    if result["skipped"]:
        print(f"skipped (already published): {', '.join(result['skipped'])}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from prodassoc_core.ops import EVALUATION_METHODS

    settings = _settings(args)
    if args.methods:
        methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
        unknown = [m for m in methods if m not in EVALUATION_METHODS]
        if unknown or not methods:
            raise CliError(EXIT_USAGE, f"--methods: unknown method(s) {', '.join(unknown) or '(none given)'}; "
                                       f"known: {', '.join(EVALUATION_METHODS)}")
        settings = settings.model_copy(
            update={"evaluation": settings.evaluation.model_validate({**settings.evaluation.model_dump(), "methods": methods})}
        )
    if args.end is not None and args.end <= args.as_of:
        raise CliError(EXIT_USAGE, f"--end {args.end} must be after --as-of {args.as_of}")
    _check_as_of(settings, args.as_of, allow_stale=True)
    newest = _landed_days(settings)[-1]
    if newest < args.as_of:  # the test window [as_of, end) would hold no landed day
        raise CliError(EXIT_NO_DATA, f"evaluate: as_of {args.as_of} leaves no test window: the newest landed day is "
                                     f"{newest}; evaluate an earlier date (the test window starts at as_of)")
    _writable(settings)
    _check_engine(settings)
    from flows.evaluate import evaluate
    from prodassoc_core.evaluation import markdown_table

    _start_prefect()
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
    settings = _settings(args)
    if args.seed is None and settings.training.seed is None:
        raise CliError(EXIT_USAGE, "train: training.seed is required: pass --seed N (or set PRODASSOC_TRAINING__SEED)")
    # validated together before any data loads (time budgets > 0, a known device)
    settings = settings.model_copy(update={"training": training_settings(settings, args)})
    _writable(settings)  # the options first, then the data they apply to
    _check_as_of(settings, args.as_of, allow_stale=True)
    if settings.training.device == "cuda":
        from prodassoc_core.models import choose_device

        try:
            choose_device("cuda")
        except RuntimeError as exc:
            print(f"prodassoc: error: --device cuda: {exc}", file=sys.stderr)
            return 2
    from prodassoc_core.models.training import rank, world_size

    if world_size() > 1 and rank() > 0:
        # under torchrun: ranks 1.. train the DDP stages with rank 0, which runs the flow below
        # (Prefect, MLflow, registry, gate, GNN) and prints the result
        from prodassoc_core.pipeline import retrain

        if args.seed is not None:
            settings = settings.model_copy(update={"training": settings.training.model_copy(update={"seed": args.seed})})
        retrain.train_rank(settings, args.as_of)
        return 0
    _check_engine(settings)
    from flows.train import train
    from prodassoc_core.ops import locks

    with locks.training_lock(settings.locks_dir, args.as_of):  # another training of the date: fail before Prefect starts
        pass
    _start_prefect()
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
    from prodassoc_core.models import serving

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


@dataclass(frozen=True)
class _RuleThresholds:
    """The options of `rules` as mining reads them (``mining.rules.RuleThresholds``)."""

    min_support: float
    min_confidence: float
    min_len: int
    max_len: int | None


def _rule_thresholds(args: argparse.Namespace):
    """The thresholds, checked as ``MiningConfig`` checks them (--min-len and --max-len are at least 1
    by their types). Pydantic, whose import and models cost as much start-up as polars, is loaded
    only to word a refusal: ``MiningConfig`` raises its ValidationError naming the setting."""
    values = {"min_support": args.min_support, "min_confidence": args.min_confidence, "min_len": args.min_len,
              "max_len": args.max_len}
    if (0 < args.min_support <= 1 and 0 <= args.min_confidence <= 1
            and (args.max_len is None or args.max_len >= args.min_len)):
        return _RuleThresholds(**values)
    from prodassoc_core.ops import MiningConfig

    return MiningConfig(**values)


def cmd_rules(args: argparse.Namespace) -> int:
    # Only what mining a file needs: no Prefect, Great Expectations, pandas (pyarrow's dataset
    # reader would import it), torch or MLflow; tests/cli/test_rules_imports.py guards this.
    import pyarrow.parquet as pq

    from prodassoc_core.data import load_basket_codes
    from prodassoc_core.mining import mine_rules

    source = _input_file(args.input, "--input")
    out = Path(args.output)
    if out.is_dir():
        raise CliError(EXIT_USAGE, f"--output {out} is a directory; give a file name, e.g. {out / 'rules.parquet'}")
    blocking = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise CliError(EXIT_USAGE, f"--output {out}: {blocking} is a file, not a directory")
    cfg = _rule_thresholds(args)
    # ~100k lists and tuples and no reference cycles: the collector would only walk them again and again
    gc.disable()
    try:
        baskets, items = load_basket_codes(source)  # integer codes: pyfim reads them faster than strings
        log.info("mining %d baskets from %s", len(baskets), source)
        rules = mine_rules(baskets, cfg, max_candidates=args.max_rules, items=items)
    finally:
        gc.enable()
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        # zstd level 1 with dictionaries for the item columns only (rule ids are unique): half
        # the time of the defaults, and a smaller file
        pq.write_table(rules, tmp, compression="zstd", compression_level=1,
                       use_dictionary=["antecedent.list.element", "consequent"])
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in _STORAGE_ERRNOS:
            from prodassoc_core.data import warehouse

            raise warehouse.storage_error(exc, out, warehouse._parquet_size(rules)) from exc
        raise
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


def _problems(exc) -> str:
    """A pydantic ValidationError's problems on one line: ``field: message``, a check across
    fields (no field) by its message alone, without pydantic's "Value error, " prefix."""
    def one(e) -> str:
        msg = e["msg"].removeprefix("Value error, ")
        where = ".".join(map(str, e["loc"]))
        return f"{where}: {msg}" if where else msg
    return "; ".join(one(e) for e in exc.errors())


def _damage(day: date, tables: list[str]) -> str:
    """What is wrong with a run whose published files went missing or changed, and how to redo it."""
    paths = ", ".join(f"warehouse/{t}/run_date={day}/data.parquet" for t in tables)
    files = "file is" if len(tables) == 1 else "files are"
    return f"its {', '.join(tables)} {files} missing or changed ({paths}); redo it: prodassoc run --as-of {day}"


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from prodassoc_core.pipeline import status

    settings = _settings(args)
    if not settings.data_dir.is_dir():
        raise CliError(EXIT_NO_DATA, f"no data directory at {settings.data_dir}: import a source first (prodassoc import …)")
    found = status.data_status(settings)
    if args.json:
        print(json.dumps(found.as_json(settings), indent=1))
    else:
        print("\n".join(status.describe(found, settings)))
    return 0


def cmd_top(args: argparse.Namespace) -> int:

    from prodassoc_core.data import warehouse
    from prodassoc_core.pipeline import stages

    settings = _settings(args)
    if not settings.data_dir.is_dir():
        raise CliError(EXIT_NO_DATA, f"no data directory at {settings.data_dir}: import a source and run the nightly first")
    stages.adopt_legacy(settings)
    committed = warehouse.committed_dates(settings.warehouse_dir)
    damaged = {day: _damage(day, tables) for day, tables in warehouse.damaged_dates(settings.warehouse_dir).items()}
    if not committed and damaged:
        raise CliError(EXIT_NO_DATA, f"no intact run in {settings.data_dir}: "
                                     + "; ".join(f"run {day}: {why}" for day, why in damaged.items()))
    if not committed:
        raise CliError(EXIT_NO_DATA, f"nothing published in {settings.data_dir} yet: run 'prodassoc run --as-of …' first")
    if args.run_date in damaged:
        raise CliError(EXIT_NO_DATA, f"run {args.run_date}: {damaged[args.run_date]}")
    for day, why in damaged.items():
        if args.run_date is None and day > max(committed):  # a newer run than the one shown
            print(f"prodassoc: run {day} is not shown: {why}", file=sys.stderr)
    with stages.open_views(settings) as con:
        views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
        if "product_associations_named" not in views:
            raise CliError(EXIT_NO_DATA,
                           f"{settings.duckdb_path} has no product_associations_named view (no run published yet, or "
                           "the views predate it); run `prodassoc run --as-of YYYY-MM-DD` to publish and refresh them")
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


def _text(text: str) -> str:
    """Non-blank text (an audit trail's reason), stripped."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must say something (it is recorded), got a blank")
    return text.strip()


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _max_len(text: str) -> int | None:
    if text.lower() == "none":
        return None
    return _positive_int(text)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2), like every other expected failure."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="prodassoc", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", metavar="DIR",
                        help="data directory: landing, staging, warehouse, DuckDB, Data Docs, MLflow "
                             "(default: $PRODASSOC_DATA_DIR or ./.prodassoc)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log at DEBUG level and show tracebacks of errors (default: INFO, one line per error)")
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
                   help="'basket-csv': the order date given to every basket, or the first day with --spread-days "
                        "(default: %(default)s)")
    p.add_argument("--spread-days", type=_positive_int, metavar="N",
                   help="'basket-csv': lay the baskets, in file order, evenly over N days from --date (a basket file "
                        "has no times; on one day the holdout, the classic method's choice and the serving gate have "
                        "no past to learn from) (default: all on --date)")
    p.set_defaults(func=cmd_import)

    stale = ("run even when as_of lies more than stale_margin_days (setting, default 7) after the day "
             "following the newest landed day")
    p = sub.add_parser("run", help="run the nightly flow for one as_of date")
    p.add_argument("--as-of", type=_date, required=True, metavar="YYYY-MM-DD",
                   help="the run date (required): trains on orders before it, publishes run_date=YYYY-MM-DD")
    p.add_argument("--allow-stale", action="store_true", help=stale + " (default: refuse)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("backfill", help="run the nightly flow for every date in a range, oldest first")
    p.add_argument("--start", type=_date, required=True, metavar="YYYY-MM-DD", help="first run date (required)")
    p.add_argument("--end", type=_date, required=True, metavar="YYYY-MM-DD", help="last run date, included (required)")
    p.add_argument("--force", action="store_true",
                   help="rerun dates that are already published, replacing their partitions "
                        "(default: skip them)")
    p.add_argument("--allow-stale", action="store_true", help=stale.replace("as_of", "--end") + " (default: refuse)")
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
    p.add_argument("--max-minutes", type=float, metavar="M",
                   help="time budget of the whole chain in minutes, split across the stages "
                        "(default: training.max_minutes, else sized from the number of training baskets, 2 to 30 min)")
    p.add_argument("--mlm-minutes", type=float, metavar="M",
                   help="budget of the MLM stage, instead of its share (default: training.mlm_minutes, its share)")
    p.add_argument("--teacher-minutes", type=float, metavar="M",
                   help="budget of the teacher stage: pairs, validation, training "
                        "(default: training.teacher.max_minutes, its share)")
    p.add_argument("--student-minutes", type=float, metavar="M",
                   help="budget of the student stage: teacher lists, validation, training "
                        "(default: training.student.max_minutes, its share)")
    p.add_argument("--lists-minutes", type=float, metavar="M",
                   help="part of the student stage for scoring its lists with the teacher "
                        "(default: training.student.teacher_minutes, its share)")
    p.add_argument("--gnn-minutes", type=float, metavar="M",
                   help="budget of the GNN stage: graph, training, hybrid weights "
                        "(default: training.gnn.max_minutes, its share)")
    p.add_argument("--budget-split", type=_split, metavar="STAGE=SHARE,...",
                   help="how --max-minutes is shared, e.g. mlm=0.1,teacher=0.3,student=0.3,gnn=0.3; also "
                        "student_lists=SHARE and hybrid_seconds=S (default: training.budget, "
                        "mlm=0.15,teacher=0.25,student=0.3,gnn=0.3)")
    p.add_argument("--progress-seconds", type=float, metavar="S",
                   help="without a terminal, a progress log line this often (default: training.progress_seconds)")
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
    p.add_argument("--reason", required=True, metavar="TEXT", type=_text,
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
    p.add_argument("--min-len", type=_positive_int, default=2, metavar="N",
                   help="fewest items per rule, antecedent + consequent (default: %(default)s)")
    p.add_argument("--max-len", type=_max_len, default=MINING_MAX_LEN, metavar="N|none",
                   help=f"most items per rule, antecedent + consequent; 'none': unbounded "
                        f"(default: {MINING_MAX_LEN}, as the nightly)")
    p.add_argument("--max-rules", type=_positive_int, default=DEFAULT_MAX_RULES, metavar="N",
                   help="refuse, before mining, thresholds that admit more candidate rules than this "
                        f"(default: {DEFAULT_MAX_RULES:,}, about a gigabyte of rules)")
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
    p.add_argument("--limit", type=_positive_int, default=10, metavar="N", help="rows to print (default: %(default)s)")
    p.set_defaults(func=cmd_top)

    p = sub.add_parser(
        "status", help="what the data directory holds: landed days, ingested files, published dates, what is served",
        description="Reads files only (no Prefect, no MLflow): the landed transaction days, the manifest's account of "
        "every landed file, the published run dates with their gaps and any damaged ones, the newest run's tables "
        "and what it served, and what the data directory keeps.",
    )
    p.add_argument("--json", action="store_true", help="print the status as one JSON object, for monitoring scripts "
                   "(default: lines of text)")
    p.set_defaults(func=cmd_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Prefect API call otherwise
    if not args.verbose:
        _quiet_expected_failures()
    try:
        return args.func(args)
    except Exception as exc:  # noqa: BLE001 - expected failures become one line and an exit code
        code, message = _classify(exc)
        if code is None:
            raise
        if args.verbose:
            traceback.print_exc()
        print(f"prodassoc: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
