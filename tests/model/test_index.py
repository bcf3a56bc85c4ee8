"""The ScaNN rule of thumb: resolution, overrides, and each regime checked against exact search."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import support
from model_builder.data.synthetic import clustered_embeddings
from model_builder.errors import ConfigError
from model_builder.export.version_store import read_build_info
from model_builder.index import config as index_config
from model_builder.index.recall import recall_at_k


@pytest.mark.parametrize(
    ("n", "algorithm"),
    [(19_999, "brute_force"), (20_000, "ah"), (99_999, "ah"), (100_000, "tree_ah"), (1_000_000, "tree_ah")],
)
def test_rule_of_thumb_thresholds(n, algorithm):
    resolved = index_config.resolve(index_config.IndexConfig(), n, 64, 10)
    assert resolved.algorithm == algorithm
    if algorithm != "brute_force":
        assert resolved.reorder_num_neighbors > 10 and resolved.dimensions_per_block == 2
    if algorithm == "tree_ah":
        assert resolved.num_leaves == round(n**0.5)
        assert 1 <= resolved.num_leaves_to_search <= resolved.num_leaves


def test_every_knob_is_overridable():
    cfg = index_config.IndexConfig(
        algorithm="tree_ah",
        num_leaves=50,
        num_leaves_to_search=7,
        dimensions_per_block=4,
        reorder_num_neighbors=64,
        training_sample_size=1000,
    )
    r = index_config.resolve(cfg, 5000, 32, 10)
    assert (
        r.algorithm,
        r.num_leaves,
        r.num_leaves_to_search,
        r.dimensions_per_block,
        r.reorder_num_neighbors,
        r.training_sample_size,
    ) == ("tree_ah", 50, 7, 4, 64, 1000)
    assert "requested" in r.reason


@pytest.mark.parametrize(
    ("cfg", "k", "message"),
    [
        (index_config.IndexConfig(reorder_num_neighbors=10), 10, "must exceed k=10"),
        (index_config.IndexConfig(algorithm="hnsw"), 10, "--algorithm 'hnsw'"),
        (
            index_config.IndexConfig(num_leaves=10, num_leaves_to_search=11, algorithm="tree_ah"),
            10,
            "exceeds --num-leaves",
        ),
        (index_config.IndexConfig(), 6000, "exceeds the number of candidates"),
    ],
)
def test_invalid_overrides_are_rejected_with_the_flag(cfg, k, message):
    with pytest.raises(ConfigError, match=message):
        index_config.resolve(cfg, 5000, 32, k)


@pytest.fixture(scope="module")
def catalogues(tmp_path_factory):
    """Clustered, normalized candidate sets large enough to trigger each regime."""
    folder = tmp_path_factory.mktemp("catalogues")
    out = {}
    for name, n in (("brute_force", 5_000), ("ah", 30_000), ("tree_ah", 120_000)):
        vectors = clustered_embeddings(n, 32, num_clusters=200, seed=n)
        path = folder / f"{name}.npz"
        np.savez(path, ids=np.arange(n, dtype=np.int64) + 1_000_000, vectors=vectors)
        out[name] = (path, vectors)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("regime", ["brute_force", "ah", "tree_ah"])
def test_each_regime_against_exact_search(regime, catalogues, tmp_path):
    path, vectors = catalogues[regime]
    # The rule of thumb's own structure (its knobs tuned), not whatever the index search would pick.
    version = support.build(
        tmp_path, "--candidates", str(path), "--query", "item", "--verify-queries", "300", "--no-index-search"
    )
    info = read_build_info(version)
    assert info["index"]["algorithm"] == regime, info["index"]
    assert info["verification"]["passed"]

    import model_builder.scann_import  # noqa: F401  (registers the ScaNN ops before loading)

    loaded = tf.saved_model.load(str(version))
    queries = clustered_embeddings(200, 32, num_clusters=200, seed=len(vectors)) + 0.01
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    out = loaded.signatures["search_by_vector"](vectors=tf.constant(queries, tf.float32))
    rows = out["ids"].numpy() - 1_000_000
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    recall = recall_at_k(queries, vectors, rows, "dot_product")
    if regime == "brute_force":
        assert recall == 1.0 and (rows == exact).mean() > 0.99
    else:
        assert recall >= 0.95
    scores = out["scores"].numpy()
    assert (np.diff(scores, axis=1) <= 1e-6).all(), "scores must be sorted descending"
