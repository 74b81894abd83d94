"""Test environment: offline, quiet libraries, one torch thread, Prefect in a temporary home."""

from __future__ import annotations

import atexit
import gc
import json
import os
import shutil
import random
import tempfile
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest

import shared_prefect
from prodassoc_core.ops.settings import HybridConfig, SelectionConfig

if "PREFECT_HOME" not in os.environ:  # one per run, made by the process that starts it (xdist workers inherit it)
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="prodassoc-prefect-")
    atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "prodassoc")  # as the CLI and the deployments set it
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")  # plain runs log to stderr only
# Prefect's API servers in the tests (the harness, the CLI's temporary one) do not register Prefect's
# block types at start-up (about 1.2 s of CPU each on a new database): prodassoc uses no blocks. The
# production tests' `prefect server` starts without this, as a user's does.
os.environ.setdefault("PREFECT_SERVER_REGISTER_BLOCKS_ON_START", "false")

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample" / "online_retail_sample.parquet"


# --- the sample's best sellers and its newest products: the end-to-end tests' data -------------
# What the chain costs grows with the catalog: the MLM's texts, the graph's nodes, the hybrid
# ranking every product, the gate scoring them; the nightly's ingestion and mining grow with the
# lines. What the tests of the chain, the training flow and the nightly check (what each stage
# does, records and serves) does not need the sample's 2,919 products. They import the lines of its
# CUT_BEST_SELLERS best-selling stock codes (by lines) and of every stock code first sold on or
# after CUT_NEW_SINCE: the products the held-out windows of the tests' dates (2011-10-25,
# 2011-11-08) see for the first time, so cold starts are still scored. That is 983 products and
# 54,944 of the 76,126 lines: the four model test files took 40 % less CPU than on the whole
# sample, the four nightly and evaluation flow files 18 % less.
CUT_BEST_SELLERS = 800
CUT_NEW_SINCE = datetime(2011, 10, 25)


@pytest.fixture(scope="session")
def sample_cut(tmp_path_factory) -> Path:
    """The shipped sample cut as above, in the source's format (the real importer reads it)."""
    import polars as pl

    lines = pl.read_parquet(SAMPLE)
    code = pl.col("StockCode").str.to_uppercase()  # the importer's product id
    per_code = lines.group_by(code).agg(n=pl.len(), first=pl.col("InvoiceDate").min())
    best = per_code.sort(["n", "StockCode"], descending=[True, False]).head(CUT_BEST_SELLERS)
    new = per_code.filter(pl.col("first") >= CUT_NEW_SINCE)
    kept = pl.concat([best["StockCode"], new["StockCode"]]).unique()
    path = tmp_path_factory.mktemp("sample-cut") / "online_retail_sample_cut.parquet"
    lines.filter(code.is_in(kept.implode())).write_parquet(path)
    return path


# --- smaller search grids for the tests that run the nightly, the training flow or the chain ------
# They choose the classic method among 2 decayed_damped settings (the default grid has 18) and
# tune the hybrid's weights on a 0.5 grid (6 points, not 66): the same code in a fraction of the
# time. The default grids are tested as they are: tests/mining/test_selection.py (SelectionConfig())
# and tests/models/test_hybrid.py. Set as environment defaults, so every Settings() in the tests and
# every `prodassoc` process they start reads them; code called with the configs themselves
# (chain.train_chain) is given TEST_SELECTION and TEST_HYBRID.
TEST_SELECTION = SelectionConfig(half_lives=(None, 120.0), size_exponents=(0.5,), popularity_exponents=(0.25,))
TEST_HYBRID = HybridConfig(weight_step=0.5)
TEST_GRIDS = {
    "PRODASSOC_SELECTION__HALF_LIVES": json.dumps(TEST_SELECTION.half_lives),
    "PRODASSOC_SELECTION__SIZE_EXPONENTS": json.dumps(TEST_SELECTION.size_exponents),
    "PRODASSOC_SELECTION__POPULARITY_EXPONENTS": json.dumps(TEST_SELECTION.popularity_exponents),
    "PRODASSOC_HYBRID__WEIGHT_STEP": str(TEST_HYBRID.weight_step),
}
for _name, _value in TEST_GRIDS.items():
    os.environ.setdefault(_name, _value)

# --- the Data Docs: rendered only by the tests about them -----------------------------------------
# Rendering a run's validation results into Great Expectations' HTML Data Docs is about 0.3 s of
# CPU a run, most of a toy ingestion's cost after the checkpoint runs themselves; the suite ingests a
# few hundred times. The tests default to validation.data_docs=false (results still stored, the
# quarantine the same); the tests of the Data Docs turn it on (``DATA_DOCS``), and the shipped
# default (on) is what `make demo` and a user get.
DATA_DOCS_ENV = "PRODASSOC_VALIDATION__DATA_DOCS"
os.environ.setdefault(DATA_DOCS_ENV, "false")


