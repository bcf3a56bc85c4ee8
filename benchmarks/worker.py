"""One measurement in a fresh process (`python -m benchmarks.worker MODE ...`), printed as one JSON line.

A fresh process per configuration keeps memory figures honest (RSS is this
process: the runtime plus one index) and one model's caches out of another's timings.
Modes:
  savedmodel    load a version like the server does (warmup replayed), measure its
                search_by_vector signature; optionally sweep ScaNN's knobs on the same index
  faiss-build   build a Faiss index and write it to disk
  faiss-measure load a Faiss index, sweep its knobs, pick the fastest at the target recall
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import faiss_index, timing
from benchmarks.common import rss_mb


def _load_test(path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    with np.load(path) as data:
        return data["vectors"], data["kth"], int(data["k"])


def _load_base(path: Path) -> np.ndarray:
    with np.load(path) as data:
        return data["vectors"]


def _best_throughput(batch_searches: list, test, seconds: float, batches: int) -> dict:
    # Several thread settings of one engine (Faiss: 1 and all OpenMP threads): report its best.
    runs = [timing.throughput(b, test, 64, seconds / len(batch_searches), batches) for b in batch_searches]
    best = max(range(len(runs)), key=lambda i: runs[i]["qps"])
    return {**runs[best], "variant": best, "variants_qps": [r["qps"] for r in runs]}


def _measure(search, batch_searches: list, test, kth, base_path: Path, args) -> dict:
    out = {
        "latency_1": timing.latency(search, test, args.latency_queries, args.latency_max_s),
        "throughput_64": _best_throughput(batch_searches, test, args.throughput_s, args.throughput_batches),
    }
    out["rss_serving_mb"] = rss_mb()
    out["recall_at_10"] = timing.recall(batch_searches[0], test, kth, _load_base(base_path), "dot_product")
    return out


def scann_grid(index: dict) -> list[dict]:
    """Leaves-to-search x reorder settings around the served index (brute force: nothing to sweep)."""
    n, k = int(index["num_candidates"]), int(index["k"])
    if index.get("num_leaves"):
        leaves = sorted({max(1, int(round(index["num_leaves"] * f))) for f in (0.01, 0.02, 0.05)})
        return [{"leaves_to_search": lv, "reorder": r} for lv in leaves for r in (100, 400, 1600, 6400) if k < r <= n]
    if index.get("reorder_num_neighbors"):
        return [{"reorder": r} for r in (25, 50, 100, 200, 400, 800, 1600) if k < r <= n]
    return [{}]


def _sweep(make_search, points: list[dict], test, kth, base, args) -> list[dict]:
    curve = []
    for params in points:
        search, batch_searches = make_search(params)
        started = time.perf_counter()
        rec = timing.recall(batch_searches[0], test, kth, base, "dot_product")
        lat = timing.latency(search, test, args.sweep_latency_queries, args.sweep_max_s, warm=2)
        thr = _best_throughput(batch_searches, test, args.sweep_max_s, args.throughput_batches)
        curve.append(
            {
                "params": params,
                "recall_at_10": rec,
                "single_qps": lat["qps"],
                "p50_ms": lat["p50_ms"],
                "batch64_qps": thr["qps"],
            }
        )
        print(
            f"sweep {params}: recall {rec:.4f}, {lat['qps']:.0f} QPS single, {thr['qps']:.0f} QPS in batches "
            f"({time.perf_counter() - started:.1f} s)",
            flush=True,
        )
    return curve


def run_savedmodel(args) -> dict:
    """Loads the version as the local server does and measures its search_by_vector signature."""
    import tensorflow as tf

    from model_builder.serve.models import load_version

    rss_start = rss_mb()
    started = time.perf_counter()
    loaded = load_version(args.version_dir, int(args.version_dir.name), warmup=True)
    out: dict = {
        "load_and_warmup_s": round(time.perf_counter() - started, 2),
        "rss_runtime_mb": rss_start,
        "rss_after_load_mb": rss_mb(),
    }
    if hasattr(loaded, "run"):  # the server's TF1 Session path: Session.run by the SignatureDef's tensor names

        def search(vectors: np.ndarray) -> np.ndarray:
            return loaded.run("search_by_vector", {"vectors": vectors}, ["ids"])["ids"]
    else:  # older servers: eager calls of the loaded signature functions
        signature = loaded.signatures["search_by_vector"]

        def search(vectors: np.ndarray) -> np.ndarray:
            return signature(vectors=tf.constant(vectors))["ids"].numpy()

    test, kth, _ = _load_test(args.test)
    out.update(_measure(search, [search], test, kth, args.candidates, args))
    out["graph"] = _graph_figures(args.version_dir, test, args)
    if args.batch_sizes:
        out["batch_curve"] = timing.batch_curve(
            search, test, [int(b) for b in args.batch_sizes.split(",")], args.sweep_max_s
        )
    if args.sweep:
        out["scann_sweep"] = _scann_sweep(args, test, kth)
    return out


def _graph_figures(version_dir: Path, test: np.ndarray, args) -> dict:
    """The same signature without the Python session harness: TF's C-API loader and a TF_SessionRun loop
    (model_builder/index/graph_timing.py), what TF Serving's C++ Session::Run pays. Measured after the RSS
    figures: it loads a second copy of the version."""
    from model_builder.index import graph_timing

    session = graph_timing.GraphSession(version_dir)
    try:
        single_us, single_calls = graph_timing.time_calls(
            session, test, 1, max_calls=args.latency_queries, max_s=args.latency_max_s
        )
        # TF Serving's batcher executes batches of up to max_execution_batch_size (8) rows: the
        # per-query cost of such a call is what a busy pod pays.
        eight_us, eight_calls = graph_timing.time_calls(
            session, test, 8, max_calls=args.latency_queries, max_s=args.latency_max_s
        )
        batch_us, batch_calls = graph_timing.time_calls(
            session, test, 64, max_calls=args.throughput_batches, max_s=args.throughput_s
        )
    finally:
        session.close()
    return {
        "method": "TF_LoadSessionFromSavedModel + TF_SessionRun loop on pre-built inputs, median call, best of 3 "
        "rounds, intra-op 1 / inter-op 2 threads",
        "p50_ms_1": round(single_us / 1e3, 4),
        "calls_1": single_calls,
        "p50_ms_8": round(eight_us / 1e3, 4),
        "us_per_query_8": round(eight_us / 8, 1),
        "calls_8": eight_calls,
        "qps_64": round(64 / (batch_us / 1e6), 1),
        "calls_64": batch_calls,
    }


def _scann_sweep(args, test: np.ndarray, kth: np.ndarray) -> list[dict]:
    """ScaNN's knobs swept on the version's own serialized index (eager TF ops, loaded a second time)."""
    import tensorflow as tf

    from model_builder.export.version_store import read_build_info
    from model_builder.scann_import import scann_ops

    module = tf.saved_model.load(str(args.version_dir))
    if getattr(module, "scann", None) is None:
        return []
    scann = scann_ops.searcher_from_module(module.scann)
    index = read_build_info(args.version_dir)["index"]

    def make(params: dict):
        kw = {
            "final_num_neighbors": 10,
            "leaves_to_search": params.get("leaves_to_search"),
            "pre_reorder_num_neighbors": params.get("reorder"),
        }
        return (
            lambda v: scann.search_batched(v, **kw)[0].numpy(),
            [lambda v: scann.search_batched_parallel(v, **kw)[0].numpy()],
        )

    return _sweep(make, scann_grid(index), test, kth, _load_base(args.candidates), args)


def run_faiss_build(args) -> dict:
    """Builds one Faiss index from the candidates and writes it next to the run's other artefacts."""
    import faiss

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    return faiss_index.build(args.kind, _load_base(args.candidates), args.index, args.hnsw_m)


