"""Analyst views with names (issue 14, item 3): rules, associations and bundles with titles next
to ids, the score scale per method, the manifest without a reserved word, and `top --product`.

A tiny warehouse built from real functions: rules and associations mined from eight baskets,
published as Parquet partitions for two run dates, a staged catalog and a manifest, then the
real DuckDB refresh."""

from __future__ import annotations

from datetime import date

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.cli import main
from prodassoc_core.data import warehouse
from prodassoc_core.data.contracts import ASSOCIATION_RULES, BUNDLES, CATALOG, MANIFEST, PRODUCT_ASSOCIATIONS
from prodassoc_core.mining.associations import product_associations
from prodassoc_core.mining.rules import mine_rules
from prodassoc_core.models import hybrid
from prodassoc_core.ops.settings import AssociationConfig, MiningConfig, Settings
from prodassoc_core.pipeline import stages

TITLES = {
    "A1": "RED TEA CUP", "A2": "RED SAUCER", "A3": "RED TEAPOT", "B1": "GARDEN GNOME",
    "B2": "GARDEN HOSE", "C1": "LONELY LAMP",  # C1 never bought with anything
}
BASKETS = [["A1", "A2"], ["A1", "A2", "A3"], ["A1", "A2", "A3"], ["A1", "A3"], ["B1", "B2"], ["B1", "B2"],
           ["B1", "B2", "A1"], ["C1"]]
RUNS = (date(2024, 3, 1), date(2024, 3, 2))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("views")
    settings = Settings(data_dir=root)
    catalog = pa.table({"product_id": list(TITLES), "title": list(TITLES.values())})
    (settings.staging_dir / "catalog").mkdir(parents=True)
    pq.write_table(CATALOG.conform(catalog), settings.staging_dir / "catalog" / "catalog.parquet")
    manifest = pa.table({"table": ["catalog"], "file": ["catalog/c.parquet"], "partition": ["catalog-2024-02-29"],
                         "sha256": ["0" * 64], "rows_read": [6], "rows_accepted": [6], "rows_quarantined": [0],
                         "status": ["ingested"], "detail": [None], "run_as_of": [RUNS[0]]})
    pq.write_table(MANIFEST.conform(manifest), settings.manifest_path)
    for i, run in enumerate(RUNS):
        baskets = BASKETS if i else BASKETS[:-2]  # the later run saw more orders
        rules = mine_rules(baskets, MiningConfig(min_support=0.2, min_confidence=0.5, min_len=2, max_len=3))
        assoc = product_associations(baskets, AssociationConfig(method="lift", min_pair_count=1, top_k=5))
        found = hybrid.bundles(baskets, pl.from_arrow(assoc), min_support=0.2, min_item_baskets=1, min_baskets=2)
        found = found.with_columns(titles=pl.col("products").list.eval(pl.element().replace(TITLES)))
        for table, contract in ((rules, ASSOCIATION_RULES), (assoc, PRODUCT_ASSOCIATIONS),
                                (BUNDLES.conform(found.to_arrow()), BUNDLES)):
            warehouse.write_partition(table, contract, settings.warehouse_dir, run)
    stages.refresh_views(settings)
    return root


@pytest.fixture
def con(data_dir):
    with duckdb.connect(str(Settings(data_dir=data_dir).duckdb_path), read_only=True) as c:
        yield c


def test_named_views_put_titles_next_to_ids_for_every_row(con):
    for table in ("association_rules", "product_associations", "bundles"):
        for prefix in ("", "latest_"):
            named, plain = f"{prefix}{table}_named", f"{prefix}{table}"
            assert con.execute(f"SELECT count(*) FROM {named}").fetchone() == con.execute(
                f"SELECT count(*) FROM {plain}").fetchone() != (0,)
    assert con.execute("SELECT DISTINCT run_date FROM latest_product_associations_named").fetchall() == [(RUNS[1],)]
    rows = con.execute("SELECT product_id, product_title, associated_product_id, associated_title "
                       "FROM product_associations_named").fetchall()
    assert all(TITLES[p] == pt and TITLES[q] == qt for p, pt, q, qt in rows)
    rule = con.execute("SELECT antecedent, antecedent_titles, consequent, consequent_title, rule_text "
                       "FROM latest_association_rules_named WHERE len(antecedent) = 2 ORDER BY rule_id LIMIT 1").fetchone()
    antecedent, antecedent_titles, consequent, consequent_title, text = rule
    assert antecedent_titles == [TITLES[p] for p in antecedent]  # same order as the ids
    assert consequent_title == TITLES[consequent]
    assert text == f"{antecedent_titles[0]} + {antecedent_titles[1]} => {consequent_title}"
    bundle = con.execute("SELECT bundle_text, products FROM latest_bundles_named ORDER BY bundle_rank LIMIT 1").fetchone()
    assert bundle[0] == " + ".join(TITLES[p] for p in bundle[1])


