"""End to end over loopback: servers as subprocesses, clients in this process or in client processes.

Ours: `python -m model_builder serve` (TF Serving's gRPC API) queried with
`retrieval_client.RetrievalClient.search_by_vector`. Theirs: the FastAPI + Faiss
service of benchmarks/faiss_service.py queried with JSON over a kept-alive
HTTP/1.1 connection (http.client: the lightest Python HTTP client, so the client
side flatters neither). Every loop is bounded in requests and in seconds.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import multiprocessing as mp
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.common import ENV, PYTHON, REPO, log, percentiles, rss_mb
from model_builder.serve import process
from model_builder.serve.process import free_port

K = 10


@dataclass
class Server:
    """A running server subprocess and how to reach it."""

    kind: str
    proc: subprocess.Popen
    spec: tuple
    log_path: Path
    ready_s: float

    def rss_mb(self) -> float:
        """The server process's resident memory now."""
        return rss_mb(self.proc.pid)


def _spawn(cmd: list[str], log_path: Path) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as handle:
        return subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=ENV, cwd=REPO)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _died(proc: subprocess.Popen, log_path: Path) -> RuntimeError:
    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
    return RuntimeError(f"server exited with {proc.returncode}; log {log_path}:\n{tail}")


@contextlib.contextmanager
def local_server(
    base_path: Path,
    model_name: str,
    log_path: Path,
    extra: tuple[str, ...] = (),
    timeout_s: float = 600,
    batching: bool = False,
) -> Iterator[Server]:
    """Our local TF-Serving-API server on free ports (the tests' and the demo's launcher); yields once AVAILABLE.

    batching=True serves with the image's --enable_batching and batching file.
    """
    with process.running(
        base_path,
        model_name,
        log_path,
        "--file_system_poll_wait_seconds",
        "0",
        *extra,
        batching=batching,
        env=ENV,
        cwd=REPO,
    ) as server:
        server.wait_available(timeout=timeout_s)
        yield Server(
            "grpc", server.proc, ("grpc", server.target, model_name), log_path, time.perf_counter() - server.started
        )


@contextlib.contextmanager
def faiss_service(index_path: Path, params: str, log_path: Path, timeout_s: float = 300) -> Iterator[Server]:
    """The FastAPI + Faiss service on a free port; yields once /healthz answers."""
    port = free_port()
    started = time.perf_counter()
    proc = _spawn(
        [PYTHON, "-m", "benchmarks.faiss_service", "--index", str(index_path), "--params", params, "--port", str(port)],
        log_path,
    )
    try:
        while True:
            if proc.poll() is not None:
                raise _died(proc, log_path)
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    conn.close()
                    break
            if time.perf_counter() - started > timeout_s:
                raise TimeoutError(f"faiss service not up after {timeout_s:.0f} s; see {log_path}")
            time.sleep(0.2)
        yield Server("http", proc, ("http", "127.0.0.1", port), log_path, time.perf_counter() - started)
    finally:
        _stop(proc)


class GrpcSearch:
    """Our client: one RetrievalClient (one HTTP/2 channel), search_by_vector -> rows."""

    def __init__(self, target: str, model: str) -> None:
        from retrieval_client import RetrievalClient

        self.client = RetrievalClient(target, model, timeout_s=60)
        self.client.metadata()  # the contract is fetched once per client; not part of any timed call

    def __call__(self, vectors: np.ndarray) -> np.ndarray:
        return np.asarray([r.ids for r in self.client.search_by_vector(vectors, k=K)], dtype=np.int64)


class HttpSearch:
    """Their client: JSON POST over one kept-alive HTTP/1.1 connection -> rows."""

    def __init__(self, host: str, port: int) -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=60)
        self.headers = {"Content-Type": "application/json"}

    def __call__(self, vectors: np.ndarray) -> np.ndarray:
        body = json.dumps({"vectors": vectors.tolist(), "k": K})
        try:
            self.conn.request("POST", "/search", body, self.headers)
            response = self.conn.getresponse()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            self.conn.close()  # the server closed an idle keep-alive connection: reconnect once
            self.conn.request("POST", "/search", body, self.headers)
            response = self.conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"faiss service answered {response.status}: {body[:200]!r}")
        return np.asarray(json.loads(body)["ids"], dtype=np.int64)


