"""The product graph and the link-prediction GNN on the shipped sample: no leak from after
as_of, cold-start products, determinism, training gain, exact resume, artifacts.

Node features are hashed bags of title words (deterministic, no model to train)."""

from __future__ import annotations

import re
import zlib
from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest
import torch

from prodassoc_core.data import baskets, importers
from prodassoc_core.mining import protocol
from prodassoc_core.models import chain, gnn, graph, mlm, pairs, training
from prodassoc_core.ops.settings import BasketConfig

from conftest import SAMPLE

AS_OF = datetime(2011, 11, 8)
CPU = training.choose_device("cpu")
NEVER_SOLD = "NEW-0001"


def title_vectors(titles: list[str], dim: int = 64) -> np.ndarray:
    """Unit vectors of signed, hashed title words: products sharing words are cosine-similar."""
    out = np.zeros((len(titles), dim), dtype=np.float32)
    for i, title in enumerate(titles):
        for word in re.findall(r"[a-z]+", (title or "").lower()):
            h = zlib.crc32(word.encode())
            out[i, h % dim] += 1.0 if (h >> 16) & 1 else -1.0
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms > 0, norms, 1.0)


def small_gnn(**overrides) -> gnn.GnnConfig:
    values = dict(seed=3, hidden_dim=64, out_dim=64, batch_size=1024, steps_per_epoch=4, learning_rate=1e-2,
                  max_epochs=6, eval_every=1, patience=10, checkpoint_every=2)
    return gnn.GnnConfig(**(values | overrides))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: with two on a busy machine, matmul reductions are split differently
    from run to run and the bit-for-bit resume check would compare rounding noise."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data():
    """The sample's catalog plus one product that was never sold, its baskets and vectors."""
    lines = importers.online_retail_lines([SAMPLE])
    catalog = importers.derive_catalog(lines)
    frame = baskets.baskets(lines, BasketConfig()).collect()
    # A new product of a known series (its title shares words with others), sold nowhere.
    series = catalog.filter(pl.col("title").str.contains("RETROSPOT")).row(0, named=True)["title"]
    catalog = pl.concat([catalog, catalog.head(1).with_columns(product_id=pl.lit(NEVER_SOLD),
                                                               title=pl.lit(f"{series} NEW DESIGN"))])
    return catalog, frame, title_vectors(catalog["title"].to_list())


@pytest.fixture(scope="module")
def pair_cfg():
    return chain.tiny_training_config(7).pairs


@pytest.fixture(scope="module")
def task(data, pair_cfg):
    catalog, frame, _ = data
    return pairs.build_task(catalog, mlm.catalog_texts(catalog), frame, AS_OF, pair_cfg)


@pytest.fixture(scope="module")
def fit_graph(data, pair_cfg):
    catalog, frame, vectors = data
    return graph.fit_window_graph(catalog["product_id"].to_list(), frame, AS_OF, pair_cfg.validation_days, vectors,
                                  graph.GraphConfig())


@pytest.fixture(scope="module")
def trained(fit_graph, task, tmp_path_factory):
    out = tmp_path_factory.mktemp("gnn")
    return gnn.train_gnn(fit_graph, task, small_gnn(), device=CPU, out_dir=out), out


# --- the graph ------------------------------------------------------------------------------------


def _planted(frame: pl.DataFrame, a: str, b: str, at: datetime, n: int = 4) -> pl.DataFrame:
    extra = pl.DataFrame({
        "order_id": [f"PLANT{i}" for i in range(n)], "ordered_at": [at] * n, "items": [[a, b]] * n,
    }).cast(frame.schema)
    return pl.concat([frame, extra]).sort("ordered_at", "order_id")


