"""The local server's batch scheduler (model_builder/serve) timed like the C++ harness: one worker process.

    python -m benchmarks.scheduler_local VERSION_DIR TEST_NPZ GRID [CANDIDATES_NPZ]   (prints one JSON line)

The version is loaded once with the local server's own loader (TF1 Session, no warmup); each
setting wraps that session in a fresh BatchingSession on a fresh SharedBatchScheduler, exactly as
`model_builder serve --enable_batching` does per version, and closed-loop Python threads call it
(the gRPC servicer's threads call `session_run` the same way). "Plain" calls the session directly.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.common import load_average
from benchmarks.scheduler_grid import GRIDS, PLAIN, Grid, Sample, Setting, cell


def closed_loop(run_one, callers: int, calls_each: int) -> Sample:
    """`callers` threads, each `calls_each` back-to-back calls; QPS over the wall time, latency percentiles."""
    latencies: list[list[float]] = [[] for _ in range(callers)]
    failed = [0] * callers
    start = threading.Barrier(callers + 1)

    def caller(i: int) -> None:
        start.wait()
        for j in range(calls_each):
            t0 = time.perf_counter()
            try:
                run_one(i * 7 + j)
            except Exception:  # counted, as the harness counts a failed Run
                failed[i] += 1
            latencies[i].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(callers)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    us = np.concatenate([np.asarray(x) for x in latencies]) * 1e6
    return Sample(float(us.size / wall), float(np.percentile(us, 50)), float(np.percentile(us, 99)), sum(failed))


def recall_at_k(rows: np.ndarray, test: np.ndarray, base: np.ndarray, kth: np.ndarray) -> float:
    """Recall@k as the builder counts it: a returned row is correct when its exact score reaches the k-th best."""
    valid = rows >= 0
    scores = np.einsum("qd,qkd->qk", test, base[np.where(valid, rows, 0)])
    return float(((scores >= kth[:, None] - 1e-6) & valid).sum() / rows.size)


def served_recall(loaded, test_npz: Path, candidates_npz: Path) -> float:
    """The version's recall@k on the test queries (ids are catalogue row numbers in the benchmarks)."""
    with np.load(test_npz) as t, np.load(candidates_npz) as c:
        test, kth, base = t["vectors"].astype(np.float32), t["kth"], c["vectors"]
    rows = np.concatenate(
        [
            loaded.run("search_by_vector", {"vectors": test[i : i + 100]}, ["ids"])["ids"]
            for i in range(0, len(test), 100)
        ]
    )
    return round(recall_at_k(rows.astype(np.int64), test, base, kth), 4)


def _params(setting: Setting):
    from model_builder.compat.tfs_batching import BatchingParameters

    return BatchingParameters(**setting.key_values())


def measure(version_dir: Path, test_npz: Path, grid: Grid, candidates_npz: Path | None = None) -> dict:
    """Every cell of the grid through the local server's session and batching session, `grid.runs` rounds."""
    from model_builder.serve import models
    from model_builder.serve.batching import BatchingSession, TensorSignature
    from model_builder.serve.scheduler import SharedBatchScheduler

    with np.load(test_npz) as q:
        queries = q["vectors"]
    loaded = models.load_version(version_dir, 1, warmup=False)
    recall = served_recall(loaded, test_npz, candidates_npz) if candidates_npz else None
    sig = loaded.signature_defs["search_by_vector"]
    feed_name = sig.inputs["vectors"].name
    fetches = [sig.outputs[k].name for k in sorted(sig.outputs)]
    feeds = [[(feed_name, queries[j % len(queries)][None, :].astype(np.float32))] for j in range(30)]
    signatures = [
        TensorSignature.of([t.name for t in d.inputs.values()], [t.name for t in d.outputs.values()])
        for d in loaded.signature_defs.values()
    ]
    rows: list[tuple[str, Setting | None]] = [(PLAIN, None), *[(s.name, s) for s in grid.settings]]
    samples: dict[str, dict[str, list[Sample]]] = {name: {str(c): [] for c in grid.callers} for name, _ in rows}
    loads = []
    for j in range(len(feeds)):  # warm the session's callables (the harness also runs each request once first)
        loaded.runner(feeds[j], fetches)
    for r in range(grid.runs):
        loads.append({"round": r + 1, "start": load_average()})
        for name, setting in rows:
            scheduler, session = None, loaded.runner
            if setting is not None:
                scheduler = SharedBatchScheduler(setting.batch_threads)
                session = BatchingSession(_params(setting), scheduler, loaded.runner, signatures).run
            try:
                for c in grid.callers:
                    sample = closed_loop(
                        lambda i, f=session: f(feeds[i % len(feeds)], fetches), c, grid.calls_per_caller(c)
                    )
                    samples[name][str(c)].append(sample)
            finally:
                if scheduler is not None:
                    scheduler.stop()
            print(
                f"local round {r + 1}: {name}: "
                + ", ".join(f"{c}:{samples[name][str(c)][-1].qps:.0f}" for c in grid.callers)
                + " QPS",
                file=sys.stderr,
                flush=True,
            )
        loads[-1]["end"] = load_average()
    loaded.close()
    rows_out = {n: {c: cell(s) for c, s in per.items()} for n, per in samples.items()}
    return {"rows": rows_out, "load_average": loads, "recall_at_10": recall}


def main() -> int:
    """Worker entry: VERSION_DIR TEST_NPZ GRID [CANDIDATES_NPZ] -> one JSON line on stdout."""
    version_dir, test_npz, grid = Path(sys.argv[1]), Path(sys.argv[2]), GRIDS[sys.argv[3]]
    candidates = Path(sys.argv[4]) if len(sys.argv) > 4 else None
    print(json.dumps(measure(version_dir, test_npz, grid, candidates)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
