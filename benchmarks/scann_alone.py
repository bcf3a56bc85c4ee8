"""ScaNN alone (pybind, no TensorFlow) against Faiss HNSW, at ann-benchmarks' ScaNN settings and at ours.

    python -m benchmarks.scann_alone [--dataset fashion-mnist] [--out JSON] [--work DIR]

Question: is the per-query gap to HNSW on a catalogue (summary.json `served_vs_faiss`) the
index configuration our index search picks, or the graph around the search? Here nothing but
the searches run, one query per call, one thread each (ScaNN's pybind `search`, Faiss with one
OpenMP thread), on the same machine and test queries:
- `ours`: the structure the committed full run's tuned build chose for the dataset (tree +
  AH + reorder as model_builder/index.py builds it), swept over leaves-to-search x reorder;
- `annb_*`: the ScaNN settings ann-benchmarks publishes (erikbern/ann-benchmarks,
  ann_benchmarks/algorithms/scann/config.yml and module.py: spherical tree with quantized
  centroids trained on the whole set, AH, their [leaves, reorder] query arguments);
- `hnsw`: HNSW32 as benchmarks/faiss_index.py builds it, efSearch swept.
For each recall target the cheapest point of each curve is reported, with HNSW's p50 over it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks import datasets, faiss_index
from benchmarks.common import REPO, load_average, log, versions, write_json
from benchmarks.scheduler_local import recall_at_k

K = 10
TARGETS = (0.90, 0.95, 0.97, 0.99)
# ann-benchmarks' ScaNN run groups (args: leaves, avq threshold, dims per block, distance) and a
# subset of their [leaves_to_search, reorder] query arguments spanning the recall range.
ANNB = {
    "annb_angular_2000": (
        (2000, 0.2, 2, "dot_product"),
        [(8, 30), (30, 120), (40, 80), (60, 110), (90, 110), (130, 150), (200, 300), (310, 300)],
    ),
    "annb_angular_1000_dpb1": (
        (1000, 0.2, 1, "dot_product"),
        [(4, 30), (9, 25), (12, 35), (15, 40), (20, 45), (25, 55), (30, 70), (50, 100), (70, 140)],
    ),
    "annb_euclidean_600": (
        (600, float("nan"), 2, "squared_l2"),
        [(3, 30), (4, 40), (6, 60), (8, 74), (10, 82), (13, 100), (16, 120), (20, 140), (30, 180)],
    ),
}
OURS_LEAVES = (4, 6, 8, 10, 12, 16, 20, 30, 45)
OURS_REORDER = (20, 40, 60, 100, 200)


def _p50_us(search, queries: np.ndarray) -> float:
    times = []
    for q in queries:
        t0 = time.perf_counter()
        search(q)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e6)


def build_annb(base: np.ndarray, args: tuple):
    """ann-benchmarks' fit(): their builder call (rows are already unit length here)."""
    import scann

    leaves, avq, dpb, dist = args
    return (
        scann.scann_ops_pybind.builder(base, K, dist)
        .tree(leaves, 1, training_sample_size=len(base), spherical=dist == "dot_product", quantize_centroids=True)
        .score_ah(dpb, anisotropic_quantization_threshold=avq)
        .reorder(1)
        .build()
    )


def build_ours(base: np.ndarray, index: dict):
    """The committed run's tuned structure, built as model_builder/index.py builds it (pybind instead of TF ops)."""
    import scann

    threshold = index["anisotropic_quantization_threshold"]
    return (
        scann.scann_ops_pybind.builder(base, K, index["distance"])
        .tree(index["num_leaves"], index["num_leaves_to_search"], training_sample_size=index["training_sample_size"])
        .score_ah(
            index["dimensions_per_block"],
            anisotropic_quantization_threshold=float("nan") if threshold is None else threshold,
            training_sample_size=index["training_sample_size"],
            residual_quantization=bool(index["residual_quantization"]),
            hash_type=index["hash_type"] or "lut16",
        )
        .reorder(index["reorder_num_neighbors"])
        .build()
    )


