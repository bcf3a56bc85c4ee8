"""search_by_features in the exported graph: known ids agree with serving_default, new users are answered
from their features, every row answers as if alone (batching-safe), warmup and metadata cover it."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import model_builder.scann_import  # noqa: F401  (registers the ScaNN ops before loading)
from model_builder.data import load_dataset
from model_builder.export import warmup
from model_builder.export.version_store import read_build_info

pytestmark = pytest.mark.slow
NEW_USER = 10**9  # not a MovieLens user id


@pytest.fixture(scope="module")
def movielens():
    return load_dataset("movielens-100k")


@pytest.fixture(scope="module")
def user_model(movielens_model):
    return tf.saved_model.load(str(movielens_model))


def stored_user_features(dataset, ids) -> dict[str, np.ndarray]:
    """What a caller sends for known users: their rows of ml-100k.user."""
    table = dataset.user_features.align(np.asarray(ids, np.int64))
    out = {"user_id": np.asarray(ids, np.int64)}
    for column in table.columns:
        out[column.name] = (
            column.values.astype(np.float32) if column.kind == "numeric" else column.values.astype(str).astype(object)
        )
    return out


def profiles(user_ids, ages, genders, occupations, zips) -> dict[str, np.ndarray]:
    return {
        "user_id": np.asarray(user_ids, np.int64),
        "age": np.asarray(ages, np.float32),
        "gender": np.asarray(genders, dtype=object),
        "occupation": np.asarray(occupations, dtype=object),
        "zip_code": np.asarray(zips, dtype=object),
    }


def run(model, signature: str, inputs: dict) -> dict[str, np.ndarray]:
    out = model.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
    return {k: v.numpy() for k, v in out.items()}


def test_known_ids_with_their_stored_features_answer_like_serving_default(user_model, movielens):
    ids = [1, 2, 3, 50, 942]
    by_features = run(user_model, "search_by_features", stored_user_features(movielens, ids))
    by_id = run(user_model, "serving_default", {"ids": np.asarray(ids, np.int64)})
    assert by_features["found"].all() and by_id["found"].all()
    np.testing.assert_array_equal(by_features["ids"], by_id["ids"])
    np.testing.assert_allclose(by_features["scores"], by_id["scores"], atol=1e-6)


def test_a_new_user_is_answered_from_features(user_model):
    out = run(
        user_model,
        "search_by_features",
        profiles(
            [NEW_USER, NEW_USER + 1, NEW_USER],
            [24, 24, 67],
            ["M", "M", "F"],
            ["technician", "technician", "retired"],
            ["85711", "85711", "10025"],
        ),
    )
    assert out["found"].all() and (out["ids"] >= 0).all() and np.isfinite(out["scores"]).all()
    assert out["ids"][0].tolist() == out["ids"][1].tolist(), (
        "any unknown id with the same features is the same new user"
    )
    assert out["ids"][0].tolist() != out["ids"][2].tolist(), "different features must give different recommendations"
    # serving_default cannot answer the same new user: the unknown-id policy applies there.
    assert not run(user_model, "serving_default", {"ids": np.array([NEW_USER], np.int64)})["found"].any()


def test_every_feature_row_answers_as_if_it_were_alone(user_model, movielens):
    """Batching-safe: odd rows (NaN, empty, unknown values, bad UTF-8) never fail or change their neighbours."""
    batch = stored_user_features(movielens, [5, 6, 7, 8, 9])
    batch["user_id"][1] = NEW_USER
    batch["age"][2] = np.nan
    batch["gender"][3] = ""
    batch["occupation"][4] = b"\xff\xfe"
    batch["zip_code"][0] = "not-a-zip"
    together = run(user_model, "search_by_features", batch)
    assert together["found"].all()
    for row in range(5):
        alone = run(user_model, "search_by_features", {k: v[row : row + 1] for k, v in batch.items()})
        assert alone["ids"][0].tolist() == together["ids"][row].tolist()
        np.testing.assert_allclose(alone["scores"][0], together["scores"][row], atol=1e-6)
    empty = run(user_model, "search_by_features", {k: v[:0] for k, v in batch.items()})
    assert empty["ids"].shape == (0, 10) and empty["found"].shape == (0,)


def test_feature_signature_metadata_and_warmup(movielens_model, user_model):
    info = read_build_info(movielens_model)
    features = info["serving"]["features"]
    assert features["signature"] == "search_by_features" and features["tower"] == "user"
    assert [(i["name"], i["dtype"]) for i in features["inputs"]] == [
        ("user_id", "int64"),
        ("age", "float32"),
        ("gender", "string"),
        ("occupation", "string"),
        ("zip_code", "string"),
    ]
    inputs = user_model.signatures["search_by_features"].structured_input_signature[1]
    assert {k: (v.shape.as_list(), v.dtype.name) for k, v in inputs.items()} == {
        i["name"]: ([None], i["dtype"]) for i in features["inputs"]
    }
    records = [r.predict_log.request for r in warmup.read(movielens_model)]
    feature_records = [r for r in records if r.model_spec.signature_name == "search_by_features"]
    assert [r.inputs["user_id"].tensor_shape.dim[0].size for r in feature_records] == [1, 8, 64]
    assert info["verification"]["warmup_records_replayed"] == len(records)


def test_item_to_item_features_exclude_the_query_item(movielens_items_model):
    model = tf.saved_model.load(str(movielens_items_model))
    dataset = load_dataset("movielens-100k")
    ids = np.array([1, 50, 181], np.int64)
    table = dataset.item_features.align(ids)
    inputs = {
        "item_id": ids,
        "release_year": table.columns[0].values.astype(np.float32),
        "genres": np.asarray(["|".join(t) for t in table.columns[1].values.tolist()], dtype=object),
    }
    by_features = run(model, "search_by_features", inputs)
    by_id = run(model, "serving_default", {"ids": ids})
    np.testing.assert_array_equal(by_features["ids"], by_id["ids"])
    assert not (by_features["ids"] == ids[:, None]).any()
    new_item = run(
        model,
        "search_by_features",
        {
            "item_id": np.array([10**9], np.int64),
            "release_year": np.array([1995], np.float32),
            "genres": np.array(["Animation|Children's|Comedy"], dtype=object),
        },
    )
    assert new_item["found"].all() and (new_item["ids"] >= 0).all()
