"""What the fan-out costs: p50/p99 of one search() through ShardedRetrievalClient, K = 1, 2, 4, 8,
against RetrievalClient on the unsharded model of the same catalogue (issue 21, item 4).

    python -m benchmarks.sharding_overhead [--items 8000] [--calls 400] [--out benchmarks/results/sharding_overhead.json]

One clustered catalogue (item -> similar items, brute force: every model is exact, so the
only difference is the fan-out and merge) is built unsharded and with --shards 2, 4 and 8. Each
configuration is served by local servers on loopback (one per shard, batching on as in the
image), measured alone, then stopped. K = 1 is the sharded client over the unsharded model:
the client's own overhead (version pin, thread hand-off, merge) without a second server.
On this shared 2-core machine K servers share 2 cores: read the K = 4 and 8 figures as upper bounds.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import REPO, load_average, log, machine, percentiles, versions, write_json

NAME = "bench_shards"
DIM = 32


def _build(out: Path, items: Path, shards: int) -> None:
    cmd = [sys.executable, "-m", "model_builder", "build", "--out", str(out), "--model-name", NAME]
    cmd += ["--candidates", str(items), "--query", "item", "--verify-queries", "200"]
    if shards > 1:
        cmd += ["--shards", str(shards)]
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, text=True)


def _measure(call, ids: np.ndarray, calls: int) -> dict:
    """Sequential one-id calls (after 50 warm-up calls): p50/p99 of the client's wall time."""
    for i in range(50):
        call(ids[i % len(ids) : i % len(ids) + 1])
    samples = []
    for i in range(calls):
        start = time.perf_counter()
        call(ids[i % len(ids) : i % len(ids) + 1])
        samples.append(time.perf_counter() - start)
    return percentiles(samples)


def _serve(stack: contextlib.ExitStack, out: Path, models: list[str], logs: Path) -> list:
    from model_builder.serve import process

    servers = [
        stack.enter_context(process.running(out, m, logs / f"{m}.log", port=process.free_port(), cwd=REPO))
        for m in models
    ]
    for server in servers:
        server.wait_available(1)
    return servers


def run(items_n: int, calls: int, out_path: Path) -> dict:
    """Builds, serves and measures every configuration; writes and returns the JSON."""
    from model_builder.data.synthetic import clustered_embeddings
    from retrieval_client import RetrievalClient, Shard, ShardedRetrievalClient, shard_models

    results: dict = {}
    at_start = machine()  # the load average before the first build
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ids = np.array([f"sku-{i}" for i in range(items_n)])
        np.savez(root / "items.npz", ids=ids, vectors=clustered_embeddings(items_n, DIM, seed=7))
        query_ids = np.random.default_rng(0).permutation(ids)
        for shards in (1, 2, 4, 8):
            log(f"build: {items_n} x {DIM} as {shards} shard(s)")
            started = time.perf_counter()
            _build(root / f"k{shards}", root / "items.npz", shards)
            build_s = time.perf_counter() - started
            models = [NAME] if shards == 1 else [f"{NAME}-shard-{i}" for i in range(shards)]
            with contextlib.ExitStack() as stack:
                servers = _serve(stack, root / f"k{shards}", models, root)
                targets = [s.target for s in servers]
                row: dict = {"build_s": round(build_s, 1)}
                if shards == 1:
                    with RetrievalClient(targets[0], NAME, timeout_s=10) as client:
                        results["unsharded"] = {**_measure(client.search, query_ids, calls), "build_s": row["build_s"]}
                    spec = [Shard(targets[0], NAME)]
                else:
                    spec = shard_models(NAME, targets)
                with ShardedRetrievalClient(spec, timeout_s=10) as client:
                    row.update(_measure(client.search, query_ids, calls))
                results[f"sharded_k{shards}"] = row
                log(f"K={shards}: {row}")
    data = {
        "what": "one search() of one id, k=10, sequential, loopback; brute-force shards (exact)",
        "catalogue": {"items": items_n, "dim": DIM, "query": "item"},
        "calls": calls,
        "machine": at_start,
        "load_average_at_end": load_average(),
        "versions": versions(),
        "results": results,
    }
    write_json(out_path, data)
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=8000)
    p.add_argument("--calls", type=int, default=400)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "sharding_overhead.json")
    args = p.parse_args(argv)
    run(args.items, args.calls, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
