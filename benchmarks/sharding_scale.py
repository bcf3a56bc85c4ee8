"""Sharding at a size that shows it (issue 21, item 5): a 4M x 64 catalogue as 1 and as 4 shards.

    python -m benchmarks.sharding_scale [--items 4000000] [--dim 64] [--configs 1,4] [--queries 1000]
        [--calls 400] [--query-side partitioned] [--work build/sharding-scale]
        [--out benchmarks/results/sharding_scale.json]

Catalogue: `benchmarks.datasets.synthetic` (model_builder.data.synthetic.clustered_embeddings,
100 clusters, seed 0), the generator of the headline 1M x 64 benchmark (benchmarks/README), so
the two sizes compare; no real catalogue of 4M rows is available offline here. Ids `sku-<row>`.
Held-out queries are extra draws of the same generator, never in the catalogue.

For each configuration, one at a time (a 23 GB machine shared with other work; the 4M models
are not held twice):
  build     `build --candidates FILE --query item [--shards K --query-side Q] --no-index-search`
            (Q: --query-side, default partitioned: each shard holds only its own items as queries): the tree + AH
            index the rule of thumb picks for N (and for N/K per shard), its leaves-to-search and
            reorder tuned to --target-recall (0.95). --no-index-search because the structure search
            spends 4x the rule-of-thumb build per model, which 5 builds of 1-4M rows do not fit in
            the time this was run in. Recorded: wall time, the builder's peak RSS (sampled every
            0.25 s, and wait4's ru_maxrss, which also covers its children: the memory probe),
            and per model build_info.json `memory` (model_builder/compat/memory.py: peak RSS of
            TF 2.11's C API loading + warming the version, the figure pods are sized by).
  serve     one local server per model (`python -m model_builder serve`, batching as the image).
  measure   recall@10 of search_by_vector on the held-out queries (merged over shards by
            ShardedRetrievalClient) against exact numpy search over the whole catalogue (ties
            counted as hits, like the build's gate); p50/p99 of sequential one-query search()
            (by id) and search_by_vector() calls; every server's RSS after the calls.
The shared 2-core machine: K servers and the client share 2 cores; the load average is
recorded at each step. `--one-shard I` builds and serves shard I alone (sharding.build_shard, as
shard-job does), its recall against exact search over its own partition: how the replicated
layout was measured when neither its unsharded nor its 4-shard build fitted in 23.5 GiB
(results/sharding_scale_replicated_shard0.json, benchmarks/README.md "Sharding").
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from benchmarks.common import REPO, load_average, log, machine, percentiles, versions, write_json

NAME = "scale"
K = 10


@dataclass
class BuildRun:
    """What one `build` process cost."""

    shards: int
    wall_s: float
    builder_peak_rss_mb: float
    builder_tree_maxrss_mb: float
    load_average_after: list[float]


def _sample_rss(pid: int) -> float:
    import psutil

    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).memory_info().rss / 1e6
    return 0.0


def build_one_shard(argv: list[str]) -> int:
    """`python -m benchmarks.sharding_scale build-shard I BUILD_ARGS...`: shard I only, through
    sharding.build_shard, the path `build --shards K` and shard_job.py take for every shard."""
    from model_builder.build_config import BuildConfig
    from model_builder.cli import parser
    from model_builder.cli_args import config_from_args
    from model_builder.index.config import IndexConfig
    from model_builder.sharding import build_shard, partition
    from model_builder.towers.prepare import prepare_imported
    from model_builder.towers.training import TrainConfig

    args = parser().parse_args(["build", *argv[1:]])
    cfg = config_from_args(BuildConfig, args)
    prepared = prepare_imported(cfg, print)
    shards, _ = partition(cfg, prepared, print)
    train_cfg, index_cfg = config_from_args(TrainConfig, args), config_from_args(IndexConfig, args)
    build_shard(cfg, train_cfg, index_cfg, prepared, shards, int(argv[0]), 1, lambda m: print(m, flush=True))
    return 0


def build(
    work: Path, items: Path, shards: int, extra: list[str], one: int | None = None, query_side: str = "partitioned"
) -> BuildRun:
    """Runs the build CLI (or shard `one` alone), sampling its RSS; progress lines every 30 s."""
    out = work / f"k{shards}"
    cmd = [sys.executable, "-m", "model_builder", "build", "--out", str(out), "--model-name", NAME]
    if one is not None:
        cmd[2:4] = ["benchmarks.sharding_scale", "build-shard", str(one)]
    cmd += ["--candidates", str(items), "--query", "item", *extra]
    if shards > 1:
        cmd += ["--shards", str(shards), "--query-side", query_side]
    log_path = work / f"build-k{shards}.log"
    log(f"build K={shards}: {' '.join(cmd[2:])} (log {log_path})")
    started = time.perf_counter()
    with open(log_path, "w") as handle:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
    peak, last_note, status, usage = 0.0, started, None, None
    while status is None:
        pid, code, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            status, usage = code, ru
            break
        peak = max(peak, _sample_rss(proc.pid))
        if time.perf_counter() - last_note > 30:
            last_note = time.perf_counter()
            lines = log_path.read_text(errors="replace").strip().splitlines()
            log(
                f"  K={shards} {last_note - started:.0f} s, builder RSS peak {peak:.0f} MB: {lines[-1] if lines else ''}"
            )
        time.sleep(0.25)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"build K={shards} exited {proc.returncode}:\n{tail}")
    wall = time.perf_counter() - started
    # ru_maxrss is in KiB on Linux.
    run = BuildRun(shards, round(wall, 1), round(peak, 1), round(usage.ru_maxrss * 1024 / 1e6, 1), load_average())
    log(f"build K={shards} done: {asdict(run)}")
    return run


def model_record(version_dir: Path) -> dict:
    """The parts of build_info.json this benchmark reports: index, tuning result, gate, memory."""
    from model_builder.export import version_store

    info = version_store.read_build_info(version_dir)
    memory = info.get("memory") or {}
    tuned = info.get("tuning") or {}
    return {
        "model": version_dir.parent.name,
        "index": info.get("index"),
        "tuning_chosen": {k: v for k, v in tuned.items() if not isinstance(v, list | dict)},
        "gate_recall": (info.get("verification") or {}).get("recall_at_k"),
        "memory_peak_rss_mb": round(memory.get("peak_rss_bytes", 0) / 1e6, 1) or None,
        "memory_baseline_rss_mb": round(memory.get("baseline_rss_bytes", 0) / 1e6, 1) or None,
        "memory_model_files_mb": round(memory.get("model_bytes", 0) / 1e6, 1) or None,
        "memory_runtime": memory.get("runtime"),
    }


def exact_top(base: np.ndarray, queries: np.ndarray, chunk: int = 262_144) -> np.ndarray:
    """Each query's exact k-th best score over the whole base (numpy, base in chunks: bounded memory)."""
    best = np.full((len(queries), K), -np.inf, np.float32)
    for start in range(0, len(base), chunk):
        scores = queries @ base[start : start + chunk].T
        # A chunk of at most K rows (the last one can be) is kept whole: partition needs K columns.
        part = scores if scores.shape[1] <= K else np.partition(scores, scores.shape[1] - K, axis=1)[:, -K:]
        merged = np.concatenate([best, part], axis=1)
        best = np.partition(merged, merged.shape[1] - K, axis=1)[:, -K:]
    return np.sort(best, axis=1)[:, 0]


