"""Faiss under the same concurrency as the scheduler table, and what a loopback gRPC call adds.

    python -m benchmarks.concurrency_peers --candidates NPZ --test NPZ --target-recall R --grid full|quick
        [--work DIR] [--out JSON]

- Faiss HNSW and IVF-PQ + refine (benchmarks/faiss_index.py), each set to its cheapest
  single-query setting whose recall@10 on the test queries reaches `--target-recall` (the
  served model's), then called by 1..32 closed-loop threads, one query per call, one OpenMP
  thread per call (Faiss releases the GIL in search): the in-process peer of the scheduler
  table's rows.
- gRPC: a unary call through grpcio (C core) over loopback whose request and response have the
  byte sizes of a one-row search_by_vector PredictRequest / PredictResponse (k ids + k scores),
  the server answering at once: the transport cost both served engines pay on top of a search.
  Server and callers are separate processes, callers are threads (as the scheduler table's).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path

import numpy as np

from benchmarks import faiss_index
from benchmarks.common import ENV, PYTHON, REPO, load_average, log, versions, write_json
from benchmarks.scheduler_grid import GRIDS, Grid, Sample, cell
from benchmarks.scheduler_local import closed_loop, recall_at_k

K = 10
_METHOD = "/bench.Loopback/Call"


def _p50_us(search, test: np.ndarray, n: int = 200) -> float:
    times = []
    for q in test[:n]:
        t0 = time.perf_counter()
        search(q[None, :])
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e6)


def match(kind: str, index, test, base, kth, target: float) -> dict:
    """The cheapest (lowest single-query p50) setting of `kind` whose recall reaches `target`."""
    search = faiss_index.searcher(index, K, 1)
    best = None
    for params in faiss_index.grid(kind, index):
        faiss_index.apply(index, params)
        recall = recall_at_k(search(test), test, base, kth)
        if recall < target:
            continue
        p50 = _p50_us(search, test)
        if best is None or p50 < best["p50_us_single"]:
            best = {"params": params, "recall_at_10": round(recall, 4), "p50_us_single": round(p50, 1)}
        if kind == "hnsw":
            break  # efSearch grows along the grid: the first that reaches the target is the cheapest
    if best is None:
        return {"reached": False, "target": target}
    faiss_index.apply(index, best["params"])
    return {"reached": True, "target": target, **best, "params_text": faiss_index.describe(best["params"])}


def faiss_rows(candidates: Path, test_npz: Path, target: float, grid: Grid, work: Path) -> dict:
    """Both Faiss kinds: build (or reuse from `work`), match the recall, time every caller count `grid.runs` times."""
    import faiss

    with np.load(candidates) as c:
        base = c["vectors"].astype(np.float32)
    with np.load(test_npz) as t:
        test, kth = t["vectors"].astype(np.float32), t["kth"]
    out = {}
    for kind in faiss_index.KINDS:
        path = work / f"{kind}.faiss"
        if not path.is_file():
            faiss.omp_set_num_threads(os.cpu_count() or 1)
            log(f"concurrency: building Faiss {kind}")
            built = faiss_index.build(kind, base, path)
        else:
            built = {"kind": kind, "reused": str(path.name)}
        index = faiss.read_index(str(path))
        matched = match(kind, index, test, base, kth, target)
        log(f"concurrency: Faiss {kind} matched {matched}")
        search = faiss_index.searcher(index, K, 1)
        samples: dict[str, list[Sample]] = {str(c): [] for c in grid.callers}
        for _ in range(grid.runs):
            for c in grid.callers:
                sample = closed_loop(lambda i, f=search: f(test[i % len(test)][None, :]), c, grid.calls_per_caller(c))
                samples[str(c)].append(sample)
        out[kind] = {
            "build": built,
            "matched": matched,
            "rows": {c: cell(s) for c, s in samples.items()},
            "factory": faiss_index.factory_string(kind, len(base), base.shape[1]),
        }
    return out


def message_sizes(dim: int) -> tuple[int, int]:
    """Bytes of a one-row search_by_vector PredictRequest and of its PredictResponse (k int64 ids, k scores)."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    req = predict_pb2.PredictRequest()
    req.model_spec.name, req.model_spec.signature_name = "scann", "search_by_vector"
    req.inputs["vectors"].CopyFrom(tf.make_tensor_proto(np.zeros((1, dim), np.float32)))
    resp = predict_pb2.PredictResponse()
    resp.outputs["ids"].CopyFrom(tf.make_tensor_proto(np.arange(K, dtype=np.int64)[None, :]))
    resp.outputs["scores"].CopyFrom(tf.make_tensor_proto(np.ones((1, K), np.float32)))
    return req.ByteSize(), resp.ByteSize()


