"""Held-out retrieval quality of the towers, next to a most-popular baseline.

Protocol: each user's latest positive interaction(s) are held out; both the
model and the baseline rank every item the user did not interact with in
training, and we report hit-rate@K and recall@K over all items.

Cold start (feature towers): a share of users and of items is held out
entirely (no training interaction at all). A held-out user is asked the warm
users' question -- their latest positive(s) -- answered from features alone,
with none of their history trained on. (Their *whole* history is a poor
target: its earliest ratings are the sign-up page's popular titles, which the
most-popular list hits for ~94% of users whatever the model.) For held-out
items we report how often warm users' positives on them reach the top K, and
the share of them that any warm user gets in a top K (`coverage@K`,
reachability).
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


def leave_last_out(users: np.ndarray, items: np.ndarray, timestamps: np.ndarray | None, holdout_per_user: int) -> Split:
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
        raise DataError(
            f"no user has more than {holdout_per_user} positive interactions to hold out; lower --holdout-per-user"
        )
    return Split(users[~is_test], items[~is_test], users[is_test], items[is_test])


def _sampled_test_users(split: Split, seed: int) -> np.ndarray:
    test_users = np.unique(split.test_users)
    if len(test_users) > MAX_EVAL_USERS:
        test_users = np.sort(np.random.default_rng(seed).choice(test_users, MAX_EVAL_USERS, replace=False))
    return test_users


def split_metrics(
    score_rows, split: Split, num_items: int, seed: int, seen: dict[int, np.ndarray] | None = None
) -> dict[str, float]:
    """score_rows(user_rows) -> [len(user_rows), num_items] scores; higher is better.

    `seen` (user row -> item rows) is what each user is never recommended: the served model's
    rule (towers/history.py); None = the training pairs.
    """
    users = _sampled_test_users(split, seed)
    if seen is None:
        seen = _group(split.train_users, split.train_items)
    held = _group(split.test_users, split.test_items)
    return ranking_metrics(score_rows, users, seen, held, num_items)


def ranking_metrics(
    score_rows,
    users: np.ndarray,
    seen: dict[int, np.ndarray],
    held: dict[int, np.ndarray],
    num_items: int,
    reach: np.ndarray | None = None,
) -> dict[str, float]:
    """Hit-rate and recall@K of `users` against their `held` items, `seen` items excluded.

    With `reach` (item rows), also the share of those items that appear in at least
    one user's top K (`coverage@K`): whether they can be recommended at all.
    """
    kmax = min(max(KS), num_items)
    covered = {k: set() for k in KS}
    hits = {k: [] for k in KS}
    recalls = {k: [] for k in KS}
    for start in range(0, len(users), 512):
        chunk = users[start : start + 512]
        scores = np.array(score_rows(chunk), dtype=np.float32, copy=True)
        for r, u in enumerate(chunk):
            scores[r, seen.get(int(u), [])] = -np.inf
        top = np.argpartition(-scores, kmax - 1, axis=1)[:, :kmax]
        top_scores = np.take_along_axis(scores, top, axis=1)
        top = np.take_along_axis(top, np.argsort(-top_scores, axis=1, kind="stable"), axis=1)
        for r, u in enumerate(chunk):
            if reach is not None:
                for k in KS:
                    covered[k].update(top[r, :k].tolist())
            truth = held.get(int(u))
            if truth is None:  # coverage-only user
                continue
            for k in KS:
                found = np.isin(truth, top[r, :k]).sum()
                hits[k].append(float(found > 0))
                recalls[k].append(found / len(truth))
    out: dict[str, float] = {"eval_users": float(len(hits[KS[0]]))}
    for k in KS:
        out[f"hit_rate@{k}"] = float(np.mean(hits[k])) if hits[k] else 0.0
        out[f"recall@{k}"] = float(np.mean(recalls[k])) if recalls[k] else 0.0
        if reach is not None:
            out[f"coverage@{k}"] = float(np.isin(reach, list(covered[k])).mean()) if len(reach) else 0.0
    return out


def _group(users: np.ndarray, items: np.ndarray) -> dict[int, np.ndarray]:
    order = np.argsort(users, kind="stable")
    u, i = users[order], items[order]
    bounds = np.flatnonzero(np.diff(u)) + 1
    return {int(group[0]): vals for group, vals in zip(np.split(u, bounds), np.split(i, bounds)) if len(group)}


def model_metrics(
    user_vectors: np.ndarray, item_vectors: np.ndarray, split: Split, seed: int = 0, seen: dict | None = None
) -> dict[str, float]:
    """Hit-rate/recall@K of ranking all items by the towers' dot product."""
    return split_metrics(lambda rows: user_vectors[rows] @ item_vectors.T, split, len(item_vectors), seed, seen)


def popularity_metrics(split: Split, num_items: int, seed: int = 0, seen: dict | None = None) -> dict[str, float]:
    """The same metrics for recommending the most-interacted items to everyone."""
    counts = popularity_scores(split.train_items, num_items)
    return split_metrics(lambda rows: np.broadcast_to(counts, (len(rows), num_items)), split, num_items, seed, seen)


