"""search_by_features in the client: rows or columns -> checked tensors (pure functions), and the sync,
async and CLI paths against the real local server on the demo's MovieLens feature model."""

from __future__ import annotations

import asyncio
import json
import math

import numpy as np
import pytest

from retrieval_client import AsyncRetrievalClient, IncompatibleModelError, RetrievalClient, TensorSpec
from retrieval_client._cli import main as cli_main
from retrieval_client._features import feature_columns, feature_tensors
from retrieval_client._tensors import decode_strings, from_tensor_proto

SPECS = {
    "user_id": TensorSpec("int64", [-1]),
    "age": TensorSpec("float32", [-1]),
    "occupation": TensorSpec("string", [-1]),
    "genres": TensorSpec("string", [-1]),
}
NEW_USERS = [
    {"age": 24, "gender": "M", "occupation": "technician", "zip_code": "85711"},
    {"age": 61, "gender": "F", "occupation": "retired"},
]


def _sent(columns, batch, specs=SPECS) -> dict:
    tensors = feature_tensors(columns, batch, specs, "model 'm'")
    out = {}
    for name, proto in tensors.items():
        array = from_tensor_proto(proto)
        out[name] = decode_strings(array).tolist() if array.dtype == object else array.tolist()
    return out


def test_rows_and_columns_give_the_same_columns():
    rows = [{"age": 24, "genres": ["Action", "Comedy"]}, {"age": None, "occupation": "writer"}]
    columns, batch = feature_columns(rows)
    assert batch == 2 and columns == {
        "age": [24, None],
        "genres": [["Action", "Comedy"], None],
        "occupation": [None, "writer"],
    }
    assert feature_columns({"age": np.array([24.0, 30.0]), "occupation": ("a", "b")}) == (
        {"age": [24.0, 30.0], "occupation": ["a", "b"]},
        2,
    )


def test_values_are_converted_to_the_signature_dtypes_and_missing_ones_filled():
    sent = _sent(
        {
            "age": [24, "31.5", None, " "],
            "genres": [["Action", "Comedy"], "Drama", None, ()],
            "occupation": ["writer", b"artist", 7, None],
        },
        4,
    )
    assert sent["age"][:2] == [24.0, 31.5] and math.isnan(sent["age"][2]) and math.isnan(sent["age"][3])
    assert sent["genres"] == ["Action|Comedy", "Drama", "", ""]
    assert sent["occupation"] == ["writer", "artist", "7", ""]
    assert sent["user_id"] == [-1, -1, -1, -1], "no id: the padding id, which no feature model knows"


@pytest.mark.parametrize(
    ("columns", "error", "needle"),
    [
        (
            {"ocupation": ["x"]},
            ValueError,
            "unknown feature(s) ocupation: model 'm' takes age (float32), genres (string)",
        ),
        ({"age": ["old"]}, ValueError, "feature 'age' of model 'm', row 0: 'old' is not a number"),
        ({"age": [True]}, TypeError, "is not one number"),
        ({"age": [[1, 2]]}, TypeError, "is not one number"),
        ({"genres": [["Sci|Fi"]]}, ValueError, "contains '|', the separator of multi-valued features"),
        ({"occupation": [2.5]}, TypeError, "is not text"),
        ({"user_id": ["u7"]}, ValueError, "'u7' is not an int64 id"),
        ({"user_id": [2**63]}, ValueError, "does not fit int64"),
    ],
)
def test_bad_values_are_refused_before_sending(columns, error, needle):
    with pytest.raises(error) as info:
        feature_tensors(columns, 1, SPECS, "model 'm'")
    assert needle in str(info.value)


@pytest.mark.parametrize(
    ("rows", "error", "needle"),
    [
        ("age=3", TypeError, "rows must be a list of dicts or a dict of columns"),
        ([{"age": 3}, ("age", 4)], TypeError, "row 1 is a tuple, not a dict of features"),
        ({"age": [1, 2], "occupation": ["a"]}, ValueError, "feature columns differ in length"),
        ({"age": 3}, TypeError, "column 'age' must be a sequence with one value per query"),
    ],
)
def test_badly_shaped_rows_are_refused(rows, error, needle):
    with pytest.raises(error, match=needle):
        feature_columns(rows)


def test_a_two_dimensional_feature_input_is_incompatible():
    with pytest.raises(IncompatibleModelError, match=r"has shape \[-1, 3\]"):
        feature_tensors({}, 1, {"x": TensorSpec("float32", [-1, 3])}, "model 'm'")


@pytest.fixture(scope="module")
def feature_target(local_live_servers):
    return local_live_servers["int64"].split("@")  # the demo's MovieLens model: built with features


@pytest.mark.slow
def test_sync_async_rows_and_columns_agree_and_known_users_match_search(feature_target):
    model, target = feature_target
    with RetrievalClient(target, model) as client:
        by_rows = client.search_by_features(NEW_USERS, k=5)
        by_columns = client.search_by_features(
            {name: [row.get(name) for row in NEW_USERS] for name in ("age", "gender", "occupation", "zip_code")}, k=5
        )
        known = client.search_by_features(
            [{"user_id": 1, "age": 24, "gender": "M", "occupation": "technician", "zip_code": "85711"}]
        )  # MovieLens user 1 and its stored features
        [by_id] = client.search([1])
        assert client.search_by_features([]) == []

    async def run_async():
        async with AsyncRetrievalClient(target, model) as client:
            return await client.search_by_features(NEW_USERS, k=5)

    assert by_rows == by_columns == asyncio.run(run_async())
    assert all(r.found and len(r.ids) == 5 for r in by_rows) and by_rows[0].ids.tolist() != by_rows[1].ids.tolist()
    assert known[0].ids.tolist() == by_id.ids.tolist()
    np.testing.assert_allclose(known[0].scores, by_id.scores, atol=1e-6)


@pytest.mark.slow
def test_k_above_the_models_k_and_models_without_features_fail_before_predict(feature_target, local_live_servers):
    model, target = feature_target
    with RetrievalClient(target, model) as client:
        with pytest.raises(ValueError, match="k=11 is more than K=10"):
            client.search_by_features(NEW_USERS, k=11)
    plain_model, plain_target = local_live_servers["string"].split("@")  # synthetic CSV: no features
    with RetrievalClient(plain_target, plain_model) as client:
        with pytest.raises(IncompatibleModelError, match="has no signature 'search_by_features'"):
            client.search_by_features(NEW_USERS)


@pytest.mark.slow
def test_cli_search_with_features(feature_target, capsys):
    model, target = feature_target
    args = [
        "search",
        "--target",
        target,
        "--model",
        model,
        "--feature",
        "age=24",
        "--feature",
        "occupation=technician",
        "-k",
        "3",
    ]
    assert cli_main([*args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (
        data["results"][0]["query"] == {"age": "24", "occupation": "technician"} and len(data["results"][0]["ids"]) == 3
    )
    assert cli_main(args) == 0
    assert capsys.readouterr().out.startswith("query age=24 occupation=technician:\nrank  id")
    assert cli_main(["search", "--target", target, "--model", model, "--feature", "age=old"]) == 2
    assert "'old' is not a number" in capsys.readouterr().err
    assert cli_main(["search", "--target", target, "--model", model, "--feature", "age=1", "--id", "3"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert cli_main(["search", "--target", target, "--model", model, "--feature", "age=1", "--feature", "age=2"]) == 2
    assert "--feature age given twice" in capsys.readouterr().err
