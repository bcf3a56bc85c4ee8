"""The exported graph: both search signatures, examples, in-graph input errors, warmup, fresh-process reload."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import model_builder.scann_import  # noqa: F401  (Scann ops before loading)
import support
from model_builder import warmup
from model_builder.export import read_build_info


@pytest.fixture(scope="module")
def user_model(synthetic_model):
    return tf.saved_model.load(str(synthetic_model)), read_build_info(synthetic_model)


@pytest.fixture(scope="module")
def item_model(movielens_items_model):
    return tf.saved_model.load(str(movielens_items_model)), read_build_info(movielens_items_model)


def test_signatures_and_their_dtypes(user_model):
    loaded, info = user_model
    assert set(loaded.signatures) == {"serving_default", "search_by_vector", "examples"}
    ids_spec = loaded.signatures["serving_default"].structured_input_signature[1]["ids"]
    vec_spec = loaded.signatures["search_by_vector"].structured_input_signature[1]["vectors"]
    assert ids_spec.dtype == tf.string and ids_spec.shape.as_list() == [None]
    assert vec_spec.dtype == tf.float32 and vec_spec.shape.as_list() == [None, info["serving"]["dimensions"]]
    outputs = loaded.signatures["serving_default"].structured_outputs
    assert outputs["ids"].dtype == tf.string and outputs["ids"].shape.as_list() == [None, 10]
    assert outputs["scores"].dtype == tf.float32


def test_known_ids_return_k_distinct_ids_sorted_by_score(user_model):
    loaded, _ = user_model
    examples = loaded.signatures["examples"]()
    users = examples["query_ids"].numpy()
    out = loaded.signatures["serving_default"](ids=tf.constant(users))
    ids, scores = out["ids"].numpy(), out["scores"].numpy()
    assert ids.shape == (len(users), 10) and ids.dtype == object and ids[0, 0].decode().startswith("i")
    assert all(len(set(row)) == 10 for row in ids.tolist())
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    # The same query through search_by_vector gives the same ids.
    vectors = loaded.query_vectors.numpy()[[np.flatnonzero(loaded.query_ids.numpy() == u)[0] for u in users]]
    by_vector = loaded.signatures["search_by_vector"](vectors=tf.constant(vectors))
    assert (by_vector["ids"].numpy() == ids).all()


def test_a_candidate_vector_finds_itself_first(user_model):
    loaded, _ = user_model
    examples = loaded.signatures["examples"]()
    out = loaded.signatures["search_by_vector"](vectors=examples["candidate_vectors"])
    assert (out["ids"].numpy()[:, 0] == examples["candidate_ids"].numpy()).all()


def test_item_to_item_excludes_the_query_item(item_model):
    loaded, info = item_model
    assert info["serving"]["items_are_queries"] and info["serving"]["query_id_dtype"] == "int64"
    items = loaded.candidate_ids.numpy()[:64]
    out = loaded.signatures["serving_default"](ids=tf.constant(items))
    assert out["ids"].dtype == tf.int64
    assert not (out["ids"].numpy() == items[:, None]).any()


@pytest.mark.parametrize(
    ("signature", "value", "message"),
    [
        ("serving_default", tf.constant(["i1", "definitely-unknown-id"]), "definitely-unknown-id"),
        ("serving_default", tf.constant([], tf.string), "empty batch"),
        ("serving_default", tf.constant(["u1"] * 1025), "batch too large: at most 1024"),
        ("search_by_vector", tf.zeros([1, 15]), "must have shape [batch, 16]"),
        ("search_by_vector", tf.constant([[np.nan] * 16]), "NaN or Inf"),
    ],
)
def test_bad_inputs_fail_inside_the_graph_with_a_clear_message(user_model, signature, value, message):
    loaded, _ = user_model
    fn = loaded.signatures[signature]
    key = next(iter(fn.structured_input_signature[1]))
    if signature == "search_by_vector" and value.shape[-1] != 16:
        fn = loaded.search_vectors  # the signature wrapper checks static shapes in Python; TF Serving does not
        with pytest.raises((tf.errors.InvalidArgumentError, ValueError, TypeError)):
            fn(value)
        return
    with pytest.raises(tf.errors.InvalidArgumentError) as err:
        fn(**{key: value})
    assert message in err.value.message


def test_warmup_file_holds_prediction_logs_that_replay(synthetic_model, user_model):
    logs = warmup.read(synthetic_model)
    signatures = {log.predict_log.request.model_spec.signature_name for log in logs}
    assert signatures == {"serving_default", "search_by_vector", "examples"}
    assert {log.predict_log.request.model_spec.name for log in logs} == {"synthetic"}
    assert 0 < len(logs) <= warmup.MAX_RECORDS
    loaded, _ = user_model
    for log in logs:
        request = log.predict_log.request
        out = loaded.signatures[request.model_spec.signature_name](**{k: tf.make_ndarray(v) for k, v in request.inputs.items()})
        assert out


def test_fresh_process_reload_gives_identical_results(synthetic_model, user_model):
    loaded, _ = user_model
    users = loaded.signatures["examples"]()["query_ids"].numpy()
    here = loaded.signatures["serving_default"](ids=tf.constant(users))["ids"].numpy()
    code = (
        "import json, sys, scann, tensorflow as tf\n"
        "m = tf.saved_model.load(sys.argv[1])\n"
        "ids = m.signatures['examples']()['query_ids']\n"
        "out = m.signatures['serving_default'](ids=ids)['ids'].numpy()\n"
        "print(json.dumps([[x.decode() for x in row] for row in out.tolist()]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(synthetic_model)], capture_output=True, text=True,
                          env=support.ENV, check=True, timeout=300)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [[x.decode() for x in row] for row in here.tolist()]


@pytest.mark.slow
def test_recall_gate_rejects_a_deliberately_bad_index(tmp_path):
    from model_builder.data.synthetic import clustered_embeddings

    path = tmp_path / "items.npz"
    np.savez(path, ids=np.arange(20_000), vectors=clustered_embeddings(20_000, 32, num_clusters=400, seed=5))
    proc = support.run_cli("build", "--out", str(tmp_path / "m"), "--candidates", str(path), "--query", "item",
                           "--algorithm", "tree_ah", "--num-leaves", "400", "--num-leaves-to-search", "1",
                           "--reorder-num-neighbors", "12", "--no-tune", "--verify-queries", "300")
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: recall@10 below target 0.95") and "was not published" in last
    assert not (tmp_path / "m" / "scann_model").exists() or not [
        p for p in (tmp_path / "m" / "scann_model").iterdir() if p.name.isdigit() or p.name.startswith(".tmp-")]
