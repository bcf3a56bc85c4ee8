"""The serving image's runtime (TF 2.11 + scann 1.2.9, Python 3.10) loads every kind of model we export.

Loading goes through TF's C API TF_LoadSessionFromSavedModel -- the C++ loader
tensorflow_model_server uses -- in the pinned compat env (`make compat-venv`).
Exact kinds must return the same ids; approximate kinds the same recall and
nearly every list (see EXACT_KINDS).
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import tensorflow as tf

import model_builder.scann_import  # noqa: F401  (registers the ScaNN ops before loading)
import support
from model_builder.compat import ops
from model_builder.export.version_store import read_build_info

pytestmark = pytest.mark.compat
RUNNER = support.REPO / "model_builder" / "compat" / "c_api_runner.py"


def _compat_python():
    if not support.COMPAT_PYTHON.is_file():
        pytest.fail(f"{support.COMPAT_PYTHON} missing: run `make compat-venv` (Python 3.10 + TF 2.11 + scann 1.2.9)")
    return str(support.COMPAT_PYTHON)


def run_in_tf211(version_dir, requests: list) -> dict:
    proc = subprocess.run(
        [_compat_python(), str(RUNNER), str(version_dir)],
        input=json.dumps(requests),
        capture_output=True,
        text=True,
        timeout=600,
        env={**support.ENV, "PYTHONPATH": ""},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _spec(value: np.ndarray) -> dict:
    if value.dtype == object or value.dtype.kind in "SU":
        return {"dtype": "string", "value": [v.decode() if isinstance(v, bytes) else str(v) for v in value.tolist()]}
    return {"dtype": value.dtype.name, "value": value.tolist()}


def _decoded(values: np.ndarray) -> list:
    return [[v.decode() if isinstance(v, bytes) else v for v in row] for row in values.tolist()]


# ANN stages (AH scoring) of scann 1.2.9 and 1.4.2 are not bit-identical: when two candidates
# tie at the approximate stage, the one that reaches exact re-scoring can differ. Exact kinds
# must match id for id; approximate kinds must keep their recall and nearly every list.
EXACT_KINDS = {
    "movielens-user-int-bruteforce",
    "movielens-item-int",
    "synthetic-user-string",
    "synthetic-user-string-fallback",
    "exact-int",
}
MIN_IDENTICAL_ROWS = 0.97
MAX_RECALL_DROP = 0.01


def _recall(loaded, queries: np.ndarray, ids: list) -> float:
    from model_builder.index.recall import recall_at_k

    candidates = loaded.candidate_vectors.numpy()
    lookup = {v: i for i, v in enumerate(_decoded(loaded.candidate_ids.numpy()[None, :])[0])}
    rows = np.array([[lookup[i] for i in row] for row in ids], dtype=np.int64)
    return recall_at_k(queries, candidates, rows, "dot_product")


@pytest.mark.slow
def test_every_model_kind_serves_the_same_under_tf_2_11(model_kinds):
    report = {}
    for name, version_dir in model_kinds.items():
        loaded = tf.saved_model.load(str(version_dir))
        examples = _examples(loaded)
        queries = np.repeat(examples["query_ids"], 3)[:20]
        probes = np.random.default_rng(1).normal(size=(256, examples["candidate_vectors"].shape[1])).astype(np.float32)
        probes /= np.linalg.norm(probes, axis=1, keepdims=True)
        vectors = np.concatenate([examples["candidate_vectors"], probes])
        expected = [
            loaded.signatures["serving_default"](ids=tf.constant(queries)),
            loaded.signatures["search_by_vector"](vectors=tf.constant(vectors)),
        ]
        got = run_in_tf211(
            version_dir,
            [
                {"signature": "serving_default", "inputs": {"ids": _spec(queries)}},
                {"signature": "search_by_vector", "inputs": {"vectors": _spec(vectors)}},
                {"signature": "examples", "inputs": {"index": {"dtype": "int64", "value": list(range(64))}}},
            ],
        )
        assert got["runtime"]["tensorflow"].startswith("2.11") and got["runtime"]["python"].startswith("3.10")
        found = got["results"][2]["outputs"]["found"]["value"]
        assert [q for q, f in zip(got["results"][2]["outputs"]["query_ids"]["value"], found) if f] == _decoded(
            examples["query_ids"][None, :]
        )[0]
        for want, result in zip(expected, got["results"][:2]):
            assert "outputs" in result, f"{name}: {result}"
            assert result["outputs"]["found"]["value"] == want["found"].numpy().tolist() and all(
                result["outputs"]["found"]["value"]
            )
            if name in EXACT_KINDS:
                assert result["outputs"]["ids"]["value"] == _decoded(want["ids"].numpy()), name
                np.testing.assert_allclose(
                    result["outputs"]["scores"]["value"], want["scores"].numpy(), rtol=1e-4, atol=1e-5
                )
        want_ids, got_ids = _decoded(expected[1]["ids"].numpy()), got["results"][1]["outputs"]["ids"]["value"]
        identical = float(np.mean([a == b for a, b in zip(want_ids, got_ids)]))
        recalls = (_recall(loaded, vectors, want_ids), _recall(loaded, vectors, got_ids))
        report[name] = {
            "identical_rows": identical,
            "recall_tf220": round(recalls[0], 4),
            "recall_tf211": round(recalls[1], 4),
        }
        assert identical >= MIN_IDENTICAL_ROWS and recalls[1] >= recalls[0] - MAX_RECALL_DROP, (name, report[name])
    print(json.dumps(report, indent=1))


def _examples(loaded) -> dict:
    out = {k: v.numpy() for k, v in loaded.signatures["examples"](index=tf.range(64, dtype=tf.int64)).items()}
    return {k: v[out["found"]] for k, v in out.items()}


@pytest.mark.parametrize("model", ["synthetic_model", "fallback_model_dir", "movielens_items_model"])
def test_rows_that_cannot_be_answered_under_tf_2_11_are_the_same_per_row_answers(model, request):
    """Unknown ids and NaN rows: the same found/ids/scores through TF 2.11's C-API loader as in TF 2.20, no error."""
    version_dir = request.getfixturevalue(model)
    loaded = tf.saved_model.load(str(version_dir))
    known = _examples(loaded)["query_ids"][:3]
    unknown = np.array([b"no-such-user-42"], dtype=object) if known.dtype == object else np.array([10**12], np.int64)
    ids = np.concatenate([known[:1], unknown, known[1:2]])
    vectors = _examples(loaded)["candidate_vectors"][:3].copy()
    vectors[1, 0] = np.nan
    expected = [
        loaded.signatures["serving_default"](ids=tf.constant(ids)),
        loaded.signatures["search_by_vector"](vectors=tf.constant(vectors)),
    ]
    got = run_in_tf211(
        version_dir,
        [
            {"signature": "serving_default", "inputs": {"ids": _spec(ids)}},
            {"signature": "search_by_vector", "inputs": {"vectors": _spec(vectors)}},
        ],
    )
    for want, result in zip(expected, got["results"]):
        assert "outputs" in result, result
        assert result["outputs"]["found"]["value"] == want["found"].numpy().tolist() == [True, False, True]
        assert result["outputs"]["ids"]["value"] == _decoded(want["ids"].numpy())
        scores = np.array(result["outputs"]["scores"]["value"], np.float32)
        assert np.isneginf(scores[1]).all()
        np.testing.assert_allclose(scores[[0, 2]], want["scores"].numpy()[[0, 2]], rtol=1e-4, atol=1e-5)


