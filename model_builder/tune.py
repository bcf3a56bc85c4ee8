"""Recall-targeted tuning of the search-time knobs, starting from the rule of thumb.

The rule of thumb fixes the index structure (leaves, AH codes); how many leaves
a query scans and how many candidates get exact re-scoring can still change
per search. We measure recall@k against exact search on held-out queries over
a small grid, keep for each reorder count the fewest leaves that reach the
target, time those frontier points, and serve the fastest one. The whole curve
goes into build_info.json.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from model_builder.index import ResolvedIndex
from model_builder.verify import exact_kth_scores, recall_against

# Tune a little above the gate so a different query sample at verification still passes.
MARGIN = 0.01
_TIMING_QUERIES = 256


@dataclass(frozen=True)
class Point:
    """One measured search configuration."""

    leaves_to_search: int | None
    reorder: int | None
    recall: float
    us_per_query: float | None = None


@dataclass(frozen=True)
class TuningResult:
    """The chosen knobs (None = index default) and everything measured on the way."""

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


def tune(searcher, index: ResolvedIndex, queries: np.ndarray, candidates: np.ndarray, count: int,
         target: float, log=print) -> TuningResult | None:
    """Finds the fastest (leaves_to_search, reorder) with recall@count >= target + MARGIN.

    Returns None for brute force (nothing to tune). If no grid point reaches the
    target, returns the highest-recall point; the recall gate then decides.
    """
    leaves, reorders = leaves_grid(index), reorder_grid(index, count)
    if not leaves and not reorders:
        return None
    started = time.perf_counter()
    goal = min(1.0, target + MARGIN)
    q = queries.astype(np.float32)
    kth = exact_kth_scores(q, candidates, count, index.distance)

    def measure(leaf: int | None, reorder: int | None) -> Point:
        rows, _ = searcher.search_batched(q, final_num_neighbors=count, pre_reorder_num_neighbors=reorder,
                                          leaves_to_search=leaf)
        return Point(leaf, reorder, recall_against(kth, q, candidates, rows.numpy(), index.distance))

    curve: list[Point] = []
    frontier: list[Point] = []
    for reorder in reorders or [None]:
        for leaf in leaves or [None]:
            point = measure(leaf, reorder)
            curve.append(point)
            if point.recall >= goal:
                frontier.append(point)
                break  # more leaves only cost time at this reorder count
    if not frontier:
        best = max(curve, key=lambda p: p.recall)
        log(f"tune: no configuration reached recall {goal:.3f}; best {best.recall:.4f} at "
            f"leaves_to_search={best.leaves_to_search}, reorder={best.reorder}")
        return TuningResult(target, best.leaves_to_search, best.reorder, best.recall, curve, time.perf_counter() - started)
    timed = [_timed(searcher, q[:_TIMING_QUERIES], count, p) for p in frontier]
    chosen = min(timed, key=lambda p: p.us_per_query)
    curve = [next((t for t in timed if (t.leaves_to_search, t.reorder) == (p.leaves_to_search, p.reorder)), p) for p in curve]
    log(f"tune: {len(curve)} configurations measured; fastest reaching recall {goal:.3f}: "
        f"leaves_to_search={chosen.leaves_to_search}, reorder={chosen.reorder} "
        f"(recall {chosen.recall:.4f}, {chosen.us_per_query:.0f} us/query in a batch)")
    return TuningResult(target, chosen.leaves_to_search, chosen.reorder, chosen.recall, curve, time.perf_counter() - started)


def _timed(searcher, queries: np.ndarray, count: int, point: Point, repeats: int = 5) -> Point:
    best = float("inf")
    for _ in range(repeats):  # best of N: the least disturbed run is the most repeatable
        start = time.perf_counter()
        searcher.search_batched(queries, final_num_neighbors=count, pre_reorder_num_neighbors=point.reorder,
                                leaves_to_search=point.leaves_to_search)
        best = min(best, time.perf_counter() - start)
    return Point(point.leaves_to_search, point.reorder, point.recall, best / len(queries) * 1e6)
