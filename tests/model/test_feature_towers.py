"""Feature towers: Keras training vs the exported plain-TF tower, new ids from features, TF 2.11 load, cold start."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import tensorflow as tf

import support
from model_builder.compat import ops
from model_builder.data import synthetic
from model_builder.towers import feature_build, training
from model_builder.towers.served_tower import ServingTower, TowerModule, embed

FAST = training.TrainConfig(epochs=4, batch_size=128, embedding_dim=16, hidden_units="32", feature_dim=8)


@pytest.fixture(scope="module")
def synthetic_features():
    """Synthetic interactions with user/item features (clusters the features reveal)."""
    return synthetic.interactions(num_users=400, num_items=500, seed=3, with_features=True)


@pytest.fixture(scope="module")
def trained(synthetic_features):
    """Feature towers trained on the synthetic data; their Keras layers and exported twins."""
    ds = synthetic_features
    users = feature_build.Universe.build(ds.interactions.user_ids, ds.user_features)
    items = feature_build.Universe.build(ds.interactions.item_ids, ds.item_features)
    result, user_schema, item_schema = feature_build.fit(users, items, users.rows, items.rows, ds, FAST)
    return {
        "ds": ds,
        "users": users,
        "items": items,
        "result": result,
        "schemas": (user_schema, item_schema),
        "towers": (
            ServingTower(user_schema, result.user_weights, "user_tower"),
            ServingTower(item_schema, result.item_weights, "item_tower"),
        ),
    }


def _odd_user_rows() -> dict[str, np.ndarray]:
    """Raw inputs a caller might send: unknown id/values, padding spaces, NaN/inf, bad UTF-8."""
    return {
        "user_id": np.array([10**12, 10**12 + 1, 1, 2, 3, 4], np.int64),
        "segment": np.array([b"s1", b"  s2 ", b"nope", b"", b"\xff\xfe", b"s0"], dtype=object),
        "age": np.array([30.0, np.nan, np.inf, -5.0, 1e9, 41.5], np.float32),
    }


def _odd_item_rows() -> dict[str, np.ndarray]:
    return {
        "item_id": np.array([10**12, 1, 2, 3, 4, 5], np.int64),
        "tags": np.array([b"t1|t2", b"", b"| t3 ||zz", b"zz", b"t1|t1", b"\xffbad|t0"], dtype=object),
        "year": np.array([1995, np.nan, 2050, 1990, -np.inf, 2001], np.float32),
    }


@pytest.mark.parametrize("side", ["user", "item"])
def test_exported_tower_gives_the_keras_towers_vectors(trained, side):
    index = 0 if side == "user" else 1
    schema, tower, keras_tower = (
        trained["schemas"][index],
        trained["towers"][index],
        trained["result"].keras_towers[index],
    )
    universe = trained["users"] if side == "user" else trained["items"]
    table = trained["ds"].user_features if side == "user" else trained["ds"].item_features
    stored = schema.raw_inputs(universe.ids, table)
    odd = _odd_user_rows() if side == "user" else _odd_item_rows()
    for raw in (stored, odd):
        want = np.asarray(keras_tower.embed({k: tf.constant(v) for k, v in schema.encode_raw(raw).items()}))
        got = embed(tower, raw)
        assert got.shape == want.shape and np.isfinite(got).all()
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    np.testing.assert_allclose(
        embed(tower, stored),
        (trained["result"].user_vectors if side == "user" else trained["result"].item_vectors),
        atol=1e-6,
    )


def test_an_unknown_id_is_embedded_from_its_features(trained):
    tower = trained["towers"][0]

    def vector(user_id, segment, age):
        return embed(
            tower,
            {
                "user_id": np.array([user_id], np.int64),
                "segment": np.array([segment], dtype=object),
                "age": np.array([age], np.float32),
            },
        )[0]

    new_a, other_new_a = vector(10**12, "s1", 25.0), vector(10**12 + 7, "s1", 25.0)
    np.testing.assert_array_equal(new_a, other_new_a)  # every unknown id shares the unknown row
    assert np.linalg.norm(new_a - vector(10**12, "s5", 60.0)) > 0.05, "different features must give a different user"
    assert np.linalg.norm(new_a - vector(1, "s1", 25.0)) > 1e-3, "a known id keeps its own embedding"
    assert abs(np.linalg.norm(new_a) - 1) < 1e-5


@pytest.mark.parametrize("ids", [np.array([-1, 3, 5], np.int64), np.array(["", "a", "b"], dtype=object)])
def test_padding_ids_never_get_an_id_row(ids):
    """Clients send -1 / "" for a new user without an id: it must mean "unknown" in every model."""
    from model_builder.towers.feature_encoding import fit_schema

    schema = fit_schema("user", "user_id", ids, np.array([9, 9, 9]), None)
    assert list(schema.encoders[0].vocab) == ids[1:].tolist()


def test_feature_tower_inputs_are_batch_vectors_with_wire_dtypes(trained):
    specs = trained["towers"][1].input_specs()
    assert {k: (v.shape.as_list(), v.dtype.name) for k, v in specs.items()} == {
        "item_id": ([None], "int64"),
        "tags": ([None], "string"),
        "year": ([None], "float32"),
    }


@pytest.mark.compat
def test_exported_tower_loads_and_matches_under_tf_2_11(trained, tmp_path):
    """The gate: TF 2.11's C-API SavedModel loader (TF Serving's) + the op snapshot check."""
    tower = trained["towers"][0]
    TowerModule(tower).save(tmp_path / "1")
    report = ops.check(tmp_path / "1")
    assert report.ok, report.missing_ops
    stored = trained["schemas"][0].raw_inputs(trained["users"].ids[:50], trained["ds"].user_features)
    rows = {k: np.concatenate([stored[k], v]) for k, v in _odd_user_rows().items()}
    want = embed(tower, rows)
    inputs = {
        "user_id": {"dtype": "int64", "value": rows["user_id"].tolist()},
        # The runner sends str values; bad UTF-8 cannot travel through JSON, so drop that row's bytes to text.
        "segment": {
            "dtype": "string",
            "value": [
                v.decode("utf-8", errors="replace") if isinstance(v, bytes) else v for v in rows["segment"].tolist()
            ],
        },
        "age": {"dtype": "float32", "value": rows["age"].tolist()},  # json writes NaN/Infinity
    }
    proc = subprocess.run(
        [str(support.COMPAT_PYTHON), str(support.REPO / "model_builder/compat/c_api_runner.py"), str(tmp_path / "1")],
        input=json.dumps([{"signature": "tower", "inputs": inputs}]),
        capture_output=True,
        text=True,
        timeout=600,
        env={**support.ENV, "PYTHONPATH": ""},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["runtime"]["tensorflow"].startswith("2.11")
    got = np.asarray(out["results"][0]["outputs"]["vectors"]["value"], np.float32)
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


def test_cold_start_on_planted_clusters_beats_popularity(synthetic_features):
    ds = synthetic_features
    keep = np.ones(len(ds.interactions), bool)
    opts = feature_build.FeatureSettings(cold_users=0.2, cold_items=0.2, refit=False, compare_id_only=False)
    model = feature_build.train_and_evaluate(ds, keep, ds.interactions.timestamps, opts, FAST, log=lambda _: None)
    cold = model.quality["cold_start"]
    assert cold["cold_users"]["features"]["hit_rate@10"] > cold["cold_users"]["most_popular"]["hit_rate@10"], cold
    assert (
        cold["cold_items"]["features"]["coverage@100"] > 0.2 and cold["cold_items"]["most_popular"]["coverage@100"] == 0
    )
    assert len(model.item_vectors) == len(model.items.ids) == 500, "items nobody interacted with are embedded too"