def recall(results: list, base: np.ndarray, queries: np.ndarray, kth: np.ndarray) -> float:
    """Hits: returned ids whose true score reaches the exact k-th best (ties count, as in verify.py)."""
    hits = 0
    for q, res, bar in zip(queries, results, kth, strict=True):
        rows = np.array([int(str(i).removeprefix("sku-")) for i in res.ids], np.int64)
        hits += int(np.sum(base[rows] @ q >= bar - 1e-5))
    return hits / (K * len(queries))


def _timed(call, args: list, calls: int) -> dict:
    """Sequential calls after 50 warm-up calls: p50/p99 of the client's wall time."""
    for i in range(50):
        call(args[i % len(args)])
    samples = []
    for i in range(calls):
        start = time.perf_counter()
        call(args[i % len(args)])
        samples.append(time.perf_counter() - start)
    return percentiles(samples)


def serve_and_measure(
    work: Path, shards: int, data: tuple, calls: int, one: int | None = None, query_side: str = "partitioned"
) -> dict:
    """Serves one configuration (one server per model, or shard `one` alone: recall then against
    exact search over that shard's partition), measures recall and latency, stops it."""
    from model_builder.serve import process
    from model_builder.sharding import shard_of
    from retrieval_client import RetrievalClient, Shard, ShardedRetrievalClient, shard_models

    base, queries, kth, ids = data
    out = work / f"k{shards}"
    models = [NAME] if shards == 1 else [f"{NAME}-shard-{i}" for i in range(shards)]
    if one is not None:
        models = [models[one]]
        # The k-th best over this shard's rows; its answers are among them, scored from `base`.
        kth = exact_top(base[shard_of(ids, shards) == one], queries)
    with contextlib.ExitStack() as stack:
        started = time.perf_counter()
        servers = [
            stack.enter_context(process.running(out, m, work / f"serve-{m}.log", port=process.free_port(), cwd=REPO))
            for m in models
        ]
        for server in servers:
            server.wait_available(timeout=1200)
        load_s = time.perf_counter() - started
        log(f"serve K={shards}: {len(servers)} server(s) AVAILABLE after {load_s:.0f} s")
        targets = [s.target for s in servers]
        query_ids = [ids[i : i + 1] for i in np.random.default_rng(0).integers(len(ids), size=1000)]
        if shards == 1:
            client = stack.enter_context(RetrievalClient(targets[0], NAME, timeout_s=30))
        elif one is not None:
            single = stack.enter_context(RetrievalClient(targets[0], models[0], timeout_s=30))
            row_ = {"one_shard_retrieval_client": _timed(lambda x: single.search(x, K), query_ids, calls)}
            client = stack.enter_context(ShardedRetrievalClient([Shard(targets[0], models[0])], timeout_s=30))
        else:
            sharded = ShardedRetrievalClient(shard_models(NAME, targets), timeout_s=30, query_side=query_side)
            client = stack.enter_context(sharded)
        answers = []
        for start in range(0, len(queries), 50):
            answers += client.search_by_vector(queries[start : start + 50], K)
        row: dict = {"servers_available_s": round(load_s, 1), "models": models}
        if one is not None:
            row.update(row_)
        row["recall_at_10_search_by_vector"] = round(recall(answers, base, queries, kth), 4)
        log(f"serve K={shards}: recall@10 over {len(models)} model(s) {row['recall_at_10_search_by_vector']}")
        row["search_by_id"] = _timed(lambda x: client.search(x, K), query_ids, calls)
        vectors = [queries[i : i + 1] for i in range(len(queries))]
        row["search_by_vector"] = _timed(lambda x: client.search_by_vector(x, K), vectors, calls)
        row["server_rss_mb"] = [round(_sample_rss(s.proc.pid), 1) for s in servers]
        row["load_average_after"] = load_average()
        log(f"serve K={shards}: {row}")
    return row