def run_faiss_measure(args) -> dict:
    """Loads the index like a server would, sweeps it, then measures the fastest setting at the target recall."""
    import faiss

    rss_start = rss_mb()
    started = time.perf_counter()
    index = faiss.read_index(str(args.index))
    out: dict = {
        "load_s": round(time.perf_counter() - started, 2),
        "rss_runtime_mb": rss_start,
        "rss_after_load_mb": rss_mb(),
    }
    test, kth, k = _load_test(args.test)
    base = _load_base(args.candidates)
    # One OpenMP thread for single queries (Faiss's advice for serving; with 2 threads on 2 cores we saw
    # multi-millisecond stalls); batches with all cores and with one, the better one counts.
    search = faiss_index.searcher(index, k, 1)
    batch_searches = [faiss_index.searcher(index, k, os.cpu_count() or 1), search]

    def make(params: dict):
        faiss_index.apply(index, params)
        return search, batch_searches

    curve = _sweep(make, faiss_index.grid(args.kind, index), test, kth, base, args)
    chosen, reached = _matched(curve, args.target_recall, "p50_ms", lowest=True)
    faiss_index.apply(index, chosen["params"])
    out.update({"sweep": curve, "target_recall": args.target_recall, "matched": reached, "params": chosen["params"]})
    out.update(_measure(search, batch_searches, test, kth, args.candidates, args))
    # Batches compare with the model served for batches, at its recall: the sweep point with the most
    # batch-64 QPS among those reaching it (often another setting than the single-query pick).
    batch_target = args.batch_target_recall if args.batch_target_recall is not None else args.target_recall
    chosen, reached = _matched(curve, batch_target, "batch64_qps", lowest=False)
    faiss_index.apply(index, chosen["params"])
    out["batch_matched"] = {
        "target_recall": batch_target,
        "matched": reached,
        "params": chosen["params"],
        "params_text": faiss_index.describe(chosen["params"]),
        "recall_at_10": timing.recall(batch_searches[0], test, kth, base, "dot_product"),
        "throughput_64": _best_throughput(batch_searches, test, args.throughput_s, args.throughput_batches),
    }
    return out


