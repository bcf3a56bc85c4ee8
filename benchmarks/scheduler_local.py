"""The local server's batch scheduler (model_builder/serve) timed like the C++ harness: one worker process.

    python -m benchmarks.scheduler_local VERSION_DIR TEST_NPZ GRID [CANDIDATES_NPZ]   (prints one JSON line)
    python -m benchmarks.scheduler_local handoff VERSION_DIR [CALLS] [ROUNDS]         (the hand-off alone, below)

The version is loaded once with the local server's own loader (TF1 Session, no warmup); each
setting wraps that session in a fresh BatchingSession on a fresh SharedBatchScheduler, exactly as
`model_builder serve --enable_batching` does per version, and closed-loop Python threads call it
(the gRPC servicer's threads call `session_run` the same way). "Plain" calls the session directly.
"""

from __future__ import annotations

import contextlib
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


def _interleaved(runs: dict, calls: int, block: int = 200) -> dict[str, float]:
    """p50 µs of each callable, called in alternating blocks (drifting load hits every one alike)."""
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for b in range(max(1, calls // block)):
        for name in runs if b % 2 == 0 else reversed(list(runs)):
            fn = runs[name]
            for j in range(block):
                t0 = time.perf_counter()
                fn(j)
                samples[name].append(time.perf_counter() - t0)
    return {name: round(float(np.percentile(s, 50)) * 1e6, 1) for name, s in samples.items()}


def handoff_in_process(version_dir: Path, calls: int) -> tuple[dict, int]:
    """One caller, one-row search_by_vector: the plain session vs the shipped batching file's session."""
    from model_builder import settings
    from model_builder.compat.tfs_batching import BatchingParameters
    from model_builder.serve import models
    from model_builder.serve.batching import BatchingSession, TensorSignature
    from model_builder.serve.scheduler import SharedBatchScheduler

    loaded = models.load_version(version_dir, 1, warmup=False)
    sig = loaded.signature_defs["search_by_vector"]
    dim = sig.inputs["vectors"].tensor_shape.dim[-1].size
    fetches = [sig.outputs[k].name for k in sorted(sig.outputs)]
    rng = np.random.default_rng(0)
    feeds = [[(sig.inputs["vectors"].name, rng.standard_normal((1, dim)).astype(np.float32))] for _ in range(30)]
    signatures = [
        TensorSignature.of([t.name for t in d.inputs.values()], [t.name for t in d.outputs.values()])
        for d in loaded.signature_defs.values()
    ]
    params = BatchingParameters.from_file(settings.IMAGE_BATCHING_FILE)
    scheduler = SharedBatchScheduler(params.threads())
    session = BatchingSession(params, scheduler, loaded.runner, signatures)
    runs = {
        "plain": lambda j: loaded.runner(feeds[j % 30], fetches),
        "batching": lambda j: session.run(feeds[j % 30], fetches),
    }
    try:
        _interleaved(runs, 400)  # warm both paths
        load = [load_average()]
        p50 = _interleaved(runs, calls)
        load.append(load_average())
    finally:
        scheduler.stop()
        loaded.close()
    out = {"p50_us": p50, "handoff_us": round(p50["batching"] - p50["plain"], 1), "calls_each": calls}
    return {**out, "load_average": load}, dim


def handoff_e2e(version_dir: Path, dim: int, calls: int, rounds: int) -> dict:
    """Through `model_builder serve` over loopback, one client: batching on (image file) and off, rounds alternating."""
    import tempfile

    from benchmarks import e2e, timing
    from benchmarks.common import percentiles

    queries = np.random.default_rng(1).standard_normal((1000, dim)).astype(np.float32)
    base, model = version_dir.parent.parent, version_dir.parent.name
    samples: dict[str, list[float]] = {"on": [], "off": []}
    p50s: dict[str, list[float]] = {"on": [], "off": []}
    loads = []
    with tempfile.TemporaryDirectory(prefix="handoff-e2e-") as logs, contextlib.ExitStack() as stack:
        servers = {
            name: stack.enter_context(e2e.local_server(base, model, Path(logs) / f"{name}.log", batching=name == "on"))
            for name in samples
        }
        clients = {name: e2e.make_search(server.spec) for name, server in servers.items()}
        for r in range(rounds):
            loads.append(load_average())
            for name in samples if r % 2 == 0 else ("off", "on"):
                lat = timing.latency(clients[name], queries, calls, 120, warm=50, raw=True)
                samples[name] += lat
                p50s[name].append(round(float(np.median(lat)) * 1e3, 4))
        loads.append(load_average())
    out = {name: {"round_p50_ms": p50s[name], "pooled": percentiles(samples[name])} for name in samples}
    medians = {name: float(np.median(p50s[name])) for name in samples}
    return {
        **out,
        "p50_ms_median_of_rounds": medians,
        "ratio_on_off": round(medians["on"] / medians["off"], 3),
        "calls_per_round": calls,
        "rounds": rounds,
        "load_average": loads,
    }


def handoff_main(argv: list[str]) -> int:
    """handoff VERSION_DIR [CALLS] [ROUNDS]: in-process and end-to-end hand-off cost -> one JSON line."""
    version_dir = Path(argv[0])
    calls = int(argv[1]) if len(argv) > 1 else 1500
    rounds = int(argv[2]) if len(argv) > 2 else 3
    in_process, dim = handoff_in_process(version_dir, 2000)
    print(json.dumps({"in_process": in_process, "e2e": handoff_e2e(version_dir, dim, calls, rounds)}))
    return 0


def main() -> int:
    """Worker entry: VERSION_DIR TEST_NPZ GRID [CANDIDATES_NPZ] -> one JSON line on stdout."""
    if sys.argv[1] == "handoff":
        return handoff_main(sys.argv[2:])
    version_dir, test_npz, grid = Path(sys.argv[1]), Path(sys.argv[2]), GRIDS[sys.argv[3]]
    candidates = Path(sys.argv[4]) if len(sys.argv) > 4 else None
    print(json.dumps(measure(version_dir, test_npz, grid, candidates)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
