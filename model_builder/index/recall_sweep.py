"""Recall sweep of one index's search-time knobs: which (leaves, reorder) settings reach the target.

How many leaves a query scans and how many candidates get exact re-scoring can
change per search without rebuilding the index. For one built index we measure
recall@k against exact search on held-out queries and keep, for each reorder
count, the fewest leaves whose recall clears the goal by a confidence margin
(see CONFIDENCE_Z): the knob frontier. Which frontier point is fastest is decided by timing it through the
serving graph (model_builder/index/search.py, graph_timing.py), not here.

Recall grows with both knobs, so each reorder count needs a binary search over
the leaves grid only, and a smaller reorder count never needs fewer leaves than
a larger one: reorder counts are visited from the largest down, each search
starting where the previous one ended, and the sweep stops at the first count
that no number of leaves rescues.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from model_builder.index.config import ResolvedIndex
from model_builder.index.recall import DEFAULT_QUERIES, per_query_recall

# The recall gate (verify.py) measures the served setting again on its own sample of
# --verify-queries queries. A setting is accepted only when its recall clears the goal by
# CONFIDENCE_Z standard errors of the difference between the two sample means, so one accepted
# right at the bound still passes the gate 99 times in 100. A fixed margin does not do that:
# per-query recall of a tree spreads widely (a query near a leaf boundary misses half its
# neighbours), so a fixed margin lets the gate's own sample land below the goal.
CONFIDENCE_Z = 2.33


def margin(per_query: np.ndarray, gate_queries: int) -> float:
    """How far a mean recall over `per_query` must clear the goal (see CONFIDENCE_Z)."""
    if len(per_query) < 2:
        return 0.0
    spread = float(np.std(per_query, ddof=1))
    return CONFIDENCE_Z * spread * float(np.sqrt(1 / len(per_query) + 1 / max(1, gate_queries)))


@dataclass(frozen=True)
class Point:
    """One search setting of a built index (None = the index default), its recall and confidence margin."""

    leaves_to_search: int | None
    reorder: int | None
    recall: float
    margin: float

    def reaches(self, goal: float) -> bool:
        """True when the recall clears `goal` with the confidence margin."""
        return self.recall - self.margin >= goal


@dataclass(frozen=True)
class Sweep:
    """Every setting measured on one index, and the frontier of those reaching the goal."""

    goal: float
    measured: tuple[Point, ...]
    frontier: tuple[Point, ...]
    complete: bool  # False when the deadline cut the sweep short
    seconds: float

    def best_recall(self) -> Point:
        """The highest-recall setting measured (what a failed search falls back to)."""
        return max(self.measured, key=lambda p: p.recall)


@dataclass(frozen=True)
class TuningResult:
    """The served knobs (None = index default), their recall and every setting measured (build_info "tuning")."""

    target: float
    leaves_to_search: int | None
    reorder: int | None
    recall: float
    curve: list[Point]
    seconds: float

    def to_dict(self) -> dict:
        """JSON-ready form for build_info.json."""
        return {**asdict(self), "curve": [asdict(p) for p in self.curve]}


def _grid(values: list[int], low: int, high: int) -> list[int]:
    return sorted({v for v in values if low <= v <= high})


def leaves_grid(index: ResolvedIndex) -> list[int]:
    """Leaves-to-search candidates: geometric steps from 1 to all leaves, plus the rule of thumb."""
    if not index.num_leaves:
        return []
    steps = [int(round(x)) for x in np.geomspace(1, index.num_leaves, 14)] + [index.num_leaves_to_search]
    return _grid(steps, 1, index.num_leaves)


def reorder_grid(index: ResolvedIndex, count: int) -> list[int]:
    """Reorder candidates: from just above k up to 16x the rule of thumb (bounded by N)."""
    if not index.reorder_num_neighbors:
        return []
    base = index.reorder_num_neighbors
    steps = [count + 1, 2 * count, 4 * count, base // 2, base, 2 * base, 4 * base, 8 * base, 16 * base]
    return _grid(steps, count + 1, index.num_candidates)


def sweep(
    searcher,
    index: ResolvedIndex,
    queries: np.ndarray,
    kth: np.ndarray,
    candidates: np.ndarray,
    count: int,
    goal: float,
    deadline: float | None = None,
    gate_queries: int = DEFAULT_QUERIES,
) -> Sweep:
    """Measures recall@count of `searcher` over its knob grid; returns the settings reaching `goal`.

    `kth` holds each query's exact count-th best score (recall.exact_kth_scores).
    `deadline` (time.monotonic()) stops the sweep between measurements.
    `gate_queries`: the recall gate's sample size, which sets the confidence margin.
    Brute force has no knobs: one measurement.
    """
    started = time.perf_counter()
    q = np.ascontiguousarray(queries, dtype=np.float32)
    cache: dict[tuple, Point] = {}
    cut = False

    def measure(leaves: int | None, reorder: int | None) -> Point | None:
        nonlocal cut
        if (leaves, reorder) not in cache:
            if deadline is not None and cache and time.monotonic() > deadline:
                cut = True
                return None
            rows, _ = searcher.search_batched_parallel(
                q, final_num_neighbors=count, pre_reorder_num_neighbors=reorder, leaves_to_search=leaves
            )
            each = per_query_recall(kth, q, candidates, rows.numpy(), index.distance)
            cache[(leaves, reorder)] = Point(leaves, reorder, float(each.mean()), margin(each, gate_queries))
        return cache[(leaves, reorder)]

    leaves, reorders = leaves_grid(index), reorder_grid(index, count)
    frontier: list[Point] = []
    if not reorders:
        point = measure(None, None)
        frontier = [point] if point and point.reaches(goal) else []
    elif not leaves:
        frontier = _smallest_reaching(lambda r: measure(None, r), reorders, goal)
    else:
        low = 0
        for reorder in reversed(reorders):
            found = _smallest_reaching(lambda lv, r=reorder: measure(lv, r), leaves[low:], goal)
            if not found:
                break
            low = leaves.index(found[0].leaves_to_search)
            if frontier and frontier[-1].leaves_to_search == found[0].leaves_to_search:
                frontier.pop()  # same leaves with more reordering: only slower
            frontier.append(found[0])
    measured = tuple(sorted(cache.values(), key=lambda p: (p.reorder or 0, p.leaves_to_search or 0)))
    return Sweep(goal, measured, tuple(frontier), not cut, time.perf_counter() - started)


def _smallest_reaching(measure: Callable[[int], Point | None], grid: list[int], goal: float) -> list[Point]:
    """Binary search for the first grid value that reaches goal (recall grows along the grid)."""
    low, high, best = 0, len(grid) - 1, None
    while low <= high:
        mid = (low + high) // 2
        point = measure(grid[mid])
        if point is None:  # deadline
            break
        if point.reaches(goal):
            best, high = point, mid - 1
        else:
            low = mid + 1
    return [best] if best else []