def _matched(curve: list[dict], target: float, key: str, lowest: bool) -> tuple[dict, bool]:
    """The best sweep point by `key` among those reaching `target` (else the highest-recall point)."""
    reached = [p for p in curve if p["recall_at_10"] >= target]
    if not reached:
        return max(curve, key=lambda p: p["recall_at_10"]), False
    pick = min if lowest else max
    return pick(reached, key=lambda p: p[key]), True


def main(argv: list[str] | None = None) -> int:
    """Parses the mode and its inputs, runs it, prints one JSON line."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.worker", description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("savedmodel", "faiss-build", "faiss-measure"))
    p.add_argument("--candidates", type=Path, required=True)
    p.add_argument("--test", type=Path)
    p.add_argument("--version-dir", type=Path)
    p.add_argument("--kind", choices=faiss_index.KINDS)
    p.add_argument("--index", type=Path)
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--target-recall", type=float, default=0.95)
    p.add_argument(
        "--batch-target-recall",
        type=float,
        default=None,
        help="faiss-measure: recall the batch-64 pick must reach (default: --target-recall)",
    )
    p.add_argument("--latency-queries", type=int, default=1000)
    p.add_argument("--latency-max-s", type=float, default=20.0)
    p.add_argument("--throughput-s", type=float, default=5.0)
    p.add_argument("--throughput-batches", type=int, default=2000)
    p.add_argument("--sweep", action="store_true", help="savedmodel: also sweep ScaNN's knobs on the same index")
    p.add_argument("--sweep-latency-queries", type=int, default=200)
    p.add_argument("--sweep-max-s", type=float, default=2.0)
    p.add_argument("--batch-sizes", default="", help="savedmodel: comma-separated batch sizes for the batching curve")
    args = p.parse_args(argv)
    run = {"savedmodel": run_savedmodel, "faiss-build": run_faiss_build, "faiss-measure": run_faiss_measure}[args.mode]
    print(json.dumps(run(args)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
