"""Synthetic data with planted structure, for fast tests and benchmarks only."""

from __future__ import annotations

import numpy as np

from model_builder.data.features import FeatureColumn, FeatureTable
from model_builder.data.interactions import Dataset, Interactions

NAME = "synthetic"


def interactions(
    num_users: int = 400,
    num_items: int = 600,
    num_clusters: int = 8,
    per_user: int = 30,
    in_cluster: float = 0.9,
    string_ids: bool = False,
    seed: int = 0,
    with_features: bool = False,
) -> Dataset:
    """Users and items each belong to a cluster; users mostly pick items of their own.

    Within a cluster item popularity is Zipf-like, so a popularity baseline is
    decent but a model that learns the clusters beats it clearly. With
    `with_features`, users get a noisy `segment` (their cluster 80% of the time)
    and an `age`, items `tags` (their cluster's tag plus a random one) and a
    `year`: enough to place a user or item never seen in training.
    """
    rng = np.random.default_rng(seed)
    user_cluster = rng.integers(num_clusters, size=num_users)
    item_cluster = rng.integers(num_clusters, size=num_items)
    members = [np.flatnonzero(item_cluster == c) for c in range(num_clusters)]
    users, items = [], []
    for u in range(num_users):
        own = members[user_cluster[u]]
        for _ in range(per_user):
            pool = own if (rng.random() < in_cluster and len(own)) else np.arange(num_items)
            rank = min(int(rng.zipf(1.3)) - 1, len(pool) - 1)
            users.append(u)
            items.append(pool[rank])
    user_ids = np.asarray(users, dtype=np.int64) + 1
    item_ids = np.asarray(items, dtype=np.int64) + 1
    item_key = {i + 1: i + 1 for i in range(num_items)}
    if string_ids:
        user_ids = np.asarray([f"u{u}" for u in user_ids], dtype=object)
        item_ids = np.asarray([f"i{i}" for i in item_ids], dtype=object)
        item_key = {i + 1: f"i{i + 1}" for i in range(num_items)}
    inter = Interactions(
        user_ids=user_ids,
        item_ids=item_ids,
        weights=np.ones(len(users), np.float32),
        timestamps=np.arange(len(users), dtype=np.float64),
        source=f"synthetic(users={num_users}, items={num_items}, seed={seed})",
    )
    titles = {key: f"item {key} (cluster {item_cluster[n - 1]})" for n, key in item_key.items()}
    if not with_features:
        return Dataset(NAME, inter, titles)
    all_users = np.arange(1, num_users + 1, dtype=np.int64)
    all_items = np.asarray(list(item_key.values()), dtype=object if string_ids else np.int64)
    if string_ids:
        all_users = np.asarray([f"u{u}" for u in all_users], dtype=object)
    return Dataset(
        NAME,
        inter,
        titles,
        user_features=_user_features(all_users, user_cluster, num_clusters, rng),
        item_features=_item_features(all_items, item_cluster, num_clusters, rng),
    )


def _user_features(ids: np.ndarray, cluster: np.ndarray, num_clusters: int, rng) -> FeatureTable:
    noisy = np.where(rng.random(len(ids)) < 0.8, cluster, rng.integers(num_clusters, size=len(ids)))
    segment = np.asarray([f"s{c}" for c in noisy], dtype=object)
    age = 20 + 5 * cluster + rng.normal(scale=3, size=len(ids))
    return FeatureTable(
        ids,
        (FeatureColumn("segment", "categorical", segment), FeatureColumn("age", "numeric", age, buckets=5)),
        "synthetic",
    )


def _item_features(ids: np.ndarray, cluster: np.ndarray, num_clusters: int, rng) -> FeatureTable:
    tags = np.empty(len(ids), dtype=object)
    tags[:] = [(f"t{c}", f"t{rng.integers(num_clusters)}") for c in cluster]
    year = 1990 + rng.integers(30, size=len(ids)).astype(np.float64)
    return FeatureTable(
        ids, (FeatureColumn("tags", "multi", tags), FeatureColumn("year", "numeric", year, buckets=4)), "synthetic"
    )


def clustered_embeddings(num: int, dim: int, num_clusters: int = 100, spread: float = 0.3, seed: int = 0) -> np.ndarray:
    """L2-normalized float32 vectors around random centres (what real embeddings look like).

    I.i.d. Gaussian data is the worst case for quantization and says little about
    real catalogues, so tests and benchmarks use this instead.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_clusters, dim)).astype(np.float32)
    labels = rng.integers(num_clusters, size=num)
    out = np.empty((num, dim), np.float32)
    for start in range(0, num, 262_144):  # bounded memory for millions of rows
        stop = min(num, start + 262_144)
        noise = rng.normal(scale=spread, size=(stop - start, dim)).astype(np.float32)
        out[start:stop] = centres[labels[start:stop]] + noise
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out