def test_wrong_shapes_under_tf_2_11_fail_on_shape_alone(movielens_model):
    """TF Serving does not check shapes before Session::Run (predict_util.cc): the graph's EnsureShape does."""
    got = run_in_tf211(
        movielens_model,
        [
            {"signature": "search_by_vector", "inputs": {"vectors": {"dtype": "float32", "value": [[0.1] * 7]}}},
            {"signature": "serving_default", "inputs": {"ids": {"dtype": "int64", "value": [[1, 2]]}}},
            {"signature": "serving_default", "inputs": {"ids": {"dtype": "int64", "value": []}}},
        ],
    )
    vector_error, rank_error = got["results"][0]["error"], got["results"][1]["error"]
    assert (
        vector_error["code"] == 3 and "[1,7] is not compatible with expected shape [?,32]" in vector_error["message"]
    )  # INVALID_ARGUMENT
    assert rank_error["code"] == 3 and "[1,2] is not compatible with expected shape [?]" in rank_error["message"]
    assert got["results"][2]["outputs"]["ids"]["shape"] == [0, 10]


def _feature_spec(values: np.ndarray) -> dict:
    if values.dtype == np.float32:
        return {"dtype": "float32", "value": values.tolist()}  # json carries NaN
    return _spec(values)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["movielens_model", "movielens_items_model"])
