"""The hybrid ranking on the shipped sample: every product (cold ones too), evidence that is
true, explanations that name it, weights tuned on the training window only, and bundles."""

from __future__ import annotations

import re
from datetime import datetime

import numpy as np
import polars as pl
import pytest

from prodassoc_core.data import PRODUCT_ASSOCIATIONS, baskets, importers
from prodassoc_core.mining.methods import DecayedConfig
from prodassoc_core.models import hybrid
from prodassoc_core.ops.settings import BasketConfig, PairConfig


AS_OF = datetime(2011, 11, 8)
PAIRS = PairConfig(validation_days=7, validation_min_baskets=3)


def word_vectors(titles: list[str], dim: int = 512) -> np.ndarray:
    """A cheap real text embedding: hashed title words, unit norm (stable across runs)."""
    import zlib

    out = np.zeros((len(titles), dim), dtype=np.float32)
    for i, t in enumerate(titles):
        for w in re.findall(r"[a-z]+", t.lower()):
            out[i, zlib.crc32(w.encode()) % dim] += 1.0
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms > 0, norms, 1.0)


@pytest.fixture(scope="module")
def data(sample_cut):
    lines = importers.online_retail_lines([sample_cut])
    catalog = importers.derive_catalog(lines)
    # two products that are in the catalog but never sold in the window (cold start)
    catalog = pl.concat([catalog, pl.DataFrame({"product_id": ["NEW1", "NEW2"],
                                                "title": ["JUMBO BAG PINK POLKADOT NEW", "TOTALLY NEW GADGET"]})],
                        how="diagonal_relaxed")
    frame = baskets.baskets(lines, BasketConfig()).collect()
    model = hybrid.HybridModel(text=word_vectors(catalog["title"].to_list()), gnn=None,
                               warm=hybrid.Weights(0.7, 0.3, 0.0), cold=hybrid.Weights(0.0, 1.0, 0.0))
    ranked = hybrid.hybrid_associations(catalog, frame, AS_OF, model, top_k=10, candidates_k=30,
                                        decayed=DecayedConfig())
    table = hybrid.publishable_hybrid(ranked, frame, catalog)
    assert table.schema == PRODUCT_ASSOCIATIONS.polars_schema
    return catalog, frame, model, table


def test_ranking_products_a_chunk_at_a_time_changes_nothing(data):
    catalog, frame, model, _ = data
    signals = hybrid.signals_for(catalog, frame, AS_OF, model, 30, DecayedConfig())
    queries = catalog["product_id"].to_list()[::3]  # every third product: more than three chunks of 97
    args = dict(top_k=10, candidates_k=30, decayed=DecayedConfig(), signals=signals, queries=queries)
    whole = hybrid.hybrid_associations(catalog, frame, AS_OF, model, chunk=len(queries), **args)
    assert whole.equals(hybrid.hybrid_associations(catalog, frame, AS_OF, model, chunk=97, **args))
    assert whole["product_id"].n_unique() == len(queries)


def test_every_catalog_product_gets_associations_cold_ones_flagged(data):
    catalog, frame, _, table = data
    assert set(table["product_id"]) == set(catalog["product_id"])
    assert table.group_by("product_id").len()["len"].max() == 10
    cold = table.filter(pl.col("product_id") == "NEW1")
    assert cold["is_cold_start"].all() and cold["n_antecedent"].eq(0).all() and cold["lift"].is_null().all()
    # its text neighbours are the JUMBO BAG products
    assert any("JUMBO BAG" in t for t in catalog.filter(pl.col("product_id").is_in(cold["associated_product_id"].to_list()))["title"])
    sold = {i for b in frame["items"].to_list() for i in b}
    flagged = set(table.filter(pl.col("is_cold_start"))["product_id"])
    assert flagged == set(catalog["product_id"]) - sold and {"NEW1", "NEW2"} <= flagged