@dataclass(frozen=True)
class ColdStartSplit:
    """Warm leave-last-out split plus users and items held out of training entirely."""

    warm: Split
    cold_users: np.ndarray
    cold_items: np.ndarray
    cold_user_truth: dict[int, np.ndarray]  # held-out user -> its latest positive(s)
    cold_item_truth: dict[int, np.ndarray]  # warm user -> its positives among held-out items


def _pick(values: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    unique = np.unique(values)
    count = int(round(share * len(unique)))
    return np.sort(rng.choice(unique, size=count, replace=False)) if count else unique[:0]


def cold_start_split(
    users: np.ndarray,
    items: np.ndarray,
    timestamps: np.ndarray | None,
    holdout_per_user: int,
    cold_user_share: float,
    cold_item_share: float,
    seed: int = 0,
) -> ColdStartSplit:
    """Holds out `cold_user_share` of users and `cold_item_share` of items entirely, then leave-last-out."""
    rng = np.random.default_rng(seed)
    cold_users, cold_items = _pick(users, cold_user_share, rng), _pick(items, cold_item_share, rng)
    user_cold, item_cold = np.isin(users, cold_users), np.isin(items, cold_items)
    warm = ~user_cold & ~item_cold
    if not warm.any():
        raise DataError(
            "no interactions left for training after holding out cold users/items; lower --cold-users/--cold-items"
        )
    split = leave_last_out(
        users[warm], items[warm], timestamps[warm] if timestamps is not None else None, holdout_per_user
    )
    latest = _latest(users, timestamps, max(holdout_per_user, 1)) & user_cold
    on_cold_items = ~user_cold & item_cold
    return ColdStartSplit(
        split,
        cold_users,
        cold_items,
        _group(users[latest], items[latest]),
        _group(users[on_cold_items], items[on_cold_items]),
    )


def _latest(users: np.ndarray, timestamps: np.ndarray | None, count: int) -> np.ndarray:
    """Marks each user's latest `count` interactions (row order stands in for time without timestamps)."""
    order_key = timestamps if timestamps is not None else np.arange(len(users), dtype=np.float64)
    order = np.lexsort((np.arange(len(users)), order_key, users))
    sorted_users = users[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_users)) + 1]
    counts = np.diff(np.r_[starts, len(users)])
    from_end = np.repeat(starts + counts, counts) - np.arange(len(users)) - 1
    out = np.zeros(len(users), bool)
    out[order] = from_end < count
    return out


def popularity_scores(train_items: np.ndarray, num_items: int) -> np.ndarray:
    """Training counts with a tiny decreasing tie-break (deterministic ranking)."""
    counts = np.bincount(train_items, minlength=num_items).astype(np.float32)
    return counts - np.arange(num_items, dtype=np.float32) * 1e-6


def popularity_score_rows(train_items: np.ndarray, num_items: int):
    """score_rows for the most-popular baseline (the same list for everyone)."""
    counts = popularity_scores(train_items, num_items)
    return lambda rows: np.broadcast_to(counts, (len(rows), num_items))


def vector_score_rows(user_vectors: np.ndarray, item_vectors: np.ndarray, servable_items: np.ndarray | None = None):
    """score_rows for a model: dot products; items outside `servable_items` (a mask) never appear."""
    blocked = None if servable_items is None else np.where(servable_items, 0.0, -np.inf).astype(np.float32)
    if blocked is None:
        return lambda rows: user_vectors[rows] @ item_vectors.T
    return lambda rows: user_vectors[rows] @ item_vectors.T + blocked


def cold_start_metrics(
    split: ColdStartSplit,
    score_rows,
    num_items: int,
    seed: int = 0,
    cold_users: bool = True,
    seen: dict[int, np.ndarray] | None = None,
) -> dict:
    """Quality for held-out users (`cold_users`) and held-out items (`cold_items`).

    `cold_users=False` skips the held-out users (a model that cannot embed unknown ids). `seen`:
    what warm users are never recommended (split_metrics); None = their training pairs.
    """
    warm = split.warm
    cold_users_out = None
    if cold_users:
        cold_users_out = ranking_metrics(
            score_rows, _cold_user_sample(split, seed), {}, split.cold_user_truth, num_items
        )
    warm_users = _sampled_test_users(
        Split(warm.train_users, warm.train_items, warm.train_users, warm.train_items), seed
    )
    if seen is None:
        seen = _group(warm.train_users, warm.train_items)
    return {
        "cold_users": cold_users_out,
        "cold_items": ranking_metrics(
            score_rows, warm_users, seen, split.cold_item_truth, num_items, reach=split.cold_items
        ),
    }


def _cold_user_sample(split: ColdStartSplit, seed: int) -> np.ndarray:
    cold_users = np.asarray(sorted(split.cold_user_truth), dtype=np.int64)
    if len(cold_users) > MAX_EVAL_USERS:
        cold_users = np.sort(np.random.default_rng(seed).choice(cold_users, MAX_EVAL_USERS, replace=False))
    return cold_users
