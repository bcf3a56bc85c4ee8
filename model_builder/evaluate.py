"""Held-out retrieval quality of the towers, next to a most-popular baseline.

Protocol: each user's latest positive interaction(s) are held out; both the
model and the baseline rank every item the user did not interact with in
training, and we report hit-rate@K and recall@K over all items.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model_builder.errors import DataError

KS = (10, 100)
# Enough users for a stable estimate without an O(users x items) bill on big catalogues.
MAX_EVAL_USERS = 5000


@dataclass(frozen=True)
class Vocab:
    """Sorted unique ids; `rows` maps each interaction to its row in `ids`."""

    ids: np.ndarray
    rows: np.ndarray

    @classmethod
    def build(cls, values: np.ndarray) -> Vocab:
        """Builds the vocabulary of an id column."""
        ids, rows = np.unique(values, return_inverse=True)
        return cls(ids=ids, rows=rows.astype(np.int64))


@dataclass(frozen=True)
class Split:
    """Training pairs and held-out pairs as (user row, item row)."""

    train_users: np.ndarray
    train_items: np.ndarray
    test_users: np.ndarray
    test_items: np.ndarray


def leave_last_out(users: np.ndarray, items: np.ndarray, timestamps: np.ndarray | None,
                   holdout_per_user: int) -> Split:
    """Holds out each user's latest `holdout_per_user` positives (users need one more to train on)."""
    if len(users) == 0:
        raise DataError("no positive interactions: lower --min-weight or check the weight column")
    order_key = timestamps if timestamps is not None else np.arange(len(users), dtype=np.float64)
    order = np.lexsort((np.arange(len(users)), order_key, users))  # by user, then time, then file order
    sorted_users = users[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_users)) + 1]
    counts = np.diff(np.r_[starts, len(users)])
    position_from_end = np.repeat(starts + counts, counts) - np.arange(len(users)) - 1
    eligible = np.repeat(counts > holdout_per_user, counts)
    is_test = np.zeros(len(users), bool)
    is_test[order] = eligible & (position_from_end < holdout_per_user)
    if holdout_per_user > 0 and not is_test.any():
        raise DataError(f"no user has more than {holdout_per_user} positive interactions to hold out; lower --holdout-per-user")
    return Split(users[~is_test], items[~is_test], users[is_test], items[is_test])


def _sampled_test_users(split: Split, seed: int) -> np.ndarray:
    test_users = np.unique(split.test_users)
    if len(test_users) > MAX_EVAL_USERS:
        test_users = np.sort(np.random.default_rng(seed).choice(test_users, MAX_EVAL_USERS, replace=False))
    return test_users


def _metrics_from_scores(score_rows, split: Split, num_items: int, seed: int) -> dict[str, float]:
    """score_rows(user_rows) -> [len(user_rows), num_items] scores; higher is better."""
    users = _sampled_test_users(split, seed)
    seen = _group(split.train_users, split.train_items)
    held = _group(split.test_users, split.test_items)
    kmax = min(max(KS), num_items)
    hits = {k: [] for k in KS}
    recalls = {k: [] for k in KS}
    for start in range(0, len(users), 512):
        chunk = users[start:start + 512]
        scores = np.array(score_rows(chunk), dtype=np.float32, copy=True)
        for r, u in enumerate(chunk):
            scores[r, seen.get(int(u), [])] = -np.inf
        top = np.argpartition(-scores, kmax - 1, axis=1)[:, :kmax]
        top_scores = np.take_along_axis(scores, top, axis=1)
        top = np.take_along_axis(top, np.argsort(-top_scores, axis=1, kind="stable"), axis=1)
        for r, u in enumerate(chunk):
            truth = held[int(u)]
            for k in KS:
                found = np.isin(truth, top[r, :k]).sum()
                hits[k].append(float(found > 0))
                recalls[k].append(found / len(truth))
    out: dict[str, float] = {"eval_users": float(len(users))}
    for k in KS:
        out[f"hit_rate@{k}"] = float(np.mean(hits[k]))
        out[f"recall@{k}"] = float(np.mean(recalls[k]))
    return out


def _group(users: np.ndarray, items: np.ndarray) -> dict[int, np.ndarray]:
    order = np.argsort(users, kind="stable")
    u, i = users[order], items[order]
    bounds = np.flatnonzero(np.diff(u)) + 1
    return {int(group[0]): vals for group, vals in zip(np.split(u, bounds), np.split(i, bounds)) if len(group)}


def model_metrics(user_vectors: np.ndarray, item_vectors: np.ndarray, split: Split, seed: int = 0) -> dict[str, float]:
    """Hit-rate/recall@K of ranking all items by the towers' dot product."""
    return _metrics_from_scores(lambda rows: user_vectors[rows] @ item_vectors.T, split, len(item_vectors), seed)


def popularity_metrics(split: Split, num_items: int, seed: int = 0) -> dict[str, float]:
    """The same metrics for recommending the most-interacted items to everyone."""
    counts = np.bincount(split.train_items, minlength=num_items).astype(np.float32)
    # Tiny decreasing tie-break keeps the ranking deterministic.
    counts -= np.arange(num_items, dtype=np.float32) * 1e-6
    return _metrics_from_scores(lambda rows: np.broadcast_to(counts, (len(rows), num_items)), split, num_items, seed)
