"""Exact search for the recall measures runs in bounded memory (candidate blocks, best k kept
between them) and gives the same k-th best scores as scoring every candidate at once.

Whole rows of scores took the 4M x 64 build's verify process past 16 GiB (benchmarks/README.md
"Sharding"); this pins the blocked version to the plain computation across block edges."""

from __future__ import annotations

import numpy as np
import pytest

from model_builder.index import recall


def plain_kth(queries, candidates, k, distance, exclude):
    sims = recall._exact_scores(queries, candidates, distance)
    for row, columns in enumerate(exclude):
        sims[row, columns[(columns >= 0) & (columns < len(candidates))]] = -np.inf
    return np.sort(sims, axis=1)[:, -k]


@pytest.mark.parametrize("distance", ["dot_product", "squared_l2"])
def test_blocked_exact_search_equals_scoring_everything_at_once(distance):
    rng = np.random.default_rng(1)
    candidates = rng.normal(size=(recall._CANDIDATE_BLOCK + 777, 8)).astype(np.float32)
    queries = rng.normal(size=(recall._QUERY_BLOCK + 13, 8)).astype(np.float32)
    exclude = rng.integers(-1, len(candidates) + 5, size=(len(queries), 4))
    # Each query's own best candidate, wherever its block, is excluded: the k-th best must move.
    exclude[:, 0] = np.argmax(recall._exact_scores(queries, candidates, distance), axis=1)
    got = recall.exact_kth_scores(queries, candidates, 10, distance, exclude)
    np.testing.assert_array_equal(got, plain_kth(queries, candidates, 10, distance, exclude))
    assert not np.array_equal(got, recall.exact_kth_scores(queries, candidates, 10, distance))


def test_fewer_candidates_than_k_leave_no_kth_score():
    rng = np.random.default_rng(2)
    kth = recall.exact_kth_scores(rng.normal(size=(3, 4)), rng.normal(size=(5, 4)), 10, "dot_product")
    assert np.isneginf(kth).all()
