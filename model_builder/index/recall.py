"""Recall against exact search: the measure the index search tunes with and the recall gate checks.

A returned row counts as correct when its exact score reaches the query's exact k-th best score,
so ties between equal vectors are not punished; a padding row (-1) is a miss.
"""

from __future__ import annotations

import numpy as np

# The gate's defaults: build --target-recall and --verify-queries, verify --target-recall/--queries.
DEFAULT_TARGET_RECALL = 0.95
DEFAULT_QUERIES = 1000


def _exact_scores(queries: np.ndarray, candidates: np.ndarray, distance: str) -> np.ndarray:
    sims = queries @ candidates.T
    if distance == "squared_l2":
        sims = 2 * sims - (queries**2).sum(1, keepdims=True) - (candidates**2).sum(1)[None, :]
    return sims


# Scores held at once by exact search: 256 queries x 131,072 candidates (128 MiB of float32).
# Whole rows of 256 x N scores took 4 GiB per block at N = 4M, and the verify process past 16 GiB
# (benchmarks/README.md "Sharding").
_QUERY_BLOCK = 256
_CANDIDATE_BLOCK = 131_072


def exact_kth_scores(
    queries: np.ndarray, candidates: np.ndarray, k: int, distance: str, exclude_rows: np.ndarray | None = None
) -> np.ndarray:
    """The exact k-th best score of every query (computed once, reused for many configs).

    `exclude_rows` ([n] or [n, m] candidate rows; values outside the catalogue, i.e. padding, are
    ignored) are what the served answer may not contain: exact search runs without them.
    Memory stays bounded at any catalogue size: candidates are scored in blocks and only each
    query's best k are kept between blocks.
    """
    out = np.empty(len(queries), np.float32)
    if exclude_rows is not None and exclude_rows.ndim == 1:
        exclude_rows = exclude_rows[:, None]
    for start in range(0, len(queries), _QUERY_BLOCK):
        block = queries[start : start + _QUERY_BLOCK]
        excluded = None if exclude_rows is None else exclude_rows[start : start + _QUERY_BLOCK]
        best = np.full((len(block), k), -np.inf, np.float32)
        for first in range(0, len(candidates), _CANDIDATE_BLOCK):
            sims = _exact_scores(block, candidates[first : first + _CANDIDATE_BLOCK], distance).astype(np.float32)
            if excluded is not None:
                local = excluded - first
                query, column = np.nonzero((excluded >= 0) & (local >= 0) & (local < sims.shape[1]))
                sims[query, local[query, column]] = -np.inf
            merged = np.concatenate([best, sims], axis=1)
            merged.partition(merged.shape[1] - k, axis=1)
            best = merged[:, -k:]
        out[start : start + _QUERY_BLOCK] = best.min(axis=1)
    return out


def per_query_recall(
    kth: np.ndarray, queries: np.ndarray, candidates: np.ndarray, returned_rows: np.ndarray, distance: str
) -> np.ndarray:
    """Each query's fraction of returned rows whose exact score reaches its exact k-th best score.

    A row of -1 (a padding entry: the index yielded fewer than k candidates) counts as a miss.
    """
    returned = returned_rows >= 0
    picked = candidates[np.where(returned, returned_rows, 0)]  # [n, k, dim]
    got = np.einsum("nd,nkd->nk", queries, picked)
    if distance == "squared_l2":
        got = 2 * got - (queries**2).sum(1)[:, None] - (picked**2).sum(2)
    tolerance = 1e-4 * np.maximum(1.0, np.abs(kth))
    return ((got >= (kth - tolerance)[:, None]) & returned).mean(axis=1)


def recall_against(
    kth: np.ndarray, queries: np.ndarray, candidates: np.ndarray, returned_rows: np.ndarray, distance: str
) -> float:
    """Mean recall over the queries (per_query_recall)."""
    return float(per_query_recall(kth, queries, candidates, returned_rows, distance).mean())


def recall_at_k(
    queries: np.ndarray,
    candidates: np.ndarray,
    returned_rows: np.ndarray,
    distance: str,
    exclude_rows: np.ndarray | None = None,
) -> float:
    """Recall@k of returned rows against exact search (ties with the k-th score count as correct)."""
    kth = exact_kth_scores(queries, candidates, returned_rows.shape[1], distance, exclude_rows)
    return recall_against(kth, queries, candidates, returned_rows, distance)