def test_evidence_counts_are_true_and_explanations_name_them(data):
    catalog, frame, _, table = data
    item_sets = [set(b) for b in frame["items"].to_list()]
    titles = dict(zip(catalog["product_id"], catalog["title"]))
    by_title = {v: k for k, v in titles.items()}
    sample = table.filter(pl.col("n_rule") > 0).head(40).vstack(
        table.filter(pl.col("explanation").str.contains("linked through")).head(40))
    assert sample.height > 40
    for row in sample.iter_rows(named=True):
        p, q = row["product_id"], row["associated_product_id"]
        n = sum(1 for s in item_sets if p in s and q in s)
        assert row["n_rule"] == n
        if n:
            orders = "order" if n == 1 else "orders"
            assert f"bought together in {n} {orders}, lift {row['lift']:.1f}" in row["explanation"]
            assert row["cooc_score"] > 0  # the evidence and the co-purchase component agree
        m = re.search(r"linked through (.+?)(;|$)", row["explanation"])
        if m:
            r = by_title[m.group(1)]
            assert sum(1 for s in item_sets if p in s and r in s) >= 2
            assert sum(1 for s in item_sets if q in s and r in s) >= 2
        m = re.search(r"similar titles \((\d\.\d\d)\)", row["explanation"])
        if m:
            assert float(m.group(1)) == pytest.approx(row["text_score"], abs=0.005)
    assert table["explanation"].null_count() == 0 and (table["explanation"].str.len_chars() > 0).all()


def test_weights_are_tuned_on_the_training_window_only(data):
    catalog, frame, model, _ = data
    warm, cold, grid = hybrid.tune_weights(catalog, frame, AS_OF, model, PAIRS, candidates_k=30,
                                           decayed=DecayedConfig(), step=0.25)
    assert grid.height == len(hybrid.weight_grid(0.25, ["cooc", "text"]))
    assert (grid["gnn"] == 0).all()  # no GNN signal: its weight stays 0
    assert grid["ndcg_warm"].max() == pytest.approx(
        grid.filter((pl.col("cooc") == warm.cooc) & (pl.col("text") == warm.text))["ndcg_warm"][0])
    # baskets after as_of cannot be passed in: they would leak
    with pytest.raises(ValueError, match="before as_of"):
        hybrid.tune_weights(catalog, frame, datetime(2011, 10, 20), model, PAIRS, candidates_k=30,
                            decayed=DecayedConfig())
    assert cold.cooc == 0


def test_bundles_are_mutually_associated_with_true_joint_support(data):
    _, frame, _, table = data
    items = frame["items"].to_list()
    found = hybrid.bundles(items, table, min_support=0.01, max_size=3)
    assert found.height > 0
    linked = {(min(p, q), max(p, q)) for p, q in table.select("product_id", "associated_product_id").iter_rows()}
    sets = [set(b) for b in items]
    for row in found.head(20).iter_rows(named=True):
        ps = row["products"]
        assert all((min(a, b), max(a, b)) in linked for i, a in enumerate(ps) for b in ps[i + 1:])
        n = sum(1 for s in sets if set(ps) <= s)
        assert row["n_baskets"] == n and row["support"] == pytest.approx(n / len(items))
    assert found["extra_baskets"].is_sorted(descending=True)  # support-weighted, not raw lift


@pytest.mark.parametrize("min_count", [1, 2, 3])
def test_linked_through_is_the_strongest_common_partner_ties_by_id(min_count):
    """linked_through against its definition, pair by pair: the r != p, q with the largest
    min(n(p,r), n(r,q)) >= min_count, the lowest id among equals; None without one or for a
    product outside the baskets. Chunks of 7 rows, or as many as 30 co-purchases allow, or one."""
    import itertools
    import random

    rng = random.Random(min_count)
    products = [f"P{k:02d}" for k in range(25)]
    items = [rng.sample(products[: rng.choice([8, 25])], rng.randint(1, 5)) for _ in range(300)]
    sets = [set(b) for b in items]
    pairs = [(p, q) for p, q in itertools.permutations(products, 2) if rng.random() < 0.3] + [("NEW", "P01"), ("P01", "NEW")]
    ranked = pl.DataFrame(pairs, schema={"product_id": pl.String, "associated_product_id": pl.String}, orient="row")

    def n(*ids):
        return sum(1 for s in sets if s.issuperset(ids))

    def expected(p, q):
        strength = {r: min(n(p, r), n(r, q)) for r in products if r not in (p, q)}
        best = max(strength.values(), default=0)
        return min(r for r, s in strength.items() if s == best) if p in products and best >= min_count else None

    found = hybrid.linked_through(ranked, items, min_count=min_count, chunk=7)
    assert found == [expected(p, q) for p, q in pairs]
    assert hybrid.linked_through(ranked, items, min_count=min_count, max_entries=30) == found  # a few rows a chunk
    assert hybrid.linked_through(ranked, items, min_count=min_count, max_entries=1) == found  # one row a chunk
    assert sum(f is not None for f in found) > len(pairs) // 2
