"""`prodassoc rules` loads only what mining a file needs (issue 14 item 8).

A regression guard on what the command imports, not a timing test: Prefect, pandas (which
pyarrow's dataset reader and ``pa.array`` pull in), Great Expectations, torch and MLflow each
cost more start-up than the mining of a mid-size file. The command runs in a fresh interpreter,
so nothing another test imported counts.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO, SAMPLE

HEAVY = ("prefect", "pandas", "great_expectations", "torch", "mlflow")

CHILD = f"""
import sys
from flows.cli import main
code = main(sys.argv[1:])
print("heavy modules loaded:", sorted(m for m in {HEAVY!r} if m in sys.modules))
sys.exit(code)
"""


def run_child(code: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter (nothing another test imported is loaded), ``env`` added."""
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), **env})


def run_rules(*args: str) -> subprocess.CompletedProcess:
    return run_child(CHILD, "rules", *args)


@pytest.fixture(scope="module")
def transactions(tmp_path_factory):
    from prodassoc_core.data import importers

    path = tmp_path_factory.mktemp("rules-imports") / "transactions.parquet"
    importers.online_retail_transactions([SAMPLE]).collect().write_parquet(path)
    return path


def test_rules_on_transactions_parquet_imports_no_heavy_library(transactions, tmp_path):
    out = tmp_path / "rules.parquet"
    proc = run_rules("--input", str(transactions), "--min-support", "0.02", "--min-confidence", "0.5",
                     "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "heavy modules loaded: []" in proc.stdout, proc.stdout
    assert out.exists()


def test_rules_on_a_basket_csv_imports_no_heavy_library(tmp_path):
    csv = tmp_path / "baskets.csv"
    csv.write_text("bread,butter\nbread,butter,jam\nbread,jam\nmilk\nbread,butter\n")
    proc = run_rules("--input", str(csv), "--min-support", "0.4", "--min-confidence", "0.75",
                     "--output", str(tmp_path / "rules.parquet"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "heavy modules loaded: []" in proc.stdout, proc.stdout


def test_a_refused_rules_run_imports_no_heavy_library(tmp_path):
    """The error path too: the bound is refused and the failure classified without Prefect or MLflow."""
    csv = tmp_path / "big.csv"
    csv.write_text(",".join(f"i{k}" for k in range(40)) + "\ni1,i2\n")
    proc = run_rules("--input", str(csv), "--min-support", "0.5", "--min-confidence", "0", "--max-len", "none",
                     "--max-rules", "10", "--output", str(tmp_path / "rules.parquet"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "more than the bound of 10" in proc.stderr
    assert "heavy modules loaded: []" in proc.stdout, proc.stdout


@pytest.mark.parametrize("support", [0.0, 1e-9, 0.5, 1.0, 1.0000001, -0.1, float("nan"), float("inf")])
@pytest.mark.parametrize("confidence", [0.0, 1.0, 1.1, -1e-9, float("nan")])
@pytest.mark.parametrize("lengths", [(1, None), (2, 4), (3, 3), (3, 2), (5, 1)])
def test_the_rules_options_are_refused_exactly_when_mining_config_refuses_them(support, confidence, lengths):
    """`rules` checks its thresholds without pydantic; it accepts what MiningConfig accepts, and
    refuses the rest with MiningConfig's own error."""
    import argparse

    from pydantic import ValidationError

    from flows.cli import _rule_thresholds
    from prodassoc_core.ops import MiningConfig

    values = dict(min_support=support, min_confidence=confidence, min_len=lengths[0], max_len=lengths[1])
    try:
        expected = MiningConfig(**values)
    except ValidationError:
        expected = None
    if expected is None:
        with pytest.raises(ValidationError):
            _rule_thresholds(argparse.Namespace(**values))
    else:
        got = _rule_thresholds(argparse.Namespace(**values))
        assert {k: getattr(got, k) for k in values} == expected.model_dump()


def test_a_run_on_a_prefect_server_does_not_load_the_server_itself():
    """With PREFECT_API_URL set (a deployment's worker, an operator's shell), `prodassoc run` and
    `backfill` use that server: Prefect's own server app (about 2 s of start-up to import) is
    loaded only to start a temporary one."""
    child = ("import sys\nfrom flows import cli\ncli._start_prefect()\n"
             "print('server loaded:', 'prefect.server.api.server' in sys.modules)")
    proc = run_child(child, PREFECT_API_URL="http://127.0.0.1:9/api")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "server loaded: False" in proc.stdout, proc.stdout