def make_search(spec: tuple):
    """A client for a server spec: ("grpc", target, model) or ("http", host, port)."""
    return GrpcSearch(spec[1], spec[2]) if spec[0] == "grpc" else HttpSearch(spec[1], spec[2])


def _client_process(
    spec: tuple, queries: np.ndarray, offset: int, batch: int, ready, start, results, seconds: float, max_requests: int
) -> None:
    search = make_search(spec)
    for i in range(3):
        search(queries[i : i + batch])
    ready.put(True)
    start.wait()
    deadline = time.perf_counter() + seconds
    samples = []
    for n in range(max_requests):
        i = (offset + n * batch) % max(1, len(queries) - batch)
        began = time.perf_counter()
        search(queries[i : i + batch])
        samples.append(time.perf_counter() - began)
        if began > deadline:
            break
    results.put(samples)


def concurrent(
    spec: tuple, queries: np.ndarray, clients: int, seconds: float, max_requests: int, batch: int = 1
) -> dict:
    """`clients` client processes sending back-to-back requests for ~`seconds`: total QPS and latency."""
    ctx = mp.get_context("spawn")
    ready, results, start = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(
            target=_client_process,
            daemon=True,
            args=(spec, queries, c * 97, batch, ready, start, results, seconds, max_requests),
        )
        for c in range(clients)
    ]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            ready.get(timeout=120)
        began = time.perf_counter()
        start.set()
        samples = [results.get(timeout=seconds + 300) for _ in procs]
        wall = time.perf_counter() - began
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    flat = [s for per in samples for s in per]
    return {
        "clients": clients,
        "batch": batch,
        "requests": len(flat),
        "seconds": round(wall, 2),
        "qps": round(len(flat) * batch / wall, 1),
        "latency": percentiles(flat),
    }


def measure_servers(
    servers: dict[str, Server], test: np.ndarray, kth: np.ndarray, base: np.ndarray, cfg: dict
) -> dict[str, dict]:
    """Recall through the wire, 1-client latency, N-client throughput and RSS of every running server.

    The servers take turns in `rounds` rounds (A B C A B C ...), so drifting
    background load on a shared machine hits all of them alike: latency samples
    are pooled over the rounds, throughput is the median of the rounds.
    """
    from benchmarks import timing

    rounds = cfg["rounds"]
    clients = {name: make_search(server.spec) for name, server in servers.items()}
    out: dict[str, dict] = {}
    for name, server in servers.items():
        out[name] = {
            "kind": server.kind,
            "ready_s": round(server.ready_s, 2),
            "rss_idle_mb": server.rss_mb(),
            "recall_at_10": timing.recall(clients[name], test, kth, base, "dot_product"),
        }
    samples: dict[str, list[float]] = {name: [] for name in servers}
    runs: dict[str, list[dict]] = {name: [] for name in servers}
    for r in range(rounds):
        for name, server in servers.items():
            lat = timing.latency(
                clients[name], test, cfg["e2e_requests"] // rounds, cfg["e2e_max_s"] / rounds, raw=True
            )
            samples[name] += lat
            runs[name].append(
                concurrent(server.spec, test, cfg["e2e_clients"], cfg["e2e_concurrent_s"] / rounds, cfg["e2e_requests"])
            )
            log(
                f"  round {r + 1}/{rounds} {name}: 1 client p50 {np.median(lat) * 1e3:.3f} ms, "
                f"{cfg['e2e_clients']} clients {runs[name][-1]['qps']} QPS"
            )
    for name, server in servers.items():
        single = percentiles(samples[name])
        single["qps"] = round(1e3 / single["p50_ms"], 1)
        qps = sorted(run["qps"] for run in runs[name])
        median_run = sorted(runs[name], key=lambda run: run["qps"])[len(qps) // 2]
        out[name].update(
            {
                "single_client": single,
                "concurrent": {**median_run, "rounds_qps": qps},
                "rss_after_load_mb": server.rss_mb(),
            }
        )
        log(
            f"  {name}: recall {out[name]['recall_at_10']}, 1 client p50 {single['p50_ms']} ms / p99 {single['p99_ms']} ms, "
            f"{cfg['e2e_clients']} clients {median_run['qps']} QPS (median of {qps}), RSS {out[name]['rss_after_load_mb']} MB"
        )
    return out