def test_a_future_copurchase_is_never_an_edge(data, pair_cfg):
    catalog, frame, vectors = data
    ids = catalog["product_id"].to_list()
    a = frame["items"][0][0]
    cfg = graph.GraphConfig()

    def copurchase_edge(baskets_frame: pl.DataFrame) -> bool:
        g = graph.fit_window_graph(ids, baskets_frame, AS_OF, pair_cfg.validation_days, vectors, cfg)
        return g.has_edge(a, NEVER_SOLD, graph.COPURCHASE) or g.has_edge(NEVER_SOLD, a, graph.COPURCHASE)

    # Control: bought together in the fit window, the pair is an edge (so the plant is visible).
    assert copurchase_edge(_planted(frame, a, NEVER_SOLD, AS_OF - timedelta(days=20)))
    # Bought together after as_of: the harness's split keeps it out of the training baskets ...
    future = _planted(frame, a, NEVER_SOLD, AS_OF + timedelta(days=2))
    train, test = protocol.split_baskets(future, AS_OF)
    assert test.height == 4 and not copurchase_edge(train)
    # ... and handing the graph a basket from after as_of is refused, not silently used.
    with pytest.raises(ValueError, match="before as_of"):
        copurchase_edge(future)
    # The held-out tail (the GNN's validation) is not in the graph either.
    assert not copurchase_edge(_planted(frame, a, NEVER_SOLD, AS_OF - timedelta(days=1)))


def test_the_graph_is_deterministic_undirected_and_weighted_as_documented(data, pair_cfg, fit_graph):
    catalog, frame, vectors = data
    ids = catalog["product_id"].to_list()
    fit, _ = pairs.split_fit_validation(frame, AS_OF, pair_cfg.validation_days)
    items = fit["items"].to_list()
    shuffled = [items[i] for i in np.random.default_rng(0).permutation(len(items))]
    again = graph.build_graph(ids, shuffled, vectors, graph.GraphConfig())
    for name in ("edge_index", "edge_weight", "edge_type", "x"):
        assert torch.equal(getattr(again, name), getattr(fit_graph, name)), name

    ei, w, t = fit_graph.edge_index.numpy(), fit_graph.edge_weight.numpy(), fit_graph.edge_type.numpy()
    assert (ei[0] != ei[1]).all() and (w > 0).all()
    assert (np.lexsort((ei[1], ei[0], t)) == np.arange(len(t))).all()  # sorted by (type, source, target)
    forward = {(int(s), int(d), int(k)): float(x) for s, d, k, x in zip(ei[0], ei[1], t, w, strict=True)}
    assert all(forward[(d, s, k)] == x for (s, d, k), x in forward.items())  # both directions, same weight

    # One co-purchase weight against a brute-force count: log1p(n_ab) * min(lift, cap) / cap.
    cfg = graph.GraphConfig()
    s, d, x = fit_graph.edges(graph.COPURCHASE)
    a, b = ids[s[0]], ids[d[0]]
    sets = [set(basket) for basket in items]
    n_ab = sum(a in basket and b in basket for basket in sets)
    lift = n_ab * len(sets) / (sum(a in basket for basket in sets) * sum(b in basket for basket in sets))
    assert n_ab >= cfg.min_copurchase
    assert x[0] == pytest.approx(np.log1p(n_ab) * min(lift, cfg.lift_cap) / cfg.lift_cap, rel=1e-5)
    # Text edges: cosine of the node features, above the threshold.
    s, d, x = fit_graph.edges(graph.TEXT)
    assert len(x) and (x >= cfg.min_text_similarity).all()
    assert np.allclose((vectors[s] * vectors[d]).sum(1), x, atol=1e-5)


