"""Issue 12 items 6-11: the CLI fails fast and clearly, before Prefect starts; Prefect's
tracebacks never precede the CLI's message; dates outside the data publish nothing; ``rules``
refuses thresholds that would run without end; nothing leaks when a process is killed; the
temporary Prefect server gets a longer start-up and one retry.

The CLI runs in subprocesses (the ``prodassoc`` script of this interpreter, this checkout's
code), with real files, real locks and real SIGKILLs.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import polars as pl
import pytest

from prodassoc_core.data import warehouse
from prodassoc_core.ops import locks
from prodassoc_core.ops.settings import MiningConfig, Settings
from prodassoc_core.pipeline import stages

from conftest import REPO, land, venv_command

AS_OF = "2024-01-07"  # land(): 2024-01-01 .. 2024-01-06
PREFECT_STARTED = "Starting temporary server"  # Prefect's log line when its ephemeral API starts


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != warehouse.FAULT_ENV}
    environ |= {"PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(venv_command(["prodassoc", *args]), cwd=cwd, env=environ, capture_output=True,
                          text=True, timeout=timeout)


def stderr_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """stderr without the log lines (timestamped) the commands write while working."""
    return [line for line in proc.stderr.splitlines() if line and not line[:4].isdigit()]


@pytest.fixture
def work(tmp_path) -> Path:
    """A data dir with a small landing zone, a basket CSV, a non-UTF-8 CSV, a plain file."""
    land(Settings(data_dir=tmp_path / "data").landing_dir)
    (tmp_path / "baskets.csv").write_text("a,b\na,b,c\nb,c\n")
    (tmp_path / "latin1.csv").write_bytes(b"a,b\nc,caf\xe9\n")
    (tmp_path / "tx.csv").write_text(
        "order_id,product_id,quantity,unit_price,customer_id,ordered_at\n"
        "1,A,2,1.0,c,2011-01-01 10:00\n2,B,abc,1.0,c,2011-01-01 10:00\n"
    )
    (tmp_path / "afile").write_text("x")
    (tmp_path / "empty").mkdir()
    return tmp_path


RULES = ["rules", "--min-support", "0.1", "--min-confidence", "0.1"]

# (arguments, exit code, text of the one line on stderr)
CASES = {
    "train_without_seed": (["--data-dir", "data", "train", "--as-of", AS_OF], 2, "training.seed is required"),
    "backfill_end_before_start": (["--data-dir", "data", "backfill", "--start", "2024-01-05", "--end", "2024-01-04"],
                                  2, "--end 2024-01-04 is before --start 2024-01-05"),
    "run_on_an_empty_dir": (["--data-dir", "empty", "run", "--as-of", AS_OF], 5, "no landed transactions in empty"),
    "run_on_a_missing_dir": (["--data-dir", "missing", "run", "--as-of", AS_OF], 5, "no landed transactions in missing"),
    "evaluate_unknown_method": (["--data-dir", "data", "evaluate", "--as-of", "2024-01-04", "--methods", "foo"],
                                2, "unknown method(s) foo"),
    "evaluate_without_a_test_window": (["--data-dir", "data", "evaluate", "--as-of", AS_OF], 5,
                                       "evaluate: as_of 2024-01-07 leaves no test window: the newest landed day is "
                                       "2024-01-06"),
    "top_on_a_missing_dir": (["--data-dir", "missing", "top"], 5, "no data directory at missing"),
    "top_on_an_empty_dir": (["--data-dir", "empty", "top"], 5, "nothing published in empty yet"),
    "top_negative_limit": (["top", "--limit", "-1"], 2, "--limit: must be at least 1, got -1"),
    "data_dir_is_a_file": (["--data-dir", "afile", "run", "--as-of", AS_OF], 2, "data dir afile is not a directory"),
    "online_retail_given_a_csv": (["--data-dir", "data", "import", "online-retail", "tx.csv"], 2,
                                  "reads the UCI Parquet files, not .csv"),
    "rules_max_len_below_min_len": ([*RULES, "--min-len", "5", "--max-len", "3", "--input", "baskets.csv", "--output",
                                     "r.parquet"], 2, "prodassoc: error: invalid setting: max_len 3 < min_len 5"),
    "train_budget_out_of_range": (["--data-dir", "data", "train", "--as-of", AS_OF, "--seed", "1", "--max-minutes", "-1"],
                                  2, "prodassoc: error: invalid setting: max_minutes: Input should be greater than 0"),
    "promote_with_a_blank_reason": (["--data-dir", "data", "promote", "--version", "1", "--reason", " "], 2,
                                    "--reason: must say something (it is recorded), got a blank"),
    "rules_input_is_a_directory": ([*RULES, "--input", "empty", "--output", "r.parquet"], 2, "--input empty is not a file"),
    "rules_output_is_a_directory": ([*RULES, "--input", "baskets.csv", "--output", "empty"], 2,
                                    "--output empty is a directory"),
    "rules_output_under_a_file": ([*RULES, "--input", "baskets.csv", "--output", "afile/r.parquet"], 2,
                                  "afile is a file, not a directory"),
    "non_utf8_csv": ([*RULES, "--input", "latin1.csv", "--output", "r.parquet"], 2,
                     "latin1.csv: line 2 is not UTF-8 text (byte 0xe9 at column 6)"),
    "unparsable_quantity": (["--data-dir", "data", "import", "canonical", "tx.csv"], 2,
                            "tx.csv: column 'quantity' (source 'quantity'): 1 value(s) cannot be read as Int64, "
                            "e.g. 'abc' at data row 2"),
    # item 8: dates outside the data publish nothing
    "as_of_1900": (["--data-dir", "data", "run", "--as-of", "1900-01-01"], 5,
                   "training window [1898-01-01, 1900-01-01) holds no landed day"),
    "as_of_2030": (["--data-dir", "data", "run", "--as-of", "2030-01-01"], 5, "pass --allow-stale"),
    "as_of_9999_allow_stale": (["--data-dir", "data", "run", "--as-of", "9999-12-31", "--allow-stale"], 5,
                               "holds no landed day"),
    "as_of_0001": (["--data-dir", "data", "run", "--as-of", "0001-01-01"], 2, "starts before the year 1"),
    "backfill_into_the_future": (["--data-dir", "data", "backfill", "--start", "2024-01-07", "--end", "2030-01-01"], 5,
                                 "as_of 2030-01-01 is"),
}


ENV_CASES = {  # (environment, arguments) -> exit code 2, text of the one line
    "misspelt_setting": ({"PRODASSOC_MINING__MIN_SUPORT": "0.001"}, ["--data-dir", "data", "run", "--as-of", AS_OF],
                         "unknown setting(s) in the environment: PRODASSOC_MINING__MIN_SUPORT (no setting "
                         "mining.min_suport; did you mean min_support?)"),
    "warehouse_url_not_s3": ({"PRODASSOC_WAREHOUSE_URL": "s3:/bucket/tables"}, ["--data-dir", "data", "run", "--as-of",
                             AS_OF], "prodassoc: error: not an s3:// URL: 's3:/bucket/tables'"),
    "spark_master_mistyped": ({"PRODASSOC_ENGINE": "spark", "PRODASSOC_SPARK__MASTER": "spark//host:7077"},
                              ["--data-dir", "data", "backfill", "--start", "2024-01-05", "--end", "2024-01-06"],
                              "prodassoc: error: invalid setting: spark.master: 'spark//host:7077' is not a Spark "
                              "master URL"),
}
CASES |= {name: (args, 2, text) for name, (_, args, text) in ENV_CASES.items()}


@pytest.mark.parametrize("case", CASES)
def test_expected_failures_are_one_line_before_prefect_starts(work, case):
    args, code, text = CASES[case]
    start = time.monotonic()
    proc = cli(*args, cwd=work, env=ENV_CASES[case][0] if case in ENV_CASES else None)
    elapsed = time.monotonic() - start
    assert proc.returncode == code, proc.stderr[-3000:]
    lines = stderr_lines(proc)
    assert len(lines) == 1 and lines[0].startswith("prodassoc"), proc.stderr
    assert text in lines[0]
    assert "Traceback" not in proc.stderr and PREFECT_STARTED not in proc.stderr
    assert elapsed < 30, f"{elapsed:.0f} s"  # no server start-up (seconds, not minutes, even on a busy machine)
    assert not (work / "data" / "warehouse").exists()  # nothing published
    assert not (work / "missing").exists()  # a mistyped data dir is not created


SPARK_CASES = {  # engine: spark on a machine where Spark cannot start: exit 6, before Prefect starts
    "java_home_without_java": (["run", "--as-of", AS_OF], {"JAVA_HOME": "empty"},
                               "engine 'spark' needs Java 17: JAVA_HOME=empty has no bin/java"),
    "no_java_on_path": (["train", "--as-of", AS_OF, "--seed", "1"], {"JAVA_HOME": "", "PATH": "empty"},
                        "engine 'spark' needs Java 17 (java is not on PATH and JAVA_HOME is unset)"),
}


@pytest.mark.parametrize("case", SPARK_CASES)
def test_the_spark_engine_without_java_is_one_line_before_prefect_starts(work, case):
    pytest.importorskip("pyspark", reason="pyspark is not installed: the engine says so instead (NO_PYSPARK)")
    command, env, text = SPARK_CASES[case]
    proc = cli("--data-dir", "data", *command, cwd=work, env={"PRODASSOC_ENGINE": "spark", **env})
    assert proc.returncode == 6, proc.stderr[-3000:]
    assert stderr_lines(proc) == [f"prodassoc: error: {text}"], proc.stderr
    assert "Traceback" not in proc.stderr and PREFECT_STARTED not in proc.stderr
    assert not (work / "data" / "staging").exists()  # nothing ingested


def test_verbose_shows_the_traceback(work):
    proc = cli("-v", "--data-dir", "data", "train", "--as-of", AS_OF, cwd=work)
    assert proc.returncode == 2
    assert "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith("prodassoc: error: train: training.seed is required")


def test_a_second_run_for_the_same_date_is_refused_before_prefect_starts(work):
    settings = Settings(data_dir=work / "data")
    with locks.run_lock(settings.locks_dir, date.fromisoformat(AS_OF)):  # another run holds the date
        start = time.monotonic()
        proc = cli("--data-dir", "data", "run", "--as-of", AS_OF, cwd=work)
        elapsed = time.monotonic() - start
    assert proc.returncode == 3
    lines = stderr_lines(proc)
    assert len(lines) == 1 and f"another nightly run for as_of {AS_OF} is in progress" in lines[0]
    assert f"pid {os.getpid()}" in lines[0] and PREFECT_STARTED not in proc.stderr and elapsed < 30


def test_a_read_only_data_dir_is_one_line(work):
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("unshare -rm (user and mount namespaces) is not available here")
    data = work / "data"
    script = (f"mount --bind {data} {data} && mount -o remount,bind,ro {data} && "
              f"exec {venv_command(['prodassoc'])[0]} --data-dir data run --as-of {AS_OF}")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=work, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == 4, proc.stderr[-2000:]
    lines = stderr_lines(proc)
    assert lines == ["prodassoc: error: data dir data is not writable: Read-only file system"]


# --- 7. an ingestion error through the whole flow: no Prefect traceback before the message -------


def test_prefect_tracebacks_do_not_precede_the_cli_message(work, prefect_harness):
    """Against the run's Prefect API (PREFECT_API_URL, as on a machine with a server): the flow's
    failure is what is under test, not starting a temporary server (the next-but-one test)."""
    from prefect.settings import PREFECT_API_URL

    pl.DataFrame({"order_id": ["x"], "product_id": ["A"]}).write_parquet(
        work / "data" / "landing" / "transactions" / "dt=2024-01-03" / "broken.parquet"
    )
    proc = cli("--data-dir", "data", "run", "--as-of", AS_OF, cwd=work, env={"PREFECT_API_URL": PREFECT_API_URL.value()})
    assert PREFECT_STARTED not in proc.stderr  # the flow ran on that API
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "Warning" not in proc.stderr  # e.g. pyspark's about pandas 3, raised when GE imports it
    message = next(i for i, line in enumerate(proc.stderr.splitlines()) if line.startswith("prodassoc: ingestion failed"))
    assert "dt=2024-01-03/broken.parquet" in "\n".join(proc.stderr.splitlines()[message:])


# --- 8. in the core too: a window without baskets publishes nothing -------------------------------


def test_a_run_whose_window_holds_no_baskets_publishes_nothing(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    land(settings.landing_dir)
    with pytest.raises(stages.NoDataError, match=r"no baskets in the training window \[1898-01-01, 1900-01-01\)"):
        stages.run_nightly(settings, date(1900, 1, 1))
    assert not stages.is_published(settings, date(1900, 1, 1))
    assert not list(settings.warehouse_dir.rglob("*.parquet"))
    assert stages.backfill_dates(settings, date(1900, 1, 1), date(1900, 1, 1)) == ([date(1900, 1, 1)], [])


# --- 9. rules: bounded before mining, max_len as the nightly's ----------------------------------


def test_rules_refuses_thresholds_that_would_run_without_end(tmp_path):
    big = tmp_path / "big.csv"
    big.write_text(",".join(f"i{k}" for k in range(300)) + "\ni1,i2\n")  # one 300-item basket
    start = time.monotonic()
    proc = cli("rules", "--input", "big.csv", "--min-support", "0.5", "--min-confidence", "0", "--max-len", "none",
               "--output", "r.parquet", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and time.monotonic() - start < 30
    lines = stderr_lines(proc)
    assert len(lines) == 1 and "candidate rules before the confidence filter" in lines[0] and "--max-rules" not in lines[0]
    assert not (tmp_path / "r.parquet").exists()


def test_rules_default_max_len_is_the_nightlys(tmp_path):
    baskets = tmp_path / "b.csv"
    baskets.write_text("a,b,c,d,e,f\n" * 3 + "a,b\n")
    assert cli("rules", "--input", "b.csv", "--min-support", "0.5", "--min-confidence", "0.5", "--output", "r.parquet",
               cwd=tmp_path).returncode == 0
    assert pl.read_parquet(tmp_path / "r.parquet")["length"].max() == MiningConfig().max_len == 4
    bounded = cli("rules", "--input", "b.csv", "--min-support", "0.5", "--min-confidence", "0.5", "--max-len", "none",
                  "--max-rules", "10", "--output", "r2.parquet", cwd=tmp_path)
    assert bounded.returncode == 2 and "more than the bound of 10" in bounded.stderr


# --- 10. leaks: temporary files of killed view refreshes; the Prefect server of a killed run ------

VIEWS_CHILD = """
import sys
from pathlib import Path
from prodassoc_core.pipeline import stages
from prodassoc_core.ops.settings import Settings
stages.refresh_views(Settings(data_dir=Path(sys.argv[1])))
"""


def test_a_view_refresh_killed_mid_way_leaves_nothing_behind_for_long(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    land(settings.landing_dir)
    stages.run_nightly(settings, date.fromisoformat(AS_OF))
    env = {**os.environ, "PYTHONPATH": str(REPO), warehouse.FAULT_ENV: "views.before_replace=kill"}
    proc = subprocess.run([sys.executable, "-c", VIEWS_CHILD, str(settings.data_dir)], env=env, capture_output=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL
    left = list(settings.data_dir.glob(".prodassoc.duckdb.*.tmp*"))
    assert left, "the kill left no temporary file to clean"
    stages.refresh_views(settings)  # another process's refresh removes the dead writer's files
    assert not list(settings.data_dir.glob(".prodassoc.duckdb.*.tmp*"))


def _children(pid: int) -> dict[int, str]:
    """Child processes of ``pid`` (Linux /proc): pid -> command line."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc (Linux)")
