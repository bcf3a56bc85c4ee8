"""The exported graph: batching-safe signatures (per-row `found`), examples by index, warmup, fresh-process reload.

TF Serving with --enable_batching merges concurrent requests into one Session::Run and gives
them one status (tensorflow_serving/batching/batching_session.cc ProcessBatch), so these tests
hold the graph to: a batch input on every signature, one output row per input row, and no
error that depends on a row's content.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import model_builder.scann_import  # noqa: F401  (Scann ops before loading)
import support
from model_builder import verify
from model_builder.compat import ops
from model_builder.contract import MAX_EXAMPLES
from model_builder.export import warmup
from model_builder.export.version_store import read_build_info

EXAMPLE_INDEX = tf.range(MAX_EXAMPLES, dtype=tf.int64)


@pytest.fixture(scope="module")
def user_model(synthetic_model):
    return tf.saved_model.load(str(synthetic_model)), read_build_info(synthetic_model)


@pytest.fixture(scope="module")
def item_model(movielens_items_model):
    return tf.saved_model.load(str(movielens_items_model)), read_build_info(movielens_items_model)


@pytest.fixture(scope="module")
def fallback_model(fallback_model_dir):
    return tf.saved_model.load(str(fallback_model_dir)), read_build_info(fallback_model_dir)


def _examples(loaded) -> dict:
    out = {k: v.numpy() for k, v in loaded.signatures["examples"](index=EXAMPLE_INDEX).items()}
    return {k: v[out["found"]] for k, v in out.items()}


def test_signatures_and_their_dtypes(user_model):
    loaded, info = user_model
    assert set(loaded.signatures) == {"serving_default", "search_by_vector", "examples"}
    ids_spec = loaded.signatures["serving_default"].structured_input_signature[1]["ids"]
    vec_spec = loaded.signatures["search_by_vector"].structured_input_signature[1]["vectors"]
    index_spec = loaded.signatures["examples"].structured_input_signature[1]["index"]
    assert ids_spec.dtype == tf.string and ids_spec.shape.as_list() == [None]
    assert vec_spec.dtype == tf.float32 and vec_spec.shape.as_list() == [None, info["serving"]["dimensions"]]
    assert index_spec.dtype == tf.int64 and index_spec.shape.as_list() == [None]
    for name in ("serving_default", "search_by_vector"):
        outputs = loaded.signatures[name].structured_outputs
        assert outputs["ids"].dtype == tf.string and outputs["ids"].shape.as_list() == [None, 10]
        assert outputs["scores"].dtype == tf.float32 and outputs["found"].dtype == tf.bool
        assert outputs["found"].shape.as_list() == [None]
    examples = loaded.signatures["examples"].structured_outputs
    assert set(examples) == {"query_ids", "candidate_ids", "candidate_vectors", "found"}
    assert info["serving"]["unknown_ids"] == "error" and info["serving"]["fallback_ids"] is None


def test_the_graph_holds_no_check_that_can_fail_a_merged_batch(synthetic_model, movielens_items_model):
    """Assert/CheckNumerics would fail every request merged with one bad row (the bug of issue 10)."""
    for version_dir in (synthetic_model, movielens_items_model):
        used = set(ops.saved_model_ops(version_dir))
        assert not used & {"Assert", "CheckNumerics", "PrintV2"}, (version_dir, sorted(used))


def test_known_ids_return_k_distinct_ids_sorted_by_score(user_model):
    loaded, _ = user_model
    users = _examples(loaded)["query_ids"]
    out = loaded.signatures["serving_default"](ids=tf.constant(users))
    ids, scores = out["ids"].numpy(), out["scores"].numpy()
    assert out["found"].numpy().all()
    assert ids.shape == (len(users), 10) and ids.dtype == object and ids[0, 0].decode().startswith("i")
    assert all(len(set(row)) == 10 for row in ids.tolist())
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    # The same query through search_by_vector (no user: nothing excluded) gives the nearest items;
    # serving_default gives the nearest the user does not have, so every item of the vector's
    # answer outside the user's history is in the id's answer, and none of the history is.
    rows = [np.flatnonzero(loaded.query_ids.numpy() == u)[0] for u in users]
    by_vector = loaded.signatures["search_by_vector"](vectors=tf.constant(loaded.query_vectors.numpy()[rows]))
    assert by_vector["found"].numpy().all()
    candidates = loaded.candidate_ids.numpy()
    for row, served, nearest in zip(rows, ids, by_vector["ids"].numpy()):
        history = {candidates[c] for c in loaded.seen_items.numpy()[row] if c < len(candidates)}
        assert history and not history & set(served)
        assert set(nearest) - history <= set(served)


def test_a_candidate_vector_finds_itself_first(user_model):
    loaded, _ = user_model
    examples = _examples(loaded)
    out = loaded.signatures["search_by_vector"](vectors=tf.constant(examples["candidate_vectors"]))
    assert (out["ids"].numpy()[:, 0] == examples["candidate_ids"]).all()


def test_item_to_item_excludes_the_query_item(item_model):
    loaded, info = item_model
    assert info["serving"]["items_are_queries"] and info["serving"]["query_id_dtype"] == "int64"
    items = loaded.candidate_ids.numpy()[:64]
    out = loaded.signatures["serving_default"](ids=tf.constant(items))
    assert out["ids"].dtype == tf.int64
    assert not (out["ids"].numpy() == items[:, None]).any()


def _alone(fn, key, rows) -> list[dict]:
    return [{k: v.numpy() for k, v in fn(**{key: tf.constant(rows[i : i + 1])}).items()} for i in range(len(rows))]


@pytest.mark.parametrize("kind", ["string-ids", "int64-ids"])
def test_unknown_ids_are_not_found_and_leave_the_other_rows_as_if_alone(user_model, item_model, kind):
    loaded, _ = user_model if kind == "string-ids" else item_model
    known = _examples(loaded)["query_ids"][:4]
    unknown = (
        np.array([b"no-such-user", b""], dtype=object) if kind == "string-ids" else np.array([10**12, -3], np.int64)
    )
    batch = np.concatenate([known[:2], unknown[:1], known[2:], unknown[1:]])
    fn = loaded.signatures["serving_default"]
    out = {k: v.numpy() for k, v in fn(ids=tf.constant(batch)).items()}
    assert out["found"].tolist() == [True, True, False, True, True, False]
    padding = b"" if kind == "string-ids" else -1
    assert (out["ids"][[2, 5]] == padding).all() and np.isneginf(out["scores"][[2, 5]]).all()
    for row, alone in zip([0, 1, 3, 4], _alone(fn, "ids", known)):
        assert alone["found"][0] and (out["ids"][row] == alone["ids"][0]).all()
        np.testing.assert_allclose(out["scores"][row], alone["scores"][0], rtol=1e-5, atol=1e-6)


def test_non_finite_vectors_are_not_found_and_leave_the_other_rows_as_if_alone(user_model):
    loaded, info = user_model
    good = _examples(loaded)["candidate_vectors"][:3]
    dim = info["serving"]["dimensions"]
    bad = np.ones((3, dim), np.float32)
    bad[0, 1], bad[1, :], bad[2, -1] = np.nan, np.inf, -np.inf
    batch = np.stack([good[0], bad[0], good[1], bad[1], bad[2], good[2]])
    fn = loaded.signatures["search_by_vector"]
    out = {k: v.numpy() for k, v in fn(vectors=tf.constant(batch)).items()}
    assert out["found"].tolist() == [True, False, True, False, False, True]
    assert (out["ids"][[1, 3, 4]] == b"").all() and np.isneginf(out["scores"][[1, 3, 4]]).all()
    for row, alone in zip([0, 2, 5], _alone(fn, "vectors", good)):
        assert (out["ids"][row] == alone["ids"][0]).all()


def test_fallback_model_answers_unknown_ids_with_the_most_popular_items(fallback_model, string_id_csv):
    loaded, info = fallback_model
    assert info["serving"]["unknown_ids"] == "fallback"
    fallback = info["serving"]["fallback_ids"]
    # The k items with the most positive interactions in the training data (ties in id order).
    rows = [line.split(",") for line in string_id_csv.read_text().splitlines()[1:]]
    counts: dict[str, int] = {}
    for _, item, _, _ in rows:
        counts[item] = counts.get(item, 0) + 1
    assert fallback == sorted(counts, key=lambda item: (-counts[item], item))[:10]
    known = _examples(loaded)["query_ids"][:1]
    out = {
        k: v.numpy() for k, v in loaded.signatures["serving_default"](ids=tf.constant([known[0], b"new-user"])).items()
    }
    assert out["found"].tolist() == [True, False]
    assert [x.decode() for x in out["ids"][1]] == fallback and np.isneginf(out["scores"][1]).all()
    assert out["ids"][0].tolist() != out["ids"][1].tolist()


def test_examples_by_index_mark_indices_out_of_range_not_found(user_model):
    loaded, info = user_model
    out = {
        k: v.numpy()
        for k, v in loaded.signatures["examples"](index=tf.constant([0, 7, 8, -1, 63, 1000], tf.int64)).items()
    }
    assert out["found"].tolist() == [True, True, False, False, False, False]  # 8 examples (the default)
    assert (out["query_ids"][2:] == b"").all() and (out["candidate_ids"][2:] == b"").all()
    assert (
        out["candidate_vectors"].shape == (6, info["serving"]["dimensions"]) and not out["candidate_vectors"][2:].any()
    )
    assert out["query_ids"][0] != b"" and out["candidate_ids"][1] != b""


def test_empty_batches_answer_empty(user_model):
    """TF Serving runs a lone empty request through the graph; it must not fail."""
    loaded, info = user_model
    out = loaded.signatures["serving_default"](ids=tf.constant([], tf.string))
    assert out["ids"].shape == (0, 10) and out["found"].shape == (0,)
    out = loaded.signatures["search_by_vector"](vectors=tf.zeros([0, info["serving"]["dimensions"]]))
    assert out["scores"].shape == (0, 10)
    empty = loaded.signatures["examples"](index=tf.constant([], tf.int64))
    assert empty["candidate_vectors"].shape == (0, info["serving"]["dimensions"])


@pytest.mark.parametrize(("ids", "source"), [(np.array([3, -5, 7]), "negative"), (np.array(["a", "", "c"]), "empty")])
def test_builder_rejects_candidate_ids_equal_to_the_padding(tmp_path, ids, source):
    path = tmp_path / "items.npz"
    np.savez(path, ids=ids, vectors=np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32))
    proc = support.run_cli(
        "build", "--out", str(tmp_path / "m"), "--candidates", str(path), "--query", "item", "-k", "1"
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: {path}: ") and (
        "negative" in line if source == "negative" else "empty string" in line
    )


def test_warmup_records_are_valid_batching_tasks_for_every_signature(synthetic_model, user_model):
    """Each record: a batch input (TF Serving's batcher rejects a Run without one), <= max_batch_size rows."""
    loaded, info = user_model
    logs = warmup.read(synthetic_model)
    signatures = {log.predict_log.request.model_spec.signature_name for log in logs}
    assert signatures == {"serving_default", "search_by_vector", "examples"}
    assert {log.predict_log.request.model_spec.name for log in logs} == {"synthetic"}
    assert 0 < len(logs) <= warmup.MAX_RECORDS
    for log in logs:
        request = log.predict_log.request
        inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        assert inputs and {v.ndim >= 1 for v in inputs.values()} == {True}
        assert len({v.shape[0] for v in inputs.values()}) == 1
        assert next(iter(inputs.values())).shape[0] <= info["serving"]["max_batch_size"]
        out = loaded.signatures[request.model_spec.signature_name](**inputs)
        assert out["found"].numpy().any()


def test_fresh_process_reload_gives_identical_results(synthetic_model, user_model):
    loaded, _ = user_model
    users = _examples(loaded)["query_ids"]
    here = loaded.signatures["serving_default"](ids=tf.constant(users))["ids"].numpy()
    code = (
        "import json, sys, scann, tensorflow as tf\n"
        "m = tf.saved_model.load(sys.argv[1])\n"
        "ex = m.signatures['examples'](index=tf.range(64, dtype=tf.int64))\n"
        "ids = tf.boolean_mask(ex['query_ids'], ex['found'])\n"
        "out = m.signatures['serving_default'](ids=ids)['ids'].numpy()\n"
        "print(json.dumps([[x.decode() for x in row] for row in out.tolist()]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(synthetic_model)],
        capture_output=True,
        text=True,
        env=support.ENV,
        check=True,
        timeout=300,
    )
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [[x.decode() for x in row] for row in here.tolist()]


def test_build_info_records_the_serving_contract_and_the_mixed_batch_check(synthetic_model):
    info = read_build_info(synthetic_model)
    serving = info["serving"]
    assert {"k", "max_batch_size", "unknown_ids", "dimensions", "query_id_dtype", "candidate_id_dtype"} <= set(serving)
    mixed = info["verification"]["mixed_batch"]
    assert mixed == {"rows": 32, "unknown_ids_rows_ok": True, "nan_vector_rows_ok": True, "passed": True}
    assert info["verification"]["known_rows_found"] is True


def _mixed_check(loaded, by_id, by_vector) -> dict:
    known = _examples(loaded)["query_ids"][:8]
    vectors = loaded.query_vectors.numpy()[:8]
    all_ids = {x.decode() if isinstance(x, bytes) else x for x in loaded.query_ids.numpy().tolist()}
    known = np.asarray([x.decode() for x in known.tolist()], dtype=object)
    return verify.mixed_batch_check(by_id, by_vector, known, vectors, all_ids, [""] * 10)


def test_the_mixed_batch_check_catches_a_graph_whose_bad_rows_change_their_neighbours(user_model):
    loaded, _ = user_model
    by_id, by_vector = loaded.signatures["serving_default"], loaded.signatures["search_by_vector"]
    assert _mixed_check(loaded, by_id, by_vector)["passed"]

    def poisoned_by_id(ids):
        # A graph that lets an unknown row shift every score of its batch (what the check must catch).
        out = dict(by_id(ids=ids))
        shift = tf.reduce_sum(tf.cast(tf.logical_not(out["found"]), tf.float32)) * 1e-3
        return {**out, "scores": out["scores"] + shift}

    caught = _mixed_check(loaded, poisoned_by_id, by_vector)
    assert not caught["passed"] and not caught["unknown_ids_rows_ok"] and caught["nan_vector_rows_ok"]


def test_a_failed_verification_names_each_check_that_failed():
    ok = {"recall_at_k": {"serving_default": 0.97}, "target_recall": 0.95, "k": 10, "items_are_queries": True}
    ok.update({"self_excluded": True, "known_rows_found": True, "mixed_batch": {"passed": True}})
    assert verify.failures(ok) == []
    mixed = {"passed": False, "unknown_ids_rows_ok": False, "nan_vector_rows_ok": True}
    (message,) = verify.failures({**ok, "mixed_batch": mixed})
    assert "mixed-batch check failed (unknown_ids_rows_ok)" in message and "recall" not in message
    (message,) = verify.failures({**ok, "recall_at_k": {"serving_default": 0.94}})
    assert message.startswith("recall@10 below target 0.95: serving_default 0.940")
    assert len(verify.failures({**ok, "self_excluded": False, "known_rows_found": False})) == 2


@pytest.mark.slow
def test_recall_gate_rejects_a_deliberately_bad_index(tmp_path):
    from model_builder.data.synthetic import clustered_embeddings

    path = tmp_path / "items.npz"
    np.savez(path, ids=np.arange(20_000), vectors=clustered_embeddings(20_000, 32, num_clusters=400, seed=5))
    proc = support.run_cli(
        "build",
        "--out",
        str(tmp_path / "m"),
        "--candidates",
        str(path),
        "--query",
        "item",
        "--algorithm",
        "tree_ah",
        "--num-leaves",
        "400",
        "--num-leaves-to-search",
        "1",
        "--reorder-num-neighbors",
        "12",
        "--no-tune",
        "--verify-queries",
        "300",
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: recall@10 below target 0.95") and "was not published" in last
    assert not (tmp_path / "m" / "scann_model").exists() or not [
        p for p in (tmp_path / "m" / "scann_model").iterdir() if p.name.isdigit() or p.name.startswith(".tmp-")
    ]


def test_short_index_results_keep_the_contract_width(tmp_path):
    # A tree searching 1 of 400 leaves over 2,000 items: some queries reach fewer than k candidates.
    # ScaNN then pads a row with index 0 / NaN, or narrows the whole batch (a lone short query came
    # back [1, 0]); under TF Serving's batching the width would then depend on the merged
    # neighbours, and a padded index 0 would pass for a result. Every row must stay [k] wide, short
    # tails "" / -inf, found true. (Built in-process: the build's gates would refuse such an index.)
    from model_builder.contract import Catalogue
    from model_builder.data.synthetic import clustered_embeddings
    from model_builder.export import version_store
    from model_builder.export.serving_graph import RetrievalModule, ServingOptions
    from model_builder.index import config as index_config

    vectors = clustered_embeddings(2_000, 16, num_clusters=40, seed=3)
    ids = np.asarray([f"sku-{i}" for i in range(2_000)], dtype=object)
    cfg = index_config.IndexConfig(
        algorithm="tree_ah", num_leaves=400, num_leaves_to_search=1, reorder_num_neighbors=12
    )
    resolved = index_config.resolve(cfg, len(vectors), 16, 10)
    searcher, _ = index_config.build_searcher(vectors, resolved, 10)
    module = RetrievalModule(Catalogue(ids, vectors, ids, vectors), resolved, searcher, ServingOptions(k=10))
    version_store.save_module(module, module.signatures(), tmp_path / "1")
    search = tf.saved_model.load(str(tmp_path / "1")).signatures["search_by_vector"]
    out = search(vectors=tf.constant(vectors[:300]))
    got, scores, found = out["ids"].numpy(), out["scores"].numpy(), out["found"].numpy()
    assert got.shape == scores.shape == (300, 10) and found.all()
    short = ~np.isfinite(scores)
    assert short.any(), "no query came back short: the test no longer exercises ScaNN's padding"
    assert (got[short] == b"").all() and np.isneginf(scores[short]).all()
    assert not (got[~short] == b"").any() and not np.isnan(scores).any()
    # A lone short query (ScaNN narrows its answer) still gets a [1, k] row.
    for row in np.flatnonzero(short.sum(axis=1) >= 5)[:5]:
        alone = search(vectors=tf.constant(vectors[row : row + 1]))
        assert alone["ids"].numpy().shape == alone["scores"].numpy().shape == (1, 10)
        assert np.isneginf(alone["scores"].numpy()[0, -1]) or (alone["ids"].numpy() != b"").all()