def serve_loopback(port_file: Path, response_bytes: int) -> None:
    """The server side: a grpcio server answering every call with `response_bytes` bytes (no work)."""
    import grpc

    answer = b"\x01" * response_bytes
    handler = grpc.method_handlers_generic_handler(
        "bench.Loopback", {"Call": grpc.unary_unary_rpc_method_handler(lambda request, context: answer)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    port_file.write_text(str(port))
    server.wait_for_termination()


def grpc_rows(dim: int, grid: Grid, work: Path) -> dict:
    """Closed-loop unary calls of the served request/response sizes over loopback, every caller count."""
    import grpc

    req_bytes, resp_bytes = message_sizes(dim)
    port_file = work / "grpc-port"
    port_file.unlink(missing_ok=True)
    cmd = [PYTHON, "-m", "benchmarks.concurrency_peers", "--serve-loopback", str(port_file), str(resp_bytes)]
    server = subprocess.Popen(cmd, env=ENV, cwd=REPO)
    try:
        for _ in range(300):
            if port_file.is_file() and port_file.read_text():
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("loopback gRPC server did not start within 30 s")
        channel = grpc.insecure_channel(f"127.0.0.1:{port_file.read_text()}")
        call = channel.unary_unary(_METHOD)
        payload = b"\x02" * req_bytes
        samples: dict[str, list[Sample]] = {str(c): [] for c in grid.callers}
        for _ in range(grid.runs):
            for c in grid.callers:
                samples[str(c)].append(closed_loop(lambda i: call(payload, timeout=10), c, grid.calls_per_caller(c)))
        channel.close()
    finally:
        server.terminate()
        server.wait(timeout=10)
    return {
        "request_bytes": req_bytes,
        "response_bytes": resp_bytes,
        "how": "grpcio unary call over 127.0.0.1, one channel shared by the caller threads, server answers at once",
        "rows": {c: cell(s) for c, s in samples.items()},
    }


def run(candidates: Path, test_npz: Path, target: float, grid: Grid, work: Path) -> dict:
    """Faiss rows and the gRPC row, with the load average around them."""
    work.mkdir(parents=True, exist_ok=True)
    with np.load(test_npz) as t:
        dim = t["vectors"].shape[1]
    out = {"commit": versions()["git_commit"], "load_average_start": load_average(), "target_recall": target}
    out["faiss"] = faiss_rows(candidates, test_npz, target, grid, work)
    out["grpc_loopback"] = grpc_rows(dim, grid, work)
    out["load_average_end"] = load_average()
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI (and the loopback server's entry)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve-loopback"]:
        serve_loopback(Path(argv[1]), int(argv[2]))
        return 0
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.concurrency_peers", description=(__doc__ or "").splitlines()[0]
    )
    p.add_argument("--candidates", type=Path, required=True)
    p.add_argument("--test", type=Path, required=True, help="test.npz (vectors, kth) of benchmarks.datasets")
    p.add_argument("--target-recall", type=float, required=True, help="the served model's recall@10 on --test")
    p.add_argument("--grid", choices=sorted(GRIDS), default="full")
    p.add_argument("--work", type=Path, default=REPO / "build" / "bench-work" / "concurrency")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    result = run(args.candidates, args.test, args.target_recall, GRIDS[args.grid], args.work)
    if args.out:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
