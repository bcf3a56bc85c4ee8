"""Two-tower training and held-out evaluation against the most-popular baseline."""

from __future__ import annotations

import json

import numpy as np
import pytest

from model_builder.data import synthetic
from model_builder.errors import ConfigError
from model_builder.export.version_store import read_build_info
from model_builder.towers import evaluation, training


def test_leave_last_out_holds_out_each_users_latest():
    users = np.array([0, 0, 0, 1, 1, 2])
    items = np.array([5, 6, 7, 8, 9, 4])
    stamps = np.array([3.0, 1.0, 2.0, 1.0, 2.0, 1.0])
    split = evaluation.leave_last_out(users, items, stamps, 1)
    assert sorted(zip(split.test_users.tolist(), split.test_items.tolist())) == [(0, 5), (1, 9)]
    assert 4 in split.train_items, "a user with one positive keeps it for training"


def test_two_tower_beats_popularity_on_planted_clusters():
    inter = synthetic.interactions(num_users=300, num_items=400, seed=1).interactions
    users, items = evaluation.Vocab.build(inter.user_ids), evaluation.Vocab.build(inter.item_ids)
    split = evaluation.leave_last_out(users.rows, items.rows, inter.timestamps, 1)
    cfg = training.TrainConfig(epochs=5, batch_size=128, embedding_dim=16)
    trained = training.train(split.train_users, split.train_items, len(users.ids), len(items.ids), cfg, verbose=0)
    assert np.allclose(np.linalg.norm(trained.item_vectors, axis=1), 1.0, atol=1e-4)
    model = evaluation.model_metrics(trained.user_vectors, trained.item_vectors, split)
    popular = evaluation.popularity_metrics(split, len(items.ids))
    assert model["hit_rate@10"] > popular["hit_rate@10"]


@pytest.mark.parametrize("field,value", [("hidden_units", "64,x"), ("embedding_dim", 1), ("temperature", 0.0)])
def test_bad_training_config_names_the_flag(field, value):
    with pytest.raises(ConfigError, match=f"--{field.replace('_', '-')}"):
        training.TrainConfig(**{field: value}).validate()


@pytest.mark.slow
def test_movielens_model_beats_popularity_and_stores_the_numbers(movielens_model):
    info = read_build_info(movielens_model)
    quality = info["training"]
    for k in (10, 100):
        assert quality["two_tower"][f"hit_rate@{k}"] > quality["most_popular"][f"hit_rate@{k}"], json.dumps(quality)
    assert info["data"]["positives"] == 55_375 and info["data"]["users"] == 942


@pytest.mark.slow
def test_movielens_feature_model_reports_cold_start_and_indexes_items_without_interactions(movielens_model):
    info = read_build_info(movielens_model)
    cold = info["training"]["cold_start"]
    assert cold["held_out_users"] == 188 and cold["held_out_items"] == 145, json.dumps(cold)
    for k in (10, 100):
        # The bar: features must beat the most-popular list for users never trained on.
        assert cold["cold_users"]["features"][f"hit_rate@{k}"] > cold["cold_users"]["most_popular"][f"hit_rate@{k}"], (
            json.dumps(cold)
        )
    assert "id_only" not in cold["cold_users"], "id-only towers cannot embed an unknown user"
    assert cold["cold_items"]["features"]["coverage@100"] > 0.05
    assert cold["cold_items"]["most_popular"]["coverage@100"] == cold["cold_items"]["id_only"]["coverage@100"] == 0
    assert info["training"]["id_only"]["hit_rate@10"] > 0 and info["training"]["towers"] == "features"
    data = info["data"]
    assert (
        data["catalogue_items"] == 1682 and data["items_without_interactions"] == 235 and data["catalogue_users"] == 943
    )
    assert info["serving"]["dimensions"] == 32
