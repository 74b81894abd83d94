"""The nightly run report (issue 14, item 6): one self-contained HTML page per run.

Unit tests of prodassoc_core/pipeline/run_report.py on tiny frames (escaping, the network picture, the diff
of two runs, first run), then one nightly on three weeks of the shipped sample (conftest's ``sample_cut``;
no models trained) that writes the page, links it from the artifact and returns it; rendered in headless
Chromium, network off, where one is installed (skipped otherwise, saying so). The same run is what a nightly
without a champion publishes (the classic method, no embeddings).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from datetime import date, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest

from prodassoc_core.data.contracts import PRODUCT_EMBEDDINGS, PUBLISHED_TABLES
from prodassoc_core.models import tracking
from prodassoc_core.ops.settings import Settings
from prodassoc_core.pipeline import run_report, run_summary, stages

from conftest import dom, find_browser

DAY = date(2024, 3, 2)
AS_OF = date(2011, 10, 22)  # the end-to-end run: a Saturday, three weeks into the sample
SERVED = {
    "served": "warm: classic count; cold: none", "segments": {"warm": "classic", "cold": "classic"},
    "classic": "count", "classic_reason": "count, the floor", "reason": "no student passed the gate",
    "student_model": None, "gnn_model": None, "model_as_of": None,
}
HYBRID = {
    **SERVED, "served": "warm: hybrid; cold: hybrid", "segments": {"warm": "hybrid", "cold": "hybrid"},
    "student_model": "models:/prodassoc-student/3", "gnn_model": "models:/prodassoc-gnn/2", "model_as_of": "2024-03-01",
}
INGEST = {
    "files_seen": 2, "files_ingested": 2, "files_skipped": 0, "files_failed": 0, "files_duplicate": 0,
    "files_deferred": 1, "rows_read": 10, "rows_accepted": 7, "rows_quarantined": 3,
    "partitions": [
        {"table": "transactions", "rows_read": 8, "rows_accepted": 5, "rows_quarantined": 3,
         "top_rules": [("not_null:order_id", 2), ("unknown_product", 1)]},
        {"table": "catalog", "rows_read": 2, "rows_accepted": 2, "rows_quarantined": 0, "top_rules": []},
    ],
}
PUBLISHED = [{"table": "product_associations", "rows": 6, "path": "/w/product_associations/run_date=2024-03-02/data.parquet"}]
TITLES = {"A": "TEA <CUP> & SAUCER", "B": "SAUCER", "C": "SPOON", "D": "JAR"}


def pairs(rows: list[tuple[str, str, int, float]], explanation: str | None = None) -> pl.DataFrame:
    """A product_associations frame from (product, associated, rank, score) rows."""
    return pl.DataFrame(
        [(a, b, r, s, "count", int(s), 2.0, 0.5, explanation, "classic", False) for a, b, r, s in rows],
        schema=dict(zip(run_report.PAIR_COLUMNS,
                        [pl.String, pl.String, pl.Int32, pl.Float64, pl.String, pl.Int64, pl.Float64, pl.Float64,
                         pl.String, pl.String, pl.Boolean])),
        orient="row",
    )


CURRENT = pairs([("A", "B", 1, 9.0), ("A", "C", 2, 5.0), ("B", "A", 1, 9.0), ("B", "C", 2, 3.0),
                 ("C", "D", 1, 4.0), ("C", "A", 2, 2.0)])
PREVIOUS = pairs([("A", "C", 1, 6.0), ("A", "B", 2, 5.0), ("B", "A", 1, 9.0), ("B", "D", 2, 1.0),
                  ("C", "D", 1, 4.0)])
BUNDLES = pl.DataFrame({
    "bundle_rank": [2, 1], "products": [["B", "C"], ["A", "B"]], "titles": [["SAUCER", "SPOON"], [TITLES["A"], "SAUCER"]],
    "n_baskets": [4, 9], "lift": [3.0, 5.5], "explanation": ["both in 4 orders", "both in 9 orders <together>"],
})


def test_top_pairs_shows_a_mutual_pair_once_strongest_first():
    top = run_report.top_pairs(CURRENT)
    assert top.select("product_id", "associated_product_id").rows() == [("A", "B"), ("C", "D")]
    assert run_report.top_pairs(CURRENT, n=1).height == 1


def test_diff_of_two_runs_new_dropped_and_shifted():
    diff = run_report.diff_runs(CURRENT, PREVIOUS, date(2024, 3, 1), k=10)
    assert diff.new.select("product_id", "associated_product_id").rows() == [("B", "C"), ("C", "A")]
    assert diff.dropped.select("product_id", "associated_product_id").rows() == [("B", "D")]
    # A->B moved up 2 -> 1, A->C down 1 -> 2; B->A and C->D did not move
    assert diff.shifts.rows() == [("A", "B", 2, 1, 1), ("A", "C", 1, 2, -1)]
    assert diff.unchanged == 2
    # top-1 lists only: A->C leaves, A->B enters
    top1 = run_report.diff_runs(CURRENT, PREVIOUS, date(2024, 3, 1), k=1)
    assert top1.new.select("product_id", "associated_product_id").rows() == [("A", "B")]
    assert top1.dropped.select("product_id", "associated_product_id").rows() == [("A", "C")]
    assert top1.shifts.is_empty() and top1.unchanged == 2


def test_the_page_is_escaped_and_self_contained():
    page = run_report.render(DAY, SERVED, INGEST, PUBLISHED, CURRENT, BUNDLES, TITLES, (date(2024, 3, 1), PREVIOUS))
    assert "TEA &lt;CUP&gt; &amp; SAUCER" in page and "<CUP>" not in page
    assert "both in 9 orders &lt;together&gt;" in page
    # nothing loaded from elsewhere: no scripts, stylesheets, images, fonts or imports
    assert not re.search(r"<script|<link|<img|<iframe|\bsrc=|\bhref=|url\(|@import", page, re.I)
    assert page.count("<svg") == 1 and page.count("</svg>") == 1
    assert "Served: <code>classic:count</code>" in page and "count, the floor" in page
    assert "<code>not_null:order_id</code></td><td>2</td>" in page and "<td>transactions</td><td>8</td><td>5</td><td>3</td>" in page
    assert "Compared with the run of 2024-03-01" in page and "2 pairs new, 1 dropped, 2 moved rank, 2 unchanged" in page
    assert page.index("both in 9 orders") < page.index("both in 4 orders")  # bundles by rank
    # a classic row has no explanation: one line from its figures instead
    assert "bought together in 9 orders; 2.0x as often as chance" in page
    assert run_report.render(DAY, SERVED, INGEST, PUBLISHED, CURRENT, BUNDLES, TITLES,
                             (date(2024, 3, 1), PREVIOUS)) == page  # deterministic


def test_first_run_and_hybrid_models_and_no_quarantine():
    clean = {**INGEST, "rows_quarantined": 0, "partitions": [{**p, "rows_quarantined": 0, "top_rules": []}
                                                              for p in INGEST["partitions"]]}
    explained = pairs([("A", "B", 1, 0.9), ("B", "A", 1, 0.8)], explanation="often bought with it & similar")
    page = run_report.render(DAY, HYBRID, clean, PUBLISHED, explained, None, TITLES)
    assert "First run: no committed run before 2024-03-02" in page
    assert "models:/prodassoc-student/3" in page and "models:/prodassoc-gnn/2" in page and "hybrid[warm,cold]" in page
    assert "often bought with it &amp; similar" in page and "Nothing quarantined this run." in page
    assert "no bundles published this run" in page


def test_network_is_a_circle_of_the_top_products_with_their_associations():
    assert run_report.network_products(CURRENT, n=3) == ["A", "B", "C"]
    assert run_report.network_edges(CURRENT, ["A", "B", "C"]) == [("A", "B", 9.0), ("A", "C", 5.0), ("B", "C", 3.0)]
    svg = run_report.network_svg(CURRENT, TITLES, n=3)
    assert svg.count("<circle") == 3 and svg.count("<line") == 3 and "TEA &lt;CUP&gt;" in svg
    assert run_report.network_svg(CURRENT.head(0), TITLES).startswith("<p>No associations")


# --- end to end: a nightly on a week of the sample ---------------------------------------------------


@pytest.fixture(scope="module")
def nightly_run(tmp_path_factory, prefect_harness, sample_cut):
    """``prodassoc import`` of the sample, then ``prodassoc run`` on three weeks of it, in-process:
    (settings, what the run printed, the report's path).

    (A shorter window is slower: with few baskets the default support keeps ~10x more rules.)"""
    from flows.cli import main

    settings = Settings(data_dir=tmp_path_factory.mktemp("report"))
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["--data-dir", str(settings.data_dir), "import", "online-retail", str(sample_cut)]) == 0
    assert list(settings.landing_dir.glob("transactions/dt=*/*.parquet"))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["--data-dir", str(settings.data_dir), "run", "--as-of", AS_OF.isoformat()]) == 0
    last = printed.getvalue().splitlines()[-1]
    assert last.startswith("report: "), printed.getvalue()
    return settings, printed.getvalue(), Path(last.removeprefix("report: "))


def _served(settings: Settings) -> dict:
    return stages.served_summary(stages.run_dir(settings, AS_OF) / stages.BASKETS_FILE)


def test_the_nightly_writes_the_report_and_links_it(nightly_run):
    settings, printed, report = nightly_run
    assert "transactions:" in printed and "published product_associations" in printed
    served = _served(settings)
    assert f"served: {served['served']}\n  why: {served['reason']}\n" in printed  # what it served, and why
    assert report == settings.reports_dir / f"nightly_as_of={AS_OF}.html" and report.is_file()
    page = report.read_text()
    assert f"Served: <code>{run_summary.served_model(_served(settings))}</code>" in page
    assert "<svg" in page and f"First run: no committed run before {AS_OF}" in page
    assert "PAPER CHAIN KIT 50&#x27;S CHRISTMAS" in page  # a title of the sample's top pairs, escaped
    # where the window's lines went: each under the first basket rule that dropped it
    assert re.search(r"<h3>Baskets</h3><p>[\d,]+ lines, [\d,]+ kept in [\d,]+ baskets; dropped: [\d,]+ return "
                     r"\(quantity &lt;= 0\); [\d,]+ price &lt;= 0; [\d,]+ non-product code \(POST [\d,]+", page)
    assert not list(settings.reports_dir.glob(".*.tmp"))  # written atomically, nothing left over

    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"nightly-{AS_OF}"])))
    assert any(str(report) in a.data for a in artifacts)


def test_without_a_champion_the_classic_method_is_published_and_no_embeddings(nightly_run):
    """No model was ever trained in this data dir: the nightly publishes the classic method chosen
    for the catalog (no cold-start rows, no explanations), every row says so, no embeddings."""
    settings, _, _ = nightly_run
    assert stages.is_published(settings, AS_OF)
    published = {p.parent.parent.name for p in settings.warehouse_dir.glob(f"*/run_date={AS_OF}/data.parquet")}
    assert published == set(PUBLISHED_TABLES) | {"bundles"}
    assert not (settings.warehouse_dir / PRODUCT_EMBEDDINGS.name).exists()
    table = pl.read_parquet(settings.warehouse_dir / "product_associations" / f"run_date={AS_OF}" / "data.parquet")
    # the selection this run used: the newest made for a date up to AS_OF (a later backfill adds its own)
    made = sorted(p for p in (settings.data_dir / "selection").glob("as_of=*.json") if p.stem <= f"as_of={AS_OF}")
    chosen = json.loads(made[-1].read_text())
    assert table["method"].unique().to_list() == [chosen["chosen"]["method"]]
    assert table["explanation"].null_count() == table.height
    assert table["source"].unique().to_list() == ["classic"] and table["student_model"].null_count() == table.height
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    assert "latest_association_rules" in views and "product_embeddings" not in views
    (run,) = [r for r in tracking.runs(settings.tracking_uri, run_summary.NIGHTLY_EXPERIMENT)
              if r.data.params["as_of"] == AS_OF.isoformat()]
    assert "embedding_model" not in run.data.params


def test_the_next_run_compares_with_the_previous_committed_one(nightly_run):
    from flows.cli import main

    settings, _, _ = nightly_run
    printed = io.StringIO()
    next_day = AS_OF + timedelta(days=1)
    with contextlib.redirect_stdout(printed):  # AS_OF is published: skipped; the day after runs
        assert main(["--data-dir", str(settings.data_dir), "backfill", "--start", AS_OF.isoformat(),
                     "--end", next_day.isoformat()]) == 0
    later = settings.reports_dir / f"nightly_as_of={next_day}.html"
    assert f"as_of {next_day}: published" in printed.getvalue() and f"report {later}" in printed.getvalue()
    assert f"skipped (already published): {AS_OF}" in printed.getvalue()
    page = later.read_text()
    # the shop sold nothing on Saturday AS_OF: the same baskets, the same lists
    assert f"Compared with the run of {AS_OF}" in page and "0 pairs new, 0 dropped, 0 moved rank" in page


def test_top_prints_the_latest_associations(nightly_run, capsys):
    from flows.cli import main

    settings, _, _ = nightly_run
    assert main(["--data-dir", str(settings.data_dir), "top", "--limit", "3"]) == 0
    assert len([line for line in capsys.readouterr().out.splitlines() if " -> " in line]) == 3


def test_the_report_reads_in_a_headless_browser_offline(nightly_run):
    browser = find_browser()
    if browser is None:
        pytest.skip("no headless Chromium on this machine; install one: apt-get install -y chromium")
    _, _, report = nightly_run
    text = dom(browser, report)
    assert "What was served" in text and "Top associations" in text and "<svg" in text
    assert "PAPER CHAIN KIT 50'S CHRISTMAS" in text