# --- a small synthetic landing zone (reliability tests) ------------------------------------------

PRODUCTS = list("ABCDEFGH")  # small: the default mining settings stay cheap
FIRST = date(2024, 1, 1)
N_DAYS = 6


def land(landing: Path, first: date = FIRST, n_days: int = N_DAYS, seed: int = 0) -> list[Path]:
    """A catalog and ``n_days`` daily partitions of 12 orders with 2-4 products each."""
    import polars as pl

    from prodassoc_core.data import contracts

    rng = random.Random(seed)
    (landing / "catalog").mkdir(parents=True, exist_ok=True)
    pl.DataFrame({contracts.PRODUCT_ID: PRODUCTS, contracts.TITLE: [f"product {p}" for p in PRODUCTS]}).write_parquet(
        landing / "catalog" / "catalog-2024-01-01.parquet"
    )
    paths = []
    for d in range(n_days):
        day = first + timedelta(days=d)
        rows = [
            (f"{day:%m%d}-{o}", p, 1 + k, 1.5, "cust", datetime(day.year, day.month, day.day, 9, o))
            for o in range(12)
            for k, p in enumerate(rng.sample(PRODUCTS, rng.randint(2, 4)))
        ]
        frame = pl.DataFrame(
            rows,
            schema={contracts.ORDER_ID: pl.String, contracts.PRODUCT_ID: pl.String, contracts.QUANTITY: pl.Int64,
                    contracts.UNIT_PRICE: pl.Float64, contracts.CUSTOMER_ID: pl.String, contracts.ORDERED_AT: pl.Datetime("us")},
            orient="row",
        )
        path = landing / "transactions" / f"dt={day.isoformat()}" / "part-0.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.write_parquet(path)
        paths.append(path)
    return paths


def shared_data_dir() -> Path | None:
    """../shared/data next to the repository, or $PRODASSOC_SHARED_DIR/data; None when absent."""
    candidates = []
    if os.environ.get("PRODASSOC_SHARED_DIR"):
        candidates.append(Path(os.environ["PRODASSOC_SHARED_DIR"]) / "data")
    candidates.append(REPO.parent / "shared" / "data")
    return next((c for c in candidates if c.is_dir()), None)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("../shared/data is not present on this machine")
    return path


# Python's cyclic garbage collector, set for a test process. A test process holds the import heap of
# torch, transformers, Prefect, MLflow and Great Expectations, and the default thresholds (700, 10,
# 10) scan it again and again: 5.7 s of 99 s CPU went to collections in tests/pipeline/
# test_train_flow.py, tests/data/test_ingest.py and tests/models/test_graph.py run in one process
# (timed with gc.callbacks). With the heap frozen after collection and these thresholds: 1.6 s.
# The product's own processes keep Python's defaults.
GC_THRESHOLDS = (20_000, 50, 50)


def pytest_collection_finish(session):
    gc.collect()
    gc.freeze()  # what collection imported lives as long as the process: never scanned again


def pytest_configure(config):
    """Under pytest-xdist, the controller keeps a folder for the run's one Prefect test server
    (tests/shared_prefect.py), started by the first worker that needs it."""
    gc.set_threshold(*GC_THRESHOLDS)
    if not hasattr(config, "workerinput") and getattr(config.option, "tx", None):
        config.prodassoc_prefect_folder = shared_prefect.make_folder()
        os.environ[shared_prefect.ENV] = str(config.prodassoc_prefect_folder)


def pytest_unconfigure(config):
    folder = getattr(config, "prodassoc_prefect_folder", None)
    if folder is not None:
        shared_prefect.stop(folder)


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory) -> Path:
    """A Prefect API on a temporary database for the session: the run's server shared by the xdist
    workers, else Prefect's own test harness. Yields a copy of that database as Prefect has just
    migrated it, before any flow ran (``migrated_prefect_db``)."""
    folder = os.environ.get(shared_prefect.ENV)
    if folder:
        url, migrated = shared_prefect.server(Path(folder))
        with shared_prefect.worker_settings(url):
            yield migrated
        return
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield _copy_prefect_db(tmp_path_factory.mktemp("prefect-db") / "prefect.db")


def _copy_prefect_db(target: Path) -> Path:
    """The current Prefect database copied to ``target`` with SQLite's backup API (consistent
    while the server runs)."""
    import sqlite3

    from prefect.settings import get_current_settings

    source = get_current_settings().server.database.connection_url.get_secret_value().split(":///", 1)[1]
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    return target


