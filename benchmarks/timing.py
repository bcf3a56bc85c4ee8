"""Measurement loops shared by every engine: single-query latency, batch throughput, recall.

An engine is a function `search(vectors[b, d]) -> rows[b, k]` that returns the
base rows it found (our ids are row numbers). Loops are bounded in count and in
time, so a slow configuration (exact search over 1M) cannot stall a run.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from benchmarks.common import percentiles

Search = Callable[[np.ndarray], np.ndarray]


def latency(search: Search, queries: np.ndarray, count: int, max_s: float, warm: int = 5, raw: bool = False):
    """One query per call, back to back: p50/p99 over up to `count` calls or `max_s` seconds (raw: the samples)."""
    for i in range(min(warm, len(queries))):
        search(queries[i : i + 1])
    samples: list[float] = []
    deadline = time.perf_counter() + max_s
    for i in range(count):
        row = queries[i % len(queries)][None, :]
        start = time.perf_counter()
        search(row)
        samples.append(time.perf_counter() - start)
        if start > deadline:
            break
    if raw:
        return samples
    out = percentiles(samples)
    # 1 / median: robust to bursts of other work on a shared 2-core machine (mean-based qps kept too).
    out["qps"] = round(1e3 / out["p50_ms"], 1) if samples else 0.0
    out["qps_mean"] = round(len(samples) / sum(samples), 1) if samples else 0.0
    return out


def throughput(search: Search, queries: np.ndarray, batch: int, max_s: float, max_batches: int) -> dict:
    """Batches of `batch` queries back to back: queries per second over up to max_s / max_batches."""
    starts = [(i * batch) % len(queries) for i in range(max(1, len(queries) // batch))]
    search(_take(queries, starts[0], batch))
    samples: list[float] = []
    began = time.perf_counter()
    for n in range(max_batches):
        chunk = _take(queries, starts[n % len(starts)], batch)
        start = time.perf_counter()
        search(chunk)
        samples.append(time.perf_counter() - start)
        if time.perf_counter() - began > max_s:
            break
    wall = time.perf_counter() - began
    # batch / median batch time: robust to bursts of other work; the wall-clock rate is kept too.
    return {
        "batch": batch,
        "batches": len(samples),
        "qps": round(batch / float(np.median(samples)), 1),
        "qps_wall": round(len(samples) * batch / wall, 1),
        "batch_latency": percentiles(samples),
    }


def _take(queries: np.ndarray, start: int, batch: int) -> np.ndarray:
    idx = (np.arange(batch) + start) % len(queries)
    return np.ascontiguousarray(queries[idx])


def recall(
    search: Search, queries: np.ndarray, kth: np.ndarray, base: np.ndarray, distance: str, batch: int = 64
) -> float:
    """recall@k of the engine on every query against exact search (ties with the k-th score count)."""
    from model_builder.index.recall import recall_against

    rows = np.concatenate([search(queries[s : s + batch]) for s in range(0, len(queries), batch)])
    return round(recall_against(kth, queries, base, rows.astype(np.int64), distance), 4)


def batch_curve(search: Search, queries: np.ndarray, sizes: list[int], max_s_each: float, reps: int = 50) -> list[dict]:
    """Cost of one call per batch size: what merging requests (TF Serving batching) can save per query."""
    out = []
    for size in sizes:
        chunk = _take(queries, 0, size)
        search(chunk)
        samples: list[float] = []
        deadline = time.perf_counter() + max_s_each
        for _ in range(reps):
            start = time.perf_counter()
            search(chunk)
            samples.append(time.perf_counter() - start)
            if start > deadline:
                break
        median = float(np.median(samples))
        out.append(
            {
                "batch": size,
                "calls": len(samples),
                "median_call_ms": round(median * 1e3, 4),
                "us_per_query": round(median / size * 1e6, 2),
                "qps": round(size / median, 1),
            }
        )
    return out