def test_every_published_row_carries_its_methods_score_scale(con):
    scales = dict(con.execute("SELECT method, score_scale FROM association_methods").fetchall())
    assert set(scales) == set(warehouse.SCORE_SCALES) >= {"lift", "decayed_damped", "hybrid", "popularity"}
    assert con.execute("SELECT DISTINCT method, score_scale FROM product_associations_named").fetchall() == [
        ("lift", scales["lift"])]


def test_manifest_view_column_needs_no_quoting(con):
    columns = [r[0] for r in con.execute("DESCRIBE manifest").fetchall()]
    assert "table_name" in columns and "table" not in columns
    assert con.execute("SELECT table_name, status FROM manifest").fetchall() == [("catalog", "ingested")]


def test_top_product_by_id_text_and_run_date(data_dir, capsys):
    d = ["--data-dir", str(data_dir)]
    assert main([*d, "top", "--product", "A3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"RED TEAPOT [A3]: associated products of run {RUNS[1]}")
    assert f"method lift; score = {warehouse.SCORE_SCALES['lift']}" in out
    assert "1. RED SAUCER [A2]" in out and "2. RED TEA CUP [A1]  score 1.6; 3 orders together" in out
    # part of a title, any case; an older run
    assert main([*d, "top", "--product", "hose", "--run-date", RUNS[0].isoformat()]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"GARDEN HOSE [B2]: associated products of run {RUNS[0]}") and "GARDEN GNOME [B1]" in out
    # ambiguous text lists the candidates; unknown text and unpublished dates are clear errors
    assert main([*d, "top", "--product", "red"]) == 2
    err = capsys.readouterr().err
    assert all(f"{p}  {TITLES[p]}" in err for p in ("A1", "A2", "A3"))
    assert main([*d, "top", "--product", "no such thing"]) == 2
    assert "no product" in capsys.readouterr().err
    assert main([*d, "top", "--run-date", "2024-01-01"]) == 2
    assert f"published run dates: {RUNS[1]}, {RUNS[0]}" in capsys.readouterr().err
    # a product never bought with another
    assert main([*d, "top", "--product", "LONELY LAMP"]) == 0
    assert "none published" in capsys.readouterr().out


def test_top_without_product_names_both_sides(data_dir, capsys):
    assert main(["--data-dir", str(data_dir), "top", "--limit", "2"]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if " -> " in x]
    assert len(lines) == 2 and all("[" in x and "] -> " in x and "orders" in x for x in lines)


def test_top_says_what_to_do_when_nothing_is_published(tmp_path, capsys):
    from flows.cli import EXIT_NO_DATA

    assert main(["--data-dir", str(tmp_path / "absent"), "top"]) == EXIT_NO_DATA
    assert "no data directory" in capsys.readouterr().err
    assert main(["--data-dir", str(tmp_path), "top", "--product", "A1"]) == EXIT_NO_DATA
    err = capsys.readouterr().err
    assert "nothing published" in err and "prodassoc run --as-of" in err


def test_a_run_whose_files_went_missing_is_named_and_the_views_skip_it(data_dir, tmp_path, capsys):
    """A published file deleted or changed by hand: that run is no longer committed (a backfill
    redoes it); the views are rebuilt without it, and `top` says which run it is not showing and
    how to redo it. With no intact run left, it says that, not 'nothing published'."""
    import shutil

    from flows.cli import EXIT_NO_DATA

    copy = tmp_path / "data"
    shutil.copytree(data_dir, copy)
    settings = Settings(data_dir=copy)
    (warehouse.partition_dir(settings.warehouse_dir, "bundles", RUNS[1]) / warehouse.DATA_FILE).unlink()
    assert main(["--data-dir", str(copy), "top", "--limit", "1"]) == 0
    out, err = capsys.readouterr()
    assert f"top associations of run {RUNS[0]}" in out
    assert (f"run {RUNS[1]} is not shown: its bundles file is missing or changed "
            f"(warehouse/bundles/run_date={RUNS[1]}/data.parquet); redo it: prodassoc run --as-of {RUNS[1]}") in err
    with stages.open_views(settings) as con:
        assert con.execute("SELECT max(run_date) FROM latest_product_associations").fetchone()[0] == RUNS[0]

    partition = warehouse.partition_dir(settings.warehouse_dir, "association_rules", RUNS[0]) / warehouse.DATA_FILE
    partition.write_bytes(partition.read_bytes() + b"x")  # changed: not the size its commit recorded
    assert main(["--data-dir", str(copy), "top"]) == EXIT_NO_DATA
    err = capsys.readouterr().err
    assert "no intact run" in err and f"run {RUNS[0]}: its association_rules file is missing or changed" in err
