"""The evaluation report says how many products each column scores and which methods were not
evaluated, and why (issue 14, item 6, the evaluation report's part)."""

from __future__ import annotations

import math
from datetime import date

import polars as pl

from prodassoc_core.evaluation import harness, report
from prodassoc_core.ops.settings import EvaluationConfig, Settings


def results() -> pl.DataFrame:
    base = {"ndcg_all": 0.3, "ndcg_warm": 0.35, "ndcg_cold": 0.1, "hr_all": 0.5, "recall_all": 0.4,
            "bc_hr": 0.2, "bc_ndcg": 0.1, "n_all": 1200, "n_warm": 1000, "n_cold": 200, "bc_n": 5000}
    return pl.DataFrame([
        {"method": "count", **base},
        {"method": "teacher", **base, "bc_hr": math.nan, "bc_ndcg": math.nan},  # reranks scored products only
        {"method": "student", **base, "ndcg_cold": 0.2},
    ])


def test_counts_row_gives_what_each_column_scores():
    md = report.markdown_table(results())
    lines = md.splitlines()
    assert lines[2] == "| *n scored* | 1,200 | 1,000 | 200 | 1,200 | 1,200 | 5,000 | 5,000 |"
    assert lines[4].startswith("| teacher |") and lines[4].endswith("| – | – |")
    # methods that scored different numbers of products show the range; a column nobody scored shows –
    mixed = results().with_columns(pl.when(pl.col("method") == "student").then(1100).otherwise(pl.col("n_all"))
                                   .alias("n_all"))
    assert report.scored_counts(mixed)[0] == "1,100–1,200"
    nobody = results().with_columns(pl.lit(math.nan).alias("bc_hr"))
    assert report.scored_counts(nobody)[5] == "–"


def test_report_lists_skipped_methods_with_their_reason():
    skipped = {"gnn": "no champion GNN", "mlm": "no prodassoc-mlm@champion registered (run `prodassoc train`)"}
    md, page = report.render(results(), {"test": "baskets from 2011-11-01"}, skipped)
    assert "## Not evaluated\n\n- gnn: no champion GNN\n- mlm: no prodassoc-mlm@champion registered" in md
    assert report.COUNT_NOTE in md
    assert "<h2>Not evaluated</h2><ul><li>gnn: no champion GNN</li>" in page
    assert '<tr class="counts"><td>n scored</td><td>1,200</td>' in page
    # no methods evaluated at all: still a report that says why, no plot
    md, page = report.render(pl.DataFrame(), {"test": "x"}, skipped)
    assert "- gnn: no champion GNN" in md and "data:image/png" not in page


def test_harness_returns_why_a_model_method_is_skipped_and_reports_it(tmp_path):
    settings = Settings(data_dir=tmp_path, evaluation=EvaluationConfig(methods=("count", "student", "gnn")))
    split = harness.Split(as_of=date(2011, 11, 1), end=date(2011, 11, 8), train_path=tmp_path / "none.parquet",
                          test_items=[["A", "B"]], train_items=[["A", "B"]], relevant={}, warm={"A", "B"},
                          popular=["A", "B"])
    skipped = {m: harness.publish_method(settings, split, m) for m in ("student", "gnn")}  # empty registry
    assert skipped["student"] == "no prodassoc-student@champion registered (run `prodassoc train`)"
    assert isinstance(skipped["gnn"], str) and skipped["gnn"]
    md_path, html_path = harness.write_report(settings, split, results(), skipped)
    md = md_path.read_text()
    assert "| *n scored* | 1,200 |" in md
    assert f"- student: {skipped['student']}" in md and f"- gnn: {skipped['gnn']}" in md
    assert "Not evaluated" in html_path.read_text()
