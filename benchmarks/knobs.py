"""Serving knobs: TF's intra/inter-op thread pools (measured through the local server) and batching.

The thread knobs are measured without batching, so that each request is one signature call;
the served e2e path (runner.py) runs with the image's batching file and without it. What a
merged batch costs the model is measured as one signature call per batch size (the batch
curve). From it we derive the batching advice: merge up to the size where the cost per query
stops falling, and wait at most about one single-query search for company.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import numpy as np

from benchmarks import timing
from benchmarks.common import log, percentiles
from benchmarks.e2e import concurrent, local_server, make_search

# Among settings within this factor of the best single-client p99, the highest 8-client throughput wins.
P99_SLACK = 1.25


def thread_flags(intra: int, inter: int) -> tuple[str, ...]:
    """tensorflow_model_server's flags (0 = TF's default: one thread per core)."""
    return ("--tensorflow_intra_op_parallelism", str(intra), "--tensorflow_inter_op_parallelism", str(inter))


def measure_threads(base_path: Path, model: str, test: np.ndarray, profile, logs: Path) -> dict:
    """Every (intra, inter) setting on its own server, all running at once and taking turns in rounds.

    Per setting: 1-client latency (samples pooled over rounds), 1-client batch-64
    throughput and N-client throughput (medians over rounds).
    """
    rounds = profile.rounds
    with contextlib.ExitStack() as stack:
        servers = {}
        for intra, inter in profile.thread_settings:
            log(f"threads: starting a server with intra={intra} inter={inter}")
            servers[(intra, inter)] = stack.enter_context(
                local_server(base_path, model, logs / f"server-threads-{intra}-{inter}.log", thread_flags(intra, inter))
            )
        clients = {key: make_search(server.spec) for key, server in servers.items()}
        single: dict = {key: [] for key in servers}
        batch: dict = {key: [] for key in servers}
        many: dict = {key: [] for key in servers}
        for r in range(rounds):
            for key, server in servers.items():
                single[key] += timing.latency(
                    clients[key], test, profile.knob_requests // rounds, profile.knob_max_s / rounds, raw=True
                )
                batch[key].append(
                    timing.throughput(clients[key], test, 64, profile.knob_max_s / rounds, profile.knob_requests)["qps"]
                )
                many[key].append(
                    concurrent(
                        server.spec, test, profile.e2e_clients, profile.knob_concurrent_s / rounds, profile.e2e_requests
                    )
                )
            log(f"threads: round {r + 1}/{rounds} done")
        rows = []
        for (intra, inter), server in servers.items():
            lat = percentiles(single[(intra, inter)])
            runs = sorted(many[(intra, inter)], key=lambda run: run["qps"])
            mid = runs[len(runs) // 2]
            rows.append(
                {
                    "intra_op": intra,
                    "inter_op": inter,
                    "single_p50_ms": lat["p50_ms"],
                    "single_p99_ms": lat["p99_ms"],
                    "batch64_qps": float(np.median(batch[(intra, inter)])),
                    "concurrent_qps": mid["qps"],
                    "concurrent_qps_rounds": [run["qps"] for run in runs],
                    "concurrent_p99_ms": mid["latency"]["p99_ms"],
                    "rss_mb": server.rss_mb(),
                }
            )
            log(
                f"threads intra={intra} inter={inter}: 1 client p50 {lat['p50_ms']} / p99 {lat['p99_ms']} ms, batch-64 "
                f"{rows[-1]['batch64_qps']} QPS, {profile.e2e_clients} clients {mid['qps']} QPS"
            )
    best_p99 = min(r["single_p99_ms"] for r in rows)
    eligible = [r for r in rows if r["single_p99_ms"] <= P99_SLACK * best_p99]
    chosen = max(eligible, key=lambda r: r["concurrent_qps"])
    return {
        "settings": rows,
        "rounds": rounds,
        "rule": f"highest {profile.e2e_clients}-client QPS among settings whose 1-client p99 is within "
        f"{P99_SLACK}x of the best",
        "chosen": {"intra_op": chosen["intra_op"], "inter_op": chosen["inter_op"]},
    }


def batching_advice(curve: list[dict], cores: int, p99_budget_ms: float, max_request_rows: int = 1024) -> dict:
    """BatchingParameters derived from the measured batch curve (see the module docstring).

    max_execution_batch_size: among batch sizes whose one call fits the p99 budget, the
    smallest within 15% of the cheapest cost per query (past that knee a bigger batch adds
    waiting and call time for little saving). batch_timeout_micros: about one single-query
    call (waiting longer for company costs a lone request more than merging saves).
    max_enqueued_batches: the fewest execution batches whose rows hold one request of
    max_batch_size (the build's --max-batch-size) on an idle queue, TF's capacity rule with
    large-batch splitting (shared_batch_scheduler.h). One batch thread per core.
    """
    fits = [p for p in curve if p["median_call_ms"] <= p99_budget_ms] or curve[:1]
    best = min(p["us_per_query"] for p in fits)
    knee = min((p for p in fits if p["us_per_query"] <= 1.15 * best), key=lambda p: p["batch"])
    single = min(curve, key=lambda p: p["batch"])
    timeout_us = int(max(100, round(single["median_call_ms"] * 1000, -2)))
    return {
        "max_batch_size": max_request_rows,
        "enable_large_batch_splitting": True,
        "max_execution_batch_size": knee["batch"],
        "batch_timeout_micros": timeout_us,
        "num_batch_threads": cores,
        "max_enqueued_batches": math.ceil(max_request_rows / knee["batch"]),
        "p99_budget_ms": p99_budget_ms,
        "single_call_ms": single["median_call_ms"],
        "call_ms_at_execution_batch": knee["median_call_ms"],
        "us_per_query_single": single["us_per_query"],
        "us_per_query_at_execution_batch": knee["us_per_query"],
        "merge_gain": round(single["us_per_query"] / knee["us_per_query"], 1),
    }


def _first_requests(search, test: np.ndarray, count: int = 5) -> list[float]:
    out = []
    for i in range(count):
        start = time.perf_counter()
        search(test[-1 - i][None, :])  # queries from the end of the test set: never in any warmup record
        out.append(round((time.perf_counter() - start) * 1e3, 3))
    return out


def cold_start(
    base_path: Path,
    model: str,
    test: np.ndarray,
    requests: int,
    logs: Path,
    warmup: bool,
    extra: tuple[str, ...] = (),
    repeats: int = 1,
) -> dict:
    """First request after AVAILABLE vs the steady p99 that follows, on `repeats` fresh servers.

    Also times the first requests of a brand-new client against the then warm
    server: what a first call costs the client and the connection alone.
    """
    flags = extra + (() if warmup else ("--enable_model_warmup=false",))
    runs = []
    for n in range(repeats):
        with local_server(base_path, model, logs / f"server-coldstart-warmup-{warmup}-{n}.log", flags) as server:
            search = make_search(server.spec)  # opens the connection with GetModelMetadata, no Predict yet
            firsts = _first_requests(search, test)
            steady = timing.latency(search, test, requests, 30.0, warm=0)
            fresh_client = _first_requests(make_search(server.spec), test)
        runs.append(
            {
                "ready_s": round(server.ready_s, 2),
                "first_requests_ms": firsts,
                "steady": steady,
                "fresh_client_on_warm_server_ms": fresh_client,
            }
        )
        log(
            f"cold start (warmup {'on' if warmup else 'off'}) {n + 1}/{repeats}: ready in {server.ready_s:.1f} s, "
            f"first requests {firsts} ms, steady p99 {steady['p99_ms']} ms; new client on the warm server {fresh_client} ms"
        )
    first = float(np.median([r["first_requests_ms"][0] for r in runs]))
    steady_p99 = float(np.median([r["steady"]["p99_ms"] for r in runs]))
    return {
        "warmup": warmup,
        "repeats": repeats,
        "runs": runs,
        "ready_s": float(np.median([r["ready_s"] for r in runs])),
        "first_request_ms": round(first, 3),
        "steady_p99_ms": round(steady_p99, 3),
        "steady_p50_ms": float(np.median([r["steady"]["p50_ms"] for r in runs])),
        "fresh_client_first_ms": float(np.median([r["fresh_client_on_warm_server_ms"][0] for r in runs])),
        "ratio_first_to_steady_p99": round(first / steady_p99, 2),
    }