@pytest.fixture(scope="session")
def migrated_prefect_db(prefect_harness) -> Path:
    """An empty Prefect database at its schema's head (the harness's, copied before any flow
    ran). A server started on a copy of it finds nothing to migrate and skips Prefect's 116
    migrations (about 14 s of CPU on these machines)."""
    import sqlite3

    with sqlite3.connect(prefect_harness) as con:
        assert con.execute("SELECT count(*) FROM flow_run").fetchone() == (0,), "not an empty database"
    return prefect_harness


@pytest.fixture(scope="session")
def migrated_prefect_home(migrated_prefect_db) -> Path:
    """$PREFECT_HOME holding a migrated database, for tests whose `prodassoc` processes start
    Prefect's temporary server there."""
    home = Path(os.environ["PREFECT_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "prefect.db").exists():
        shutil.copyfile(migrated_prefect_db, home / "prefect.db")
    return home


# --- production tests (tests/test_production_*.py): real servers on loopback ------------------------
# Run when $CI is set or PRODASSOC_PRODUCTION_TESTS=1, skipped otherwise. Every process started
# here is stopped by its pid (terminate, wait, kill); every wait is bounded.

import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402


def production_tests_enabled() -> bool:
    ci = os.environ.get("CI", "").strip().lower()
    return ci not in ("", "0", "false", "no") or os.environ.get("PRODASSOC_PRODUCTION_TESTS") == "1"


production = [
    pytest.mark.production,
    pytest.mark.skipif(
        not production_tests_enabled(), reason="starts real servers: set PRODASSOC_PRODUCTION_TESTS=1 (CI runs them)"
    ),
]


# --- test tiers -------------------------------------------------------------------------------------
# unit (no marker): in-process, seconds; `make test-fast` runs only these.
# slow: runs flows, trains models, starts processes, servers or a browser (listed here, one place).
# production: real Prefect / MLflow servers on loopback (tests/production; CI=true runs them).
# spark: a local Spark session (tests/spark). gpu: needs CUDA (skipped without it).
# `make test` runs every tier, spread over the machine's cores (pytest-xdist, one file per worker).
SLOW_MODULES = {
    "cli/test_cli.py", "cli/test_reliability_cli.py",
    "data/test_object_store.py", "data/test_online_retail_ingest.py", "data/test_data_docs_browser.py",
    "evaluation/test_evaluate_flow.py", "evaluation/test_evaluate_models.py",
    "models/test_budgets.py", "models/test_chain.py", "models/test_graph.py", "models/test_hybrid.py",
    "models/test_mlm.py", "models/test_reliability_mlflow_store.py", "models/test_ddp.py", "models/test_gpu_check.py",
    "pipeline/test_nightly_flow.py", "pipeline/test_train_flow.py", "pipeline/test_run_report.py",
    "pipeline/test_reliability_concurrency.py", "pipeline/test_reliability_faults.py",
    "pipeline/test_reliability_loss.py", "pipeline/test_reliability_reruns.py",
}
TIER_FOLDERS = {"production": "production", "spark": "spark", "gpu": "gpu"}


# --- make test's schedule (pytest-xdist --dist loadfile) -----------------------------------------------
# Each worker runs whole files (module fixtures are built once). xdist hands out files largest
# first by *number of tests*, which puts the one-test files that train models or start servers
# last, so one worker ends minutes after the other. Instead: the longest files first (each file's
# seconds in a CI-like `make test` on 2 cores; a file not listed counts as 1 s), and the files that
# share an expensive session fixture in one unit (one Spark JVM for tests/spark).
FILE_SECONDS = {
    "pipeline/test_train_flow.py": 58, "production/test_production_mlflow.py": 56, "spark": 52,
    "cli/test_reliability_cli.py": 40, "models/test_chain.py": 35, "production/test_production_prefect.py": 35,
    "evaluation/test_evaluate_models.py": 32, "models/test_budgets.py": 27, "models/test_ddp.py": 23,
    "models/test_reliability_mlflow_store.py": 23, "models/test_mlm.py": 20, "pipeline/test_reliability_faults.py": 20,
    "pipeline/test_reliability_loss.py": 16, "pipeline/test_reliability_reruns.py": 20,
    "data/test_object_store.py": 16, "pipeline/test_nightly_flow.py": 14, "models/test_graph.py": 13,
    "pipeline/test_run_report.py": 12, "data/test_ingest.py": 11, "evaluation/test_evaluate_flow.py": 10,
    "pipeline/test_reliability_concurrency.py": 9, "data/test_reliability_types.py": 6, "models/test_hybrid.py": 6,
    "data/test_data_docs_browser.py": 4, "data/test_reliability_bad_input.py": 3, "data/test_validation.py": 3,
    "mining/test_reliability_properties.py": 3, "production/test_production_infra.py": 2, "cli/test_rules_imports.py": 2,
    "mining/test_protocol.py": 2, "mining/test_rules.py": 2, "data/test_online_retail_ingest.py": 11,
}
SAME_WORKER = {"spark"}  # test folders run as one unit (their files share a session fixture)


def _unit(nodeid: str) -> str:
    """The scheduling unit of a test: its file, or its folder where the folder is in SAME_WORKER."""
    path = nodeid.split("::", 1)[0]
    rel = path.removeprefix("tests/")
    folder = rel.split("/")[0]
    return f"tests/{folder}" if folder in SAME_WORKER and "/" in rel else path


def _unit_seconds(unit: str) -> float:
    return FILE_SECONDS.get(unit.removeprefix("tests/"), 1.0)


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile`` with SAME_WORKER units, the longest units handed out first."""
    if config.getvalue("dist") != "loadfile":
        return None
    from collections import OrderedDict

    from xdist.scheduler import LoadFileScheduling

    class LongestFirst(OrderedDict):
        def popitem(self, last=True):  # xdist takes the next unit with popitem(last=False)
            unit = max(self, key=_unit_seconds)  # ties: collection order
            return unit, self.pop(unit)

    class Scheduling(LoadFileScheduling):
        def __init__(self, config, log=None):
            super().__init__(config, log)
            self.workqueue = LongestFirst()

        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid)

    return Scheduling(config, log)


def pytest_collection_modifyitems(config, items):
    tests = Path(__file__).resolve().parent
    for item in items:
        rel = item.path.resolve().relative_to(tests).as_posix()
        folder = rel.split("/")[0]
        if folder in TIER_FOLDERS:
            item.add_marker(TIER_FOLDERS[folder])
        if rel in SLOW_MODULES or folder in TIER_FOLDERS:
            item.add_marker(pytest.mark.slow)


# --- a real headless browser (Data Docs, the run report) -------------------------------------------

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

def find_browser() -> str | None:
    found = os.environ.get("PRODASSOC_BROWSER") or next((b for b in map(shutil.which, BROWSERS) if b), None)
    if found:
        return found
    try:  # Playwright's Chromium, where that is what is installed
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            path = p.chromium.executable_path
        return path if Path(path).exists() else None
    except Exception:
        return None


def dom(browser: str, page: Path) -> str:
    """The page's DOM after its scripts ran, in headless Chromium with the network cut off."""
    out = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND",  # offline: nothing resolves
         "--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert "<body" in out.stdout, out.stderr[-2000:]
    return out.stdout



def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def venv_command(cmd: list[str]) -> list[str]:
    """``cmd`` with its program taken from this interpreter's bin directory (prefect, mlflow, prodassoc)."""
    program = Path(sys.executable).with_name(cmd[0])
    return [str(program) if program.exists() else cmd[0], *cmd[1:]]


def start_process(cmd: list[str], env: dict[str, str], log: Path, cwd: Path | None = None) -> subprocess.Popen:
    """Start ``cmd`` in its own process group, output to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            venv_command(cmd), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )


def stop_process(proc: subprocess.Popen, grace_s: float = 20) -> None:
    """Terminate ``proc`` and what it started (its process group), wait, then kill."""
    import signal

    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    try:  # children (flow-run processes, server workers) may outlive the leader
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(timeout=grace_s)


def log_tail(log: Path, chars: int = 4000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 90) -> None:
    """Poll ``url`` until it answers 200; fail with the log tail if ``proc`` exits or time runs out."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[0]} exited with {proc.returncode} before {url} answered:\n{log_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} did not answer within {timeout_s:.0f} s:\n{log_tail(log)}")


# --- the spark engine (tests/spark): one local Spark session for every test that needs it ---------


@pytest.fixture(scope="session")
def spark():
    """A ``local[2]`` Spark session shared by the whole run (starting one costs ~15 s); skips,
    saying why, without pyspark or Java."""
    from prodassoc_core.data import spark as spark_data
    from prodassoc_core.ops import SparkConfig

    try:
        spark_data.check_spark_available()
    except spark_data.SparkUnavailableError as exc:
        pytest.skip(str(exc))

    session = spark_data.session(SparkConfig(master="local[2]", shuffle_partitions=1, driver_memory="1g", small_data=True))
    yield session
    session.stop()
