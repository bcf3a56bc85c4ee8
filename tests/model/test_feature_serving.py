"""Issue 13's acceptance, end to end: a MovieLens 100K feature model behind the local server with batching on
(the image's batching file), queried over real gRPC for users who are not in the data.

The model is built here with k=100 and without refit: 20% of users and 10% of items are then never
trained on (the quality split), and a retrieval stage's 100 candidates is where new items show up
(at k=10 the logQ weight keeps them out of new users' lists; model_builder/README.md).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import support
from model_builder.data import load_dataset
from support import harness

pytestmark = pytest.mark.slow
BATCHING = (
    "--enable_batching",
    "--batching_parameters_file",
    str(support.REPO / "k8s/base/config/batching_parameters.txt"),
)
NEW_USER = 10**9


MODEL = "movielens_k100"


@pytest.fixture(scope="module")
def feature_model(models_root):
    return support.build(
        models_root,
        "--dataset",
        "movielens-100k",
        "-k",
        "100",
        "--no-refit",
        "--no-compare-id-only",
        "--verify-queries",
        "200",
        model_name=MODEL,
    )


@pytest.fixture(scope="module")
def served(feature_model, tmp_path_factory):
    logs = tmp_path_factory.mktemp("feature-server")
    with support.local_server(feature_model.parent.parent, MODEL, *BATCHING, log_dir=logs) as server:
        server.wait_available(int(feature_model.name))
        raw = harness.Raw(server.target)
        yield raw
        raw.close()


def _request(age: float, gender: str, occupation: str, zip_code: str = "55455", user_id: int = NEW_USER):
    return harness.predict_request(
        "search_by_features",
        {
            "user_id": np.array([user_id], np.int64),
            "age": np.array([age], np.float32),
            "gender": np.array([gender.encode()], dtype=object),
            "occupation": np.array([occupation.encode()], dtype=object),
            "zip_code": np.array([zip_code.encode()], dtype=object),
        },
        model=MODEL,
    )


def test_metadata_lists_the_feature_signature(served):
    signature = served.metadata(MODEL)
    from tensorflow_serving.apis import get_model_metadata_pb2

    defs = get_model_metadata_pb2.SignatureDefMap()
    signature.metadata["signature_def"].Unpack(defs)
    inputs = defs.signature_def["search_by_features"].inputs
    assert sorted(inputs) == ["age", "gender", "occupation", "user_id", "zip_code"]
    assert [d.size for d in inputs["age"].tensor_shape.dim] == [-1]


def test_a_user_not_in_the_data_gets_recommendations_from_features(served):
    assert NEW_USER not in set(load_dataset("movielens-100k").interactions.user_ids.tolist())
    student = harness.outputs(served.predict(_request(19, "F", "student", "02139")))
    retiree = harness.outputs(served.predict(_request(68, "M", "retired", "32801")))
    for out in (student, retiree):
        assert out["found"].tolist() == [True] and out["ids"].shape == (1, 100) and (out["ids"] >= 0).all()
        assert np.isfinite(out["scores"]).all() and (np.diff(out["scores"][0]) <= 0).all()
    assert student["ids"].tolist() != retiree["ids"].tolist()


def test_concurrent_feature_requests_are_answered_as_if_alone(served):
    """With batching on, concurrent single-row requests are merged; each must get its own answer."""
    occupations = ["student", "retired", "programmer", "artist", "doctor", "writer", "engineer", "homemaker"]
    requests = [
        _request(age, gender, occupation) for age in (17, 30, 45, 62) for gender in "MF" for occupation in occupations
    ]
    alone = [harness.outputs(served.predict(r))["ids"].tolist() for r in requests]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda r: harness.outputs(served.predict(r))["ids"].tolist(), requests * 3))
    assert together == alone * 3
    assert len({tuple(ids[0]) for ids in alone}) > 10, "feature profiles should not all get one list"


def test_items_never_trained_on_show_up_for_new_users(served, feature_model):
    """Cold items (held out of training, or without a positive at all) enter the index from their features."""
    from model_builder.export.version_store import read_build_info

    dataset = load_dataset("movielens-100k")
    positives = set(dataset.interactions.item_ids[dataset.interactions.weights >= 4].tolist())
    held_out = read_build_info(feature_model)["training"]["cold_start"]["held_out_item_ids"]
    cold = (set(dataset.item_features.ids.tolist()) - positives) | set(held_out)
    occupations = sorted(set(dataset.user_features.columns[2].values.tolist()))
    reached = set()
    for age in (16, 24, 35, 50, 67):
        for gender in "MF":
            for occupation in occupations:
                reached |= cold & set(
                    harness.outputs(served.predict(_request(age, gender, occupation)))["ids"].ravel().tolist()
                )
    assert reached, f"none of the {len(cold)} items never trained on reached a new user's top 100"