def test_each_product_keeps_its_k_heaviest_copurchase_pairs_ties_by_column():
    """graph._top_k_per_row against one lexsort of every entry by (row, weight desc, column):
    random rows, short and long, many tied weights, entries in any order."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(0, 80))
        row, col = rng.integers(0, 6, n), rng.permutation(n)
        weight = rng.integers(0, 4, n).astype(np.float64)  # few values: ties at the k-th weight
        k = int(rng.integers(1, 8))
        order = np.lexsort((col, -weight, row))
        place = np.arange(n) - np.searchsorted(row[order], row[order], side="left")
        expected = np.zeros(n, dtype=bool)
        expected[order[place < k]] = True
        assert (graph._top_k_per_row(row, col, weight, k) == expected).all()


def test_graph_save_load_round_trip(fit_graph, tmp_path):
    fit_graph.save(tmp_path / "g")
    loaded = graph.ProductGraph.load(tmp_path / "g")
    assert loaded.product_ids == fit_graph.product_ids and loaded.config == fit_graph.config
    for name in ("edge_index", "edge_weight", "edge_type", "x"):
        assert torch.equal(getattr(loaded, name), getattr(fit_graph, name)), name
    nodes = pl.read_parquet(tmp_path / "g" / graph.NODES_FILE)
    assert nodes["product_id"].to_list() == fit_graph.product_ids
    data = loaded.to_pyg()
    assert data.num_nodes == fit_graph.num_nodes and data.edge_index.shape == fit_graph.edge_index.shape


# --- the GNN --------------------------------------------------------------------------------------


def test_training_beats_the_untrained_model_on_validation(trained, fit_graph, task):
    result, _ = trained
    assert result.epochs == 6 and result.stop_reason == "completed" and result.best_epoch >= 1
    before, after = result.before["val_ndcg"], result.best_val_ndcg
    assert after > before + 0.02, (before, after)
    assert after == max(h["val_ndcg"] for h in result.history)
    # The saved model is the best state, with its graph.
    model, saved_graph = gnn.load_gnn(result.model_dir)
    assert saved_graph.product_ids == fit_graph.product_ids
    emb = gnn.node_embeddings(model, saved_graph, CPU)
    assert emb.shape == (fit_graph.num_nodes, 64) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    x = saved_graph.x
    assert gnn.validation_scores(model, x, gnn.adjacencies(saved_graph, CPU.torch_device), task, 10) == result.after


def test_a_never_sold_product_gets_text_edges_and_gnn_associations(trained, fit_graph):
    result, _ = trained
    node = fit_graph.index[NEVER_SOLD]
    assert fit_graph.degree(graph.COPURCHASE)[node] == 0
    assert fit_graph.degree(graph.TEXT)[node] > 0
    model, g = gnn.load_gnn(result.model_dir)
    emb = gnn.node_embeddings(model, g, CPU)
    assoc = gnn.gnn_associations(g.product_ids, emb, 10, queries=[NEVER_SOLD])
    assert assoc["associated_product_id"].n_unique() == 10 and assoc["method"].unique().to_list() == ["gnn"]
    assert assoc["rank"].to_list() == list(range(1, 11))
    assert (assoc["score"].diff().drop_nulls() <= 0).all()
    # Its associations come through its text: some of its text neighbours are among them.
    _, neighbours, _ = g.edges(graph.TEXT)
    src, _, _ = g.edges(graph.TEXT)
    text_near = {g.product_ids[j] for j in neighbours[src == node]}
    assert text_near & set(assoc["associated_product_id"].to_list())


class _Crash(RuntimeError):
    pass


def test_resume_after_a_crash_repeats_the_uninterrupted_run_bit_for_bit(trained, fit_graph, task, tmp_path):
    whole, _ = trained

    def crash_at_3(state: gnn.GnnState) -> None:
        if state.epoch == 3:
            raise _Crash("killed after epoch 3")

    with pytest.raises(_Crash):
        gnn.train_gnn(fit_graph, task, small_gnn(), device=CPU, out_dir=tmp_path, on_epoch=crash_at_3)
    resumed = gnn.train_gnn(fit_graph, task, small_gnn(), device=CPU, out_dir=tmp_path)  # from epoch 2's checkpoint
    assert resumed.resumed_from == 2 and resumed.epochs == whole.epochs
    assert resumed.losses == whole.losses and resumed.history == whole.history
    assert resumed.best_val_ndcg == whole.best_val_ndcg
    a = torch.load(whole.model_dir / gnn.MODEL_FILE, weights_only=True)["state_dict"]
    b = torch.load(resumed.model_dir / gnn.MODEL_FILE, weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # A different run in the same directory is refused rather than mixed in.
    with pytest.raises(ValueError, match="different run"):
        gnn.train_gnn(fit_graph, task, small_gnn(learning_rate=5e-3), device=CPU, out_dir=tmp_path)


def test_a_seed_and_matching_nodes_are_required(fit_graph, task, tmp_path):
    with pytest.raises(ValueError, match="seed"):
        gnn.train_gnn(fit_graph, task, small_gnn(seed=None), device=CPU, out_dir=tmp_path)
    reordered = graph.ProductGraph(fit_graph.product_ids[::-1], fit_graph.edge_index, fit_graph.edge_weight,
                                   fit_graph.edge_type, fit_graph.x, fit_graph.config)
    with pytest.raises(ValueError, match="same order"):
        gnn.train_gnn(reordered, task, small_gnn(), device=CPU, out_dir=tmp_path)
