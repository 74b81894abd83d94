"""A Spark session that does not start is one error naming the master (data/spark.py ``session``),
not py4j's or the launcher's stack trace: what ``prodassoc run`` prints (exit 6, docs/operations.md).

The session is started in a fresh interpreter: in this one the run's shared session is active, and
``session`` would return it.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from prodassoc_core.data import spark as spark_data

pytestmark = pytest.mark.spark

START = """
from prodassoc_core.data import spark
from prodassoc_core.ops import SparkConfig
try:
    spark.session(SparkConfig(master="local[1]"))
except spark.SparkUnavailableError as exc:
    print(exc)
    raise SystemExit(6)
"""


def test_a_java_that_does_not_start_is_one_error_naming_the_master(tmp_path):
    pytest.importorskip("pyspark")
    java = tmp_path / "jdk" / "bin" / "java"  # a broken Java: the launcher finds it, it exits at once
    java.parent.mkdir(parents=True)
    java.write_text("#!/bin/sh\necho 'Error: could not create the Java Virtual Machine.' >&2\nexit 1\n")
    java.chmod(0o755)
    env = os.environ | {"JAVA_HOME": str(tmp_path / "jdk")}
    proc = subprocess.run([sys.executable, "-c", START], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 6, proc.stderr[-3000:]
    (message,) = proc.stdout.splitlines()
    assert message.startswith("Spark did not start on master 'local[1]': [JAVA_GATEWAY_EXITED]")
    assert "check that Java 17 runs and the driver's settings (spark.driver_memory, spark.conf)" in message


def test_the_reason_is_the_java_exception_line():
    """py4j's message for a master that never answered (Spark 4.0, spark://127.0.0.1:7999)."""
    py4j = ("An error occurred while calling None.org.apache.spark.sql.classic.SparkSession.\n"
            ": java.lang.IllegalStateException: Cannot call methods on a stopped SparkContext.\n"
            "This stopped SparkContext was created at:\n\norg.apache.spark.api.java.JavaSparkContext.<init>\n")
    assert spark_data._start_error(RuntimeError(py4j)) == (
        "java.lang.IllegalStateException: Cannot call methods on a stopped SparkContext")
    assert spark_data._start_error(RuntimeError("[JAVA_GATEWAY_EXITED] Java gateway process exited.")) == (
        "[JAVA_GATEWAY_EXITED] Java gateway process exited")
    assert spark_data._start_error(RuntimeError("")) == "RuntimeError"


# How Hadoop's local file system fails a task on a full disk (seen on a 40 MB tmpfs: docs/operations.md,
# "What happens when"); the job here fails with that message, raised by the task itself.
FULL = "org.apache.hadoop.fs.FSError: java.io.IOException: No space left on device"


def _failing(spark, message: str):
    from pyspark.sql import functions as F

    return spark.range(3).select(F.raise_error(F.lit(message)).cast("long").alias("x"))


def test_a_spark_write_that_runs_out_of_space_is_a_storage_error_naming_the_path(spark, tmp_path):
    from prodassoc_core.data import StorageError

    out = tmp_path / "runs" / "baskets.parquet"
    out.parent.mkdir()
    with pytest.raises(StorageError, match=r"] cannot write .*/runs/baskets\.parquet: no space left on device"):
        spark_data.write_parquet(_failing(spark, FULL), out)
    assert list(out.parent.iterdir()) == []  # neither the dataset nor its temporary part files


def test_a_spark_job_out_of_space_elsewhere_is_a_storage_error_of_the_cli(spark):
    """A shuffle or checkpoint in Spark's local directory: the CLI's one line (exit 4)."""
    from flows.cli import EXIT_STORAGE, _classify

    with pytest.raises(Exception) as full:
        _failing(spark, FULL).toArrow()
    assert spark_data.spark_storage_errno(full.value) == errno.ENOSPC
    code, message = _classify(full.value)
    assert code == EXIT_STORAGE and message.startswith("storage error: a Spark job could not write: no space left")
    with pytest.raises(Exception) as other:
        _failing(spark, "some other failure").toArrow()
    assert spark_data.spark_storage_errno(other.value) is None and _classify(other.value)[0] is None
