"""The `prodassoc` command line, called in-process: ``rules``. (``import``, ``run``, ``backfill`` and
``top`` end to end, in-process too: tests/pipeline/test_run_report.py, on the run whose report it checks.)"""

from __future__ import annotations

import polars as pl
import pytest

from flows.cli import main
from prodassoc_core.ops.settings import Settings

from conftest import SAMPLE


def test_rules_from_a_basket_csv(tmp_path, capsys):
    csv = tmp_path / "baskets.csv"
    csv.write_text("bread,butter\nbread,butter,jam\nbread,jam\nmilk\nbread,butter\n")
    out = tmp_path / "rules.parquet"
    rc = main(["rules", "--input", str(csv), "--min-support", "0.4", "--min-confidence", "0.75",
               "--output", str(out)])
    assert rc == 0
    rules = pl.read_parquet(out)
    # butter (3 baskets) and jam (2) always come with bread; bread => butter is 3/4, exactly
    # at the threshold; bread => jam is 2/4 and {butter, jam} is in 1 basket only
    got = {(tuple(r["antecedent"]), r["consequent"]): r["confidence"] for r in rules.iter_rows(named=True)}
    assert got == {(("butter",), "bread"): 1.0, (("jam",), "bread"): 1.0, (("bread",), "butter"): 0.75}
    assert "3 rules from 5 baskets" in capsys.readouterr().out


def test_rules_from_canonical_transactions_apply_basket_rules(tmp_path):
    from prodassoc_core.data import importers

    lines = importers.online_retail_transactions([SAMPLE]).collect()
    path = tmp_path / "tx.parquet"
    lines.write_parquet(path)
    out = tmp_path / "rules.parquet"
    assert main(["rules", "--input", str(path), "--min-support", "0.02", "--min-confidence", "0.6",
                 "--max-len", "3", "--output", str(out)]) == 0
    rules = pl.read_parquet(out)
    assert rules.height > 0
    assert not rules["consequent"].is_in(["POST", "DOT", "M"]).any()


@pytest.mark.shared
def test_rules_on_groceries_match_arules(shared_data, tmp_path):
    out = tmp_path / "rules.parquet"
    csv = shared_data / "groceries" / "groceries.csv"
    assert main(["rules", "--input", str(csv), "--min-support", "0.001", "--min-confidence", "0.8",
                 "--max-len", "10", "--output", str(out)]) == 0
    assert pl.read_parquet(out).height == 410


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    rc = main(["rules", "--input", str(tmp_path / "missing.csv"), "--min-support", "0.1",
               "--min-confidence", "0.5", "--output", str(tmp_path / "r.parquet")])
    assert rc == 2
    assert "missing.csv" in capsys.readouterr().err


def test_a_nested_setting_that_is_not_json_is_one_line_naming_the_variable(tmp_path, capsys, monkeypatch):
    from flows import cli

    assert Settings.model_config["env_prefix"] == cli.SETTINGS_ENV_PREFIX
    monkeypatch.setenv("PRODASSOC_TRAINING", "{bad")
    assert cli.main(["--data-dir", str(tmp_path), "status"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("prodassoc: error: invalid setting: $PRODASSOC_TRAINING cannot be read")
    assert "JSONDecodeError" in err[0]
