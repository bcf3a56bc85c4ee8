"""Tuned on catalogue items vs tuned on the queries production sends (`build --tuning-queries`).

Fashion-MNIST: the catalogue is the 60k training images, the queries are test images, never
catalogue items. Two builds of the same catalogue (`--candidates ... --query item`, the real CLI):
  catalogue       today's default: the index search and the gate sample catalogue items;
  tuning_queries  `--tuning-queries` with 2,000 test images (the build splits them: 1,000 tune the
                  index search, 1,000 are the gate's held-out part).
Both are scored on the same 1,000 other test images that neither build saw: recall@10 of
search_by_vector against exact search, and its cost through the serving graph (graph_timing.compare:
both SavedModels loaded through TF's C API and timed taking turns, TF_SessionRun loop, one query per
call, median call, best of 7 rounds, intra-op 1 / inter-op 2).
Next to them Faiss HNSW32 on the same base and queries, one query per call (1 OpenMP thread), at
the cheapest efSearch whose recall reaches each build's. Results: benchmarks/results/tuning_queries.json.

`--queries blend` makes the queries less like the items: each is the normalized sum of two test
images of different classes (a construction, not a real query log), same split and counts.

    python -m benchmarks.tuning_queries [--queries test|blend] [--limit 20000] [--search-budget-s 90]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks import datasets, faiss_index, timing
from benchmarks.common import PYTHON, REPO, load_average, log, machine, run_streaming, write_json
from model_builder.build_runner import BuildRun, build_command, version_dir_of
from model_builder.pipeline import git_commit

K = 10
TUNING_ROWS = 2_000  # the --tuning-queries file; the build holds half of it out for its gate
TEST_ROWS = 1_000


def _build(name: str, flags: list[str], candidates: Path, models: Path, logs: Path) -> tuple[Path, dict, float]:
    cmd = build_command(
        "--candidates", str(candidates), "--query", "item", "--out", str(models), "--model-name", name, *flags,
        python=PYTHON,
    )  # fmt: skip
    log(f"build {name}: {' '.join(flags) or '(defaults)'}")
    started = time.perf_counter()
    code, lines = run_streaming(cmd, f"build {name}", 1800, logs / f"build-{name}.log")
    if code != 0:
        raise RuntimeError(f"build {name} failed:\n" + "\n".join(lines[-10:]))
    version_dir = version_dir_of("\n".join(lines))
    return version_dir, BuildRun(version_dir, "", "").build_info(), time.perf_counter() - started


def _served_rows(version_dir: Path, queries: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    import model_builder.scann_import  # noqa: F401  (registers the ScaNN ops before loading)

    by_vector = tf.saved_model.load(str(version_dir)).signatures["search_by_vector"]
    return np.concatenate(
        [by_vector(vectors=tf.constant(queries[s : s + 256]))["ids"].numpy() for s in range(0, len(queries), 256)]
    )


def _score(version_dir: Path, info: dict, wall_s: float, ds, kth: np.ndarray) -> dict:
    from model_builder.index.recall import recall_against

    rows = _served_rows(version_dir, ds.test)  # ids are row numbers
    search = info.get("index_search") or {}
    chosen = search.get("chosen") or {}
    return {
        "version_dir": str(version_dir),
        "build_wall_s": round(wall_s, 1),
        "index": {k: info["index"].get(k) for k in ("algorithm", "num_leaves", "dimensions_per_block", "hash_type")},
        "tuning": {k: (info.get("tuning") or {}).get(k) for k in ("leaves_to_search", "reorder", "recall")},
        "search_queries": search.get("queries"),
        "search_recall_at": search.get("recall_at"),
        "search_goal": search.get("goal"),
        "build_cost_us_per_query": chosen.get("cost_us_per_query"),
        "gate": {
            "recall_at_10": info["verification"]["recall_at_k"],
            "search_by_vector_scored_on": info["verification"].get("vector_queries"),
        },
        "tuning_queries": info.get("tuning_queries"),
        "test_recall_at_10": round(recall_against(kth, ds.test, ds.base, rows, ds.distance), 4),
    }


def _side_by_side_cost(scored: dict[str, dict], queries: np.ndarray) -> None:
    """Both versions loaded at once and timed taking turns (graph_timing.compare: drifting load on a
    shared machine hits both alike), one query per call; adds test_cost_us_per_query to each."""
    from model_builder.index import graph_timing

    names = list(scored)
    costs = graph_timing.compare([Path(scored[n]["version_dir"]) for n in names], queries, 1, rounds=7, max_s=8.0)
    for name, cost in zip(names, costs):
        scored[name]["test_cost_us_per_query"] = round(cost.us_per_query, 1)
        scored[name]["test_cost_calls"] = cost.calls


def _hnsw(ds, kth: np.ndarray, work: Path, recalls: dict[str, float]) -> dict:
    import faiss

    from model_builder.index.recall import recall_against

    built = faiss_index.build("hnsw", ds.base, work / "hnsw.faiss")
    index = faiss.read_index(str(work / "hnsw.faiss"))
    sweep = []
    for params in faiss_index.grid("hnsw", index):
        faiss_index.apply(index, params)
        search = faiss_index.searcher(index, K, threads=1)
        recall = recall_against(kth, ds.test, ds.base, search(ds.test), ds.distance)
        p50_us = timing.latency(search, ds.test, count=1000, max_s=2.0)["p50_ms"] * 1e3
        sweep.append({"efSearch": params["efSearch"], "recall_at_10": round(recall, 4), "p50_us": round(p50_us, 1)})
        if recall >= max(recalls.values()) + 0.005:
            break
    matched = {}
    for name, target in recalls.items():
        reach = [s for s in sweep if s["recall_at_10"] >= target]
        matched[name] = reach[0] if reach else None
    return {**built, "threads": 1, "sweep": sweep, "matched_to": matched}


def _blend(ds, seed: int = 1):
    """Each query the normalized sum of two test images of different classes (labels from the t10k file)."""
    import dataclasses
    import gzip

    images = datasets.l2_normalize(
        datasets.read_idx_images(datasets.FASHION_MNIST / "t10k-images-idx3-ubyte.gz") / 255.0
    )
    labels = np.frombuffer(gzip.open(datasets.FASHION_MNIST / "t10k-labels-idx1-ubyte.gz").read()[8:], dtype=np.uint8)
    rng = np.random.default_rng(seed)
    first, second = rng.permutation(len(images)), rng.permutation(len(images))
    pairs = [(a, b) for a, b in zip(first, second) if labels[a] != labels[b]][: TUNING_ROWS + TEST_ROWS]
    blended = datasets.l2_normalize(np.stack([images[a] + images[b] for a, b in pairs]))
    return dataclasses.replace(
        ds,
        name=ds.name + "-blend-queries",
        validation=blended[:TUNING_ROWS],
        test=blended[TUNING_ROWS:],
        source=ds.source + "; queries: normalized sums of two test images of different classes",
    )


def main(argv: list[str] | None = None) -> int:
    """Runs both builds, scores them and HNSW, writes the JSON (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=None, help="catalogue subsample (first N training images)")
    p.add_argument("--search-budget-s", type=float, default=None, help="index search budget of both builds")
    p.add_argument("--queries", choices=("test", "blend"), default="test", help="test images, or blends of two")
    p.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/tuning_queries[_blend].json")
    p.add_argument("--work", type=Path, default=REPO / "build/bench-work/tuning-queries")
    args = p.parse_args(argv)
    started = time.perf_counter()
    ds = datasets.fashion_mnist(TUNING_ROWS, TEST_ROWS, limit=args.limit)
    if args.queries == "blend":
        ds = _blend(ds)
    args.work = args.work / args.queries
    args.out = args.out or REPO / f"benchmarks/results/tuning_queries{'_blend' if args.queries == 'blend' else ''}.json"
    args.work.mkdir(parents=True, exist_ok=True)
    candidates, tuning_file = args.work / "candidates.npz", args.work / "tuning-queries.npy"
    np.savez(candidates, ids=np.arange(len(ds.base), dtype=np.int64), vectors=ds.base)
    np.save(tuning_file, ds.validation)
    from model_builder.index.recall import exact_kth_scores

    kth = exact_kth_scores(ds.test, ds.base, K, ds.distance)
    budget = ["--search-budget-s", str(args.search_budget_s)] if args.search_budget_s else []
    models = args.work / f"models-{int(time.time())}"
    runs = {
        "catalogue": budget,
        "tuning_queries": [*budget, "--tuning-queries", str(tuning_file)],
    }
    built = {name: _build(name.replace("_", "-"), flags, candidates, models, args.work) for name, flags in runs.items()}
    scored = {name: _score(*b, ds, kth) for name, b in built.items()}
    _side_by_side_cost(scored, ds.test)
    for name, s in scored.items():
        log(f"{name}: test recall@10 {s['test_recall_at_10']}, {s['test_cost_us_per_query']} us/query, {s['index']}")
    hnsw = _hnsw(ds, kth, args.work, {n: s["test_recall_at_10"] for n, s in scored.items()})
    result = {
        "git_commit": git_commit(),
        "dataset": ds.describe(),
        "split": {
            "tuning_queries_file": f"{TUNING_ROWS} test images (build splits it: held-out gate part + tuning part)",
            "scored_on": f"{TEST_ROWS} other test images, seen by neither build",
        },
        "flags": {"common": ["--candidates", "--query", "item", *budget], "runs": runs},
        "builds": scored,
        "faiss_hnsw": hnsw,
        "machine": machine(),
        "load_average": load_average(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(args.out, result)
    log(f"wrote {args.out} in {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