def sweep_scann(searcher, points, test, kth, base, timed: np.ndarray) -> list[dict]:
    """Recall (all test queries, batched) and single-query p50 (timed queries) at each (leaves, reorder)."""
    out = []
    for leaves, reorder in points:
        reorder = max(reorder, K)
        rows, _ = searcher.search_batched(test, K, reorder, leaves)
        recall = recall_at_k(np.asarray(rows, np.int64), test, base, kth)
        p50 = _p50_us(lambda q, lv=leaves, r=reorder: searcher.search(q, K, r, lv), timed)
        out.append({"leaves": leaves, "reorder": reorder, "recall": round(recall, 4), "p50_us": round(p50, 1)})
    return out


def sweep_hnsw(base, test, kth, timed, work: Path) -> tuple[dict, list[dict]]:
    """HNSW32 built (or reused) as the benchmarks build it, efSearch swept, one OpenMP thread."""
    import faiss

    path = work / "hnsw.faiss"
    built = faiss_index.build("hnsw", base, path) if not path.is_file() else {"reused": True}
    index = faiss.read_index(str(path))
    search = faiss_index.searcher(index, K, 1)
    out = []
    for params in faiss_index.grid("hnsw", index):
        faiss_index.apply(index, params)
        recall = recall_at_k(search(test).astype(np.int64), test, base, kth)
        p50 = _p50_us(lambda q: search(q[None, :]), timed)
        out.append({**params, "recall": round(recall, 4), "p50_us": round(p50, 1)})
    return built, out


def cheapest(curve: list[dict], target: float) -> dict | None:
    """The lowest-p50 point reaching `target` recall."""
    reaching = [p for p in curve if p["recall"] >= target]
    return min(reaching, key=lambda p: p["p50_us"]) if reaching else None


def run(dataset: str, work: Path) -> dict:
    """Every curve and the per-target comparison."""
    work.mkdir(parents=True, exist_ok=True)
    if dataset != "fashion-mnist":
        raise ValueError(f"unknown dataset {dataset} (fashion-mnist)")
    ds = datasets.fashion_mnist(1000, 1000)
    paths = datasets.write_inputs(ds, work / "data", K)
    with np.load(paths["test"]) as t:
        test, kth = t["vectors"].astype(np.float32), t["kth"]
    base = ds.base.astype(np.float32)
    timed = test[:300]
    committed = json.loads((REPO / "benchmarks" / "results" / f"{ds.name}.json").read_text())
    ours_index = committed["served"]["tuned"]["index"]
    out: dict = {"dataset": ds.describe(), "commit": versions()["git_commit"], "load_average_start": load_average()}
    curves: dict[str, list[dict]] = {}
    builds: dict[str, dict] = {}
    log(f"scann alone: ours {ours_index['num_leaves']} leaves, dpb {ours_index['dimensions_per_block']}")
    t0 = time.perf_counter()
    searcher = build_ours(base, ours_index)
    builds["ours"] = {"index": ours_index, "build_s": round(time.perf_counter() - t0, 1)}
    points = [(lv, r) for lv in OURS_LEAVES for r in OURS_REORDER]
    curves["ours"] = sweep_scann(searcher, points, test, kth, base, timed)
    for name, (args, query_args) in ANNB.items():
        log(f"scann alone: {name} {args}")
        t0 = time.perf_counter()
        searcher = build_annb(base, args)
        builds[name] = {"args": list(args), "build_s": round(time.perf_counter() - t0, 1)}
        curves[name] = sweep_scann(searcher, query_args, test, kth, base, timed)
    log("scann alone: Faiss HNSW32")
    builds["hnsw"], curves["hnsw"] = sweep_hnsw(base, test, kth, timed, work)
    at = {}
    for target in TARGETS:
        picks = {name: cheapest(curve, target) for name, curve in curves.items()}
        hnsw = picks["hnsw"]
        at[str(target)] = {
            name: {**p, "hnsw_p50_over_this": round(hnsw["p50_us"] / p["p50_us"], 2) if hnsw else None}
            for name, p in picks.items()
            if p
        }
    out.update({"builds": builds, "curves": curves, "at_recall": at, "load_average_end": load_average()})
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.scann_alone", description=(__doc__ or "").splitlines()[0])
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--work", type=Path, default=REPO / "build" / "bench-work" / "scann-alone")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    result = run(args.dataset, args.work)
    if args.out:
        write_json(args.out, result)
    for target, picks in result["at_recall"].items():
        print(target, {k: (v["p50_us"], v["recall"], v["hnsw_p50_over_this"]) for k, v in picks.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
