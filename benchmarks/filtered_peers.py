"""hnswlib's filtered search as a peer of benchmarks/filtered.py (issue 19 item 3), matched to our
recall per selectivity the way filtered.faiss_matched matches Faiss: sweep ef, keep the cheapest
setting reaching our recall there, one-row calls, one thread.

hnswlib 0.8.0 filters with a Python callable label -> bool passed to knn_query(filter=...)
(python_bindings/bindings.cpp, CustomFilterFunctor; examples/python/example_filter.py sets
num_threads=1 because the callable takes the GIL). The graph walk calls it on the nodes it would
add to its result heap (hnswlib/hnswalg.h, searchBaseLayerST with isIdAllowed), so a tight filter
walks far: at 0.1 % a large ef visits most of the graph. A per-level time budget stops the sweep
there and the JSON says so (`stopped`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

HNSWLIB_EF = (16, 32, 64, 128, 256, 512, 1024, 2048)
# Graph build: M 16 (hnswlib's README example) and ef_construction 40, Faiss HNSW32's default
# efConstruction (faiss/IndexHNSW.cpp), so the build costs about what Faiss's did on 2 cores.
HNSWLIB_M = 16
HNSWLIB_EF_CONSTRUCTION = 40


@dataclass(frozen=True)
class SweepStep:
    """One ef of the sweep: recall@10 over the queries and the p50 of one-row calls."""

    param: int
    recall_at_10: float
    p50_ms: float
    cpu_p50_ms: float
    seconds: float


def hnswlib_index(base: np.ndarray, threads: int = 2):
    """hnswlib.Index(space='ip') over `base`, labels = row numbers; (index, build seconds)."""
    import hnswlib

    n, d = base.shape
    start = time.perf_counter()
    index = hnswlib.Index(space="ip", dim=d)
    index.init_index(max_elements=n, ef_construction=HNSWLIB_EF_CONSTRUCTION, M=HNSWLIB_M, random_seed=0)
    index.set_num_threads(threads)  # the build may use both cores, like Faiss's
    index.add_items(base, np.arange(n))
    index.set_num_threads(1)
    return index, time.perf_counter() - start


def filtered_call(index, allowed: list[bool], k: int):
    """One-row filtered search -> [1, k] labels, -1 where hnswlib found fewer than k allowed items."""
    accept = allowed.__getitem__  # a builtin: the cheapest callable pybind11 can call per node

    def call(q: np.ndarray) -> np.ndarray:
        try:
            labels, _ = index.knn_query(q, k=k, num_threads=1, filter=accept)
        except RuntimeError:
            # bindings.cpp raises "Cannot return the results in a contiguous 2D array" when the walk
            # found fewer than k allowed items; those rows count as misses, like our -1 padding.
            return np.full((1, k), -1, np.int64)
        return labels.astype(np.int64)

    return call


def hnswlib_matched(
    base: np.ndarray, queries: np.ndarray, levels, targets: dict, repeats: int, budget_s: float = 120.0
) -> dict:
    """Per level, the cheapest ef reaching our recall there (`matched`), or the sweep so far.

    `levels` are filtered.Level (mask, exact filtered top-k); `targets` our recall per fraction.
    A sweep step taking over `budget_s` ends that level's sweep (`stopped` names the ef).
    """
    from benchmarks.common import log
    from benchmarks.filtered import K, recall, timed

    index, build_s = hnswlib_index(base)
    log(f"filtered: hnswlib built in {build_s:.1f} s")
    out: dict = {
        "kind": "hnswlib",
        "M": HNSWLIB_M,
        "ef_construction": HNSWLIB_EF_CONSTRUCTION,
        "build_s": round(build_s, 1),
        "levels": {},
    }
    for level in levels:
        call = filtered_call(index, level.mask.tolist(), K)
        target = targets[level.fraction]
        sweep: list[SweepStep] = []
        stopped = None
        for ef in HNSWLIB_EF:
            index.set_ef(ef)
            start = time.perf_counter()
            rows, latency = timed(call, queries, 1)
            got = round(recall(rows, level.truth), 4)
            step = SweepStep(ef, got, latency["p50_ms"], latency["cpu_p50_ms"], time.perf_counter() - start)
            sweep.append(step)
            if step.recall_at_10 >= target:
                break
            if step.seconds > budget_s:
                stopped = ef
                break
        entries = [
            {"param": s.param, "recall_at_10": s.recall_at_10, "p50_ms": s.p50_ms, "cpu_p50_ms": s.cpu_p50_ms}
            for s in sweep
        ]
        matched = None
        if sweep and sweep[-1].recall_at_10 >= target:
            index.set_ef(sweep[-1].param)
            _, latency = timed(call, queries, repeats)
            matched = {**entries[-1], **{k: latency[k] for k in ("p50_ms", "p50_ms_repeats", "cpu_p50_ms")}}
            entries[-1] = matched
        out["levels"][str(level.fraction)] = {
            "target": round(target, 4),
            "matched": matched,
            "sweep": entries,
            "stopped": stopped,
            "sweep_s": round(sum(s.seconds for s in sweep), 1),
        }
        log(f"filtered: hnswlib {level.fraction:g}: target {target}, matched {matched}, stopped at {stopped}")
    return out