def catalogue(work: Path, items_n: int, dim: int, queries_n: int) -> tuple:
    """Writes the candidates file; returns (base, test queries, exact k-th scores, ids)."""
    from benchmarks.datasets import synthetic

    data = synthetic(items_n, dim, 0, queries_n, seed=0)
    ids = np.array([f"sku-{i}" for i in range(items_n)])
    path = work / "items.npz"
    if not path.is_file():
        np.savez(path, ids=ids, vectors=data.base)
    log(f"catalogue {data.base.shape}, {len(data.test)} held-out queries; exact search ...")
    kth = exact_top(data.base, data.test)
    log("exact search done")
    return (data.base, data.test, kth, ids), data.describe()


def run(args: argparse.Namespace) -> dict:
    """Both configurations, one after the other; the JSON is rewritten after each step."""
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    body: dict = {
        "what": "4M-row sharding: build cost, per-model memory, merged recall@10, single-query latency",
        "machine": machine(),
        "versions": versions(),
        "build_flags": args.build_flags,
        "query_side": args.query_side,
        "configurations": {},
    }
    data, body["catalogue"] = catalogue(work, args.items, args.dim, args.queries)
    for shards in args.configs:
        try:
            run_ = build(work, work / "items.npz", shards, args.build_flags, args.one_shard, args.query_side)
        except RuntimeError as err:  # e.g. the kernel's OOM killer: recorded, the next configuration still runs
            log(str(err))
            body["configurations"][f"k{shards}"] = {"build_failed": str(err).splitlines()[-3:]}
            write_json(args.out, body)
            shutil.rmtree(work / f"k{shards}", ignore_errors=True)
            continue
        out = work / f"k{shards}"
        version_dirs = sorted(p for p in out.glob("*/*") if p.is_dir() and p.name.isdigit())
        config = {"build": asdict(run_), "models": [model_record(v) for v in version_dirs]}
        manifest = next(out.glob(f"{NAME}.shards-*.json"), None)
        if manifest is not None:
            import json

            config["build_merged_verification"] = json.loads(manifest.read_text())["merged_verification"]
        body["configurations"][f"k{shards}" + ("" if args.one_shard is None else f"-shard-{args.one_shard}")] = config
        write_json(args.out, body)
        config["served"] = serve_and_measure(work, shards, data, args.calls, args.one_shard, args.query_side)
        body["load_average_at_end"] = load_average()
        write_json(args.out, body)
        if not args.keep:
            shutil.rmtree(out)  # disk: the 4M models are GBs each
    return body


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=4_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument(
        "--configs", default="1,4", help="shard counts to build and serve, one after another (1 = unsharded)"
    )
    p.add_argument("--queries", type=int, default=1000, help="held-out queries for recall")
    p.add_argument("--calls", type=int, default=400, help="timed calls per latency figure")
    p.add_argument("--work", type=Path, default=REPO / "build" / "sharding-scale")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "sharding_scale.json")
    p.add_argument("--one-shard", type=int, help="build and serve only this shard of each K (memory: see README)")
    p.add_argument("--query-side", default="partitioned", choices=("partitioned", "replicated"))
    p.add_argument("--keep", action="store_true", help="keep the built models under --work")
    p.add_argument(
        "--build-flags",
        default="--no-index-search",
        help="extra build flags, one string (write --build-flags='...'; default: --no-index-search, see above)",
    )
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["build-shard"]:
        return build_one_shard(argv[1:])
    args = p.parse_args(argv)
    args.build_flags = shlex.split(args.build_flags)
    try:
        args.configs = [int(c) for c in args.configs.split(",")]
    except ValueError:
        args.configs = []
    if args.items < 1000 or not args.configs or min(args.configs) < 1:
        print("error: --items must be >= 1000 and --configs shard counts >= 1, e.g. 1,4", file=sys.stderr)
        return 2
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
