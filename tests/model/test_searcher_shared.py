"""One ScaNN searcher per loaded version, shared by every signature (benchmarks/README.md, "Load peak").

A TensorsToScann op with an empty shared_name builds a searcher private to its kernel, so each
signature that searches held its own copy of the dataset and index (+~250 MiB at 1M x 64).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import support
from model_builder.data.synthetic import clustered_embeddings


@pytest.fixture(scope="module")
def tree_ah_model(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shared")
    items = root / "items.npz"
    np.savez(items, ids=np.arange(3000, dtype=np.int64), vectors=clustered_embeddings(3000, 16, seed=5))
    return support.build(
        root / "models",
        *["--candidates", str(items), "--query", "item", "--algorithm", "tree_ah", "--num-leaves", "30"],
        *["--num-leaves-to-search", "10", "--no-tune", "--no-index-search", "--verify-queries", "100"],
        model_name="tree",
    )


def _tensors_to_scann_names(version_dir: Path) -> list[tuple[str, str]]:
    """(function, shared_name) of every TensorsToScann op in the SavedModel."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel.FromString((version_dir / "saved_model.pb").read_bytes())
    graph = saved.meta_graphs[0].graph_def
    nodes = [("", n) for n in graph.node] + [(f.signature.name, n) for f in graph.library.function for n in f.node_def]
    return [(fn, n.attr["shared_name"].s.decode()) for fn, n in nodes if n.op.endswith("TensorsToScann")]


def test_every_signature_names_the_same_searcher(tree_ah_model):
    found = _tensors_to_scann_names(tree_ah_model)
    # scann's ScannState keeps its own (unshared) recreate_handle method; no signature calls it.
    names = [name for fn, name in found if "recreate_handle" not in fn]
    assert len(names) >= 2, f"serving_default and search_by_vector both search: {found}"
    assert len(set(names)) == 1 and names[0].startswith("scann-"), found


def test_the_shared_searcher_answers_like_scanns_own(tree_ah_model):
    import tensorflow as tf

    from model_builder.scann_import import scann_ops

    module = tf.saved_model.load(str(tree_ah_model))
    queries = clustered_embeddings(64, 16, seed=9)
    served = module.signatures["search_by_vector"](vectors=tf.constant(queries))
    by_ids = module.signatures["serving_default"](ids=tf.constant(np.arange(64, dtype=np.int64)))
    own = scann_ops.searcher_from_module(module.scann)  # scann's unshared path, same variables
    rows, _ = own.search_batched(queries, final_num_neighbors=served["ids"].shape[1])
    assert np.array_equal(served["ids"].numpy(), rows.numpy().astype(np.int64))
    assert by_ids["found"].numpy().all()