def test_the_prefect_server_dies_with_a_killed_run_and_startup_is_retried(work, migrated_prefect_home):
    """One run: Prefect's start-up timeout is set to 1 s, so the first start fails and the
    CLI retries once with a longer one; then the run is SIGKILLed inside ingestion, and the
    server process must go with it."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "1",
           warehouse.FAULT_ENV: "ingest=block"}
    proc = subprocess.Popen(venv_command(["prodassoc", "--data-dir", "data", "run", "--as-of", AS_OF]), cwd=work,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen, servers = [], []
    try:
        deadline = time.monotonic() + 300
        for line in proc.stderr:
            seen.append(line)
            if "prodassoc fault point ingest reached" in line or time.monotonic() > deadline:
                break
        servers = [p for p, cmd in _children(proc.pid).items() if "uvicorn" in cmd]
    finally:
        servers = servers or [p for p, cmd in _children(proc.pid).items() if "uvicorn" in cmd]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 20
        while any(_alive(p) for p in servers) and time.monotonic() < deadline:
            time.sleep(0.2)
        survivors = [p for p in servers if _alive(p)]
        for p in survivors:  # never leave a server behind, whatever the outcome
            os.kill(p, signal.SIGKILL)
    assert any("fault point ingest reached" in line for line in seen), "".join(seen)[-3000:]
    assert any("retrying once" in line for line in seen), "".join(seen)[-3000:]
    assert len(servers) == 1, servers  # the timed-out first one was stopped
    assert not survivors, "the ephemeral Prefect server outlived the killed run"


def test_a_full_disk_is_one_line_naming_the_path_and_the_bytes(tmp_path):
    """``rules`` writes to a real 16 KB tmpfs (private mount namespace): exit 4, one line.

    The rules file is about 63 KB (zstd, dictionaries for the item columns)."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("unshare -rm (user and mount namespaces) is not available here")
    import random

    rnd = random.Random(0)
    items = [f"item{k}" for k in range(40)]
    (tmp_path / "b.csv").write_text("".join(",".join(rnd.sample(items, 8)) + "\n" for _ in range(300)))
    (tmp_path / "small").mkdir()
    script = (f"mount -t tmpfs -o size=16k tmpfs small && exec {venv_command(['prodassoc'])[0]} rules --input b.csv "
              "--min-support 0.02 --min-confidence 0.1 --max-len 3 --output small/rules.parquet")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == 4, proc.stderr[-2000:]
    lines = stderr_lines(proc)
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("prodassoc: storage error: cannot write small/rules.parquet: no space left on device; ")
    assert "bytes needed" in lines[0] and "free" in lines[0]


def test_make_install_on_a_nearly_full_disk_stops_before_installing_anything(tmp_path):
    """A new .venv takes 3.1 GB: on a 64 MB tmpfs (private mount namespace) `make install`'s venv
    step stops at once, one line naming the space it needs and the space there is, no .venv made."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("unshare -rm (user and mount namespaces) is not available here")
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    (tmp_path / "repo").mkdir()
    script = ("mount -t tmpfs -o size=64m tmpfs repo && cp Makefile pyproject.toml repo/ && cd repo && "
              f"exec make --no-print-directory PYTHON={sys.executable} .venv/.installed")
    shutil.copy(REPO / "Makefile", tmp_path)
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0
    assert "prodassoc: make install needs about 4 GB free for .venv" in proc.stderr, proc.stderr[-2000:]
    assert re.search(r"; \d+ MB free under /", proc.stderr), proc.stderr[-2000:]
    assert "pip install" not in proc.stdout  # stopped before the first install step