def test_feature_signature_serves_the_same_under_tf_2_11(model, request):
    """search_by_features (the query tower in the graph) through TF 2.11's C-API loader: same ids and scores,
    for stored ids, unknown ids, missing and unknown values; and the op snapshot check passes."""
    version_dir = request.getfixturevalue(model)
    proc = support.run_cli("check-compat", str(version_dir))  # the op snapshot gate, as `make` runs it
    lines = proc.stdout.strip().splitlines()
    assert (
        proc.returncode == 0 and "compatible" in lines and lines[-1].startswith("serving rules of TF Serving 2.11")
    ), proc.stdout[-2000:]
    loaded = tf.saved_model.load(str(version_dir))
    inputs = read_build_info(version_dir)["serving"]["features"]["inputs"]
    known = _examples(loaded)["query_ids"][:4]
    rows = {
        "user_id": [int(known[0]), int(known[1]), 10**12, 10**12, int(known[2]), int(known[3])],
        "item_id": [int(known[0]), int(known[1]), 10**12, 10**12, int(known[2]), int(known[3])],
        "age": [24, 53, 24, np.nan, 31, np.inf],
        "gender": ["M", "F", "M", "", "X", "F"],
        "occupation": ["technician", "other", "technician", "retired", "astronaut", "writer"],
        "zip_code": ["85711", "94043", "85711", "", "K7L5J", "00000"],
        "release_year": [1995, 1977, np.nan, 1999, 2030, -np.inf],
        "genres": ["Animation|Children's|Comedy", "", "Drama", "Sci-Fi|Unknown-genre", "|", "Film-Noir|Drama"],
    }
    dtypes = {"int64": np.int64, "float32": np.float32, "string": object}
    feed = {i["name"]: np.asarray(rows[i["name"]], dtype=dtypes[i["dtype"]]) for i in inputs}
    want = {
        k: v.numpy()
        for k, v in loaded.signatures["search_by_features"](**{k: tf.constant(v) for k, v in feed.items()}).items()
    }
    got = run_in_tf211(
        version_dir, [{"signature": "search_by_features", "inputs": {k: _feature_spec(v) for k, v in feed.items()}}]
    )
    result = got["results"][0]
    assert "outputs" in result, result
    assert result["outputs"]["found"]["value"] == want["found"].tolist() == [True] * 6
    assert result["outputs"]["ids"]["value"] == want["ids"].tolist()
    np.testing.assert_allclose(result["outputs"]["scores"]["value"], want["scores"], rtol=1e-5, atol=1e-6)


def test_check_compat_lists_ops_and_passes_for_our_models(synthetic_model):
    report = ops.check(synthetic_model)
    assert report.ok and "Scann>ScannSearchBatched" in report.ops_used and "Scann>TensorsToScann" in report.ops_used
    proc = support.run_cli("check-compat", str(synthetic_model))
    assert proc.returncode == 0 and "compatible" in proc.stdout.splitlines(), proc.stdout[-2000:] + proc.stderr[-2000:]


def test_check_compat_fails_on_an_op_the_runtime_lacks(tmp_path):
    class Newer(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def f(self, x):
            return {"y": tf.raw_ops.Ndtri(x=x)}  # exists in TF 2.20, not in a trimmed registry

    m = Newer()
    tf.saved_model.save(m, str(tmp_path / "1"), signatures={"serving_default": m.f})
    registry = ops.load_registry(ops.default_runtime())
    assert "Ndtri" in registry  # sanity: pick an op that really is missing from TF 2.11 below
    missing_op = next(op for op in ops.saved_model_ops(tmp_path / "1") if op == "Ndtri")
    fake_runtime = ops.REGISTRY_DIR / "test-trimmed.json"
    trimmed = {k: v for k, v in registry.items() if k != missing_op}
    fake_runtime.write_text(json.dumps({"ops": trimmed}))
    try:
        proc = support.run_cli("check-compat", str(tmp_path / "1"), "--runtime", "test-trimmed")
        assert proc.returncode == 1 and "INCOMPATIBLE: Ndtri" in proc.stdout
    finally:
        fake_runtime.unlink()


def test_committed_registry_snapshot_matches_the_pinned_wheels():
    proc = subprocess.run(
        [_compat_python(), str(support.REPO / "model_builder" / "compat" / "snapshot.py")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**support.ENV, "PYTHONPATH": ""},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    committed = (ops.REGISTRY_DIR / f"{ops.default_runtime()}.json").read_text()
    assert json.loads(proc.stdout) == json.loads(committed), (
        "regenerate: .venv-compat/bin/python model_builder/compat/snapshot.py > model_builder/compat/registry/tf-2.11.0_scann-1.2.9.json"
    )
