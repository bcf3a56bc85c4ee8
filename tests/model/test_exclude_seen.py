"""Issue 19, deliverable 1: serving_default never returns what the user already has.

The rule (model_builder/towers/history.py): every interaction of the user in the data, any
weight, the most recent `--seen-cap`. The graph over-fetches k + the history table's width and
masks the history per row (export/serving_graph.py); the quality table and the recall gate
apply the same rule. Real builds, real SavedModels.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tensorflow as tf

import model_builder.scann_import  # noqa: F401  (Scann ops before loading)
import support
from model_builder.build_config import BuildConfig
from model_builder.data import movielens
from model_builder.errors import ConfigError
from model_builder.export.version_store import read_build_info
from model_builder.index.recall import exact_kth_scores
from model_builder.towers import history

DEMO_USER = 1  # MovieLens 100K user 1 rated items 1-272 (the demo's sample user)


def _history(path) -> dict[str, list[tuple[float, str]]]:
    """user id -> [(timestamp, item id)] of the string-id CSV fixture."""
    out: dict[str, list[tuple[float, str]]] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            out.setdefault(row["user_id"], []).append((float(row["timestamp"]), row["item_id"]))
    return out


def _serve(loaded, ids: np.ndarray) -> dict:
    tensor = tf.constant(ids if ids.dtype == np.int64 else [str(i) for i in ids.tolist()])
    return {k: v.numpy() for k, v in loaded.signatures["serving_default"](ids=tensor).items()}


def _decode(values: np.ndarray) -> list:
    return [v.decode() if isinstance(v, bytes) else v for v in values.tolist()]


def test_demo_model_never_shows_user_1_a_movie_they_rated(movielens_model):
    rated = movielens.load_recbole().interactions
    user_1 = set(rated.item_ids[rated.user_ids == DEMO_USER].tolist())
    assert user_1 == set(range(1, 273))  # the premise: user 1 rated items 1-272
    loaded = tf.saved_model.load(str(movielens_model))
    out = _serve(loaded, np.array([DEMO_USER], np.int64))
    assert out["found"].all() and np.isfinite(out["scores"]).all()
    assert not user_1 & set(out["ids"][0].tolist()), out["ids"][0]
    info = read_build_info(movielens_model)
    rule = info["serving"]["exclude_seen"]
    assert rule["cap"] == 500 and rule["width"] == 500 and rule["users_capped"] > 0
    assert rule["fetched_per_query"] == 10 + 500
    assert info["verification"]["seen_excluded"] is True
    assert "most recent interactions (any weight) excluded, as served" in info["training"]["excluded"]


def test_every_user_row_excludes_its_history_and_answers_as_if_alone(synthetic_model, string_id_csv):
    seen = _history(string_id_csv)
    loaded = tf.saved_model.load(str(synthetic_model))
    users = np.asarray(_decode(loaded.query_ids.numpy()), dtype=object)[:64]
    # Unknown ids between the known ones: their rows read the table's padding row.
    mixed = np.empty(2 * len(users), dtype=object)
    mixed[0::2], mixed[1::2] = users, [f"nobody-{i}" for i in range(len(users))]
    batch = _serve(loaded, mixed)
    assert batch["found"][0::2].all() and not batch["found"][1::2].any()
    for n, user in enumerate(users):
        row = _decode(batch["ids"][2 * n])
        assert not {item for _, item in seen[user]} & set(row)
        alone = _serve(loaded, np.asarray([user], dtype=object))
        assert _decode(alone["ids"][0]) == row  # brute force: exact at any batch size
        np.testing.assert_allclose(alone["scores"][0], batch["scores"][2 * n], rtol=1e-5, atol=1e-6)
    info = read_build_info(synthetic_model)
    assert info["serving"]["exclude_seen"]["fetched_per_query"] == 10 + info["serving"]["exclude_seen"]["width"]


def test_seen_cap_excludes_the_most_recent_items_only(tmp_path, string_id_csv):
    cap = 3
    version = support.build(tmp_path, "--dataset", str(string_id_csv), *support.FAST_TRAIN, "--seen-cap", str(cap))
    info = read_build_info(version)
    rule = info["serving"]["exclude_seen"]
    assert rule["cap"] == cap and rule["width"] == cap and rule["users_capped"] == info["data"]["users"]
    assert rule["fetched_per_query"] == 10 + cap and info["verification"]["seen_excluded"] is True
    loaded = tf.saved_model.load(str(version))
    users = np.asarray(_decode(loaded.query_ids.numpy()), dtype=object)[:32]
    out = _serve(loaded, users)
    seen = _history(string_id_csv)
    for user, row in zip(users, out["ids"]):
        recent = {item for _, item in sorted(seen[user])[-cap:]}
        assert not recent & set(_decode(row))


def test_history_table_keeps_the_latest_cap_sorted_and_padded():
    users = np.array([0, 0, 0, 0, 1, 2, -1])
    items = np.array([5, 3, 9, 3, 7, 4, 1])
    stamps = np.array([1.0, 4.0, 3.0, 2.0, 1.0, 1.0, 1.0])
    table = history.seen_table(users, items, stamps, num_users=4, cap=2)
    # user 0's two latest interactions: item 3 (t=4) and item 9 (t=3); sorted ascending.
    assert table.table.tolist() == [
        [3, 9],
        [7, history.SEEN_PADDING],
        [4, history.SEEN_PADDING],
        [history.SEEN_PADDING] * 2,
    ]
    assert (table.longest, table.users_capped, table.width) == (3, 1, 2)
    held = history.evaluation_seen(users, items, stamps, (np.array([0]), np.array([3])), cap=2)
    assert held[0].tolist() == [5, 9]  # every (0, 3) pair is the held-out target, not history


def test_exact_recall_runs_without_the_excluded_rows():
    candidates = np.eye(4, dtype=np.float32)
    query = np.array([[4.0, 3.0, 2.0, 1.0]], np.float32)
    plain = exact_kth_scores(query, candidates, 1, "dot_product")
    excluded = exact_kth_scores(
        query, candidates, 1, "dot_product", np.array([[0, 1, history.SEEN_PADDING]], dtype=np.int64)
    )
    assert plain.tolist() == [4.0] and excluded.tolist() == [2.0]


def test_a_seen_cap_below_one_is_a_clear_error():
    with pytest.raises(ConfigError, match="--seen-cap must be at least 1"):
        BuildConfig(seen_cap=0).validate()
