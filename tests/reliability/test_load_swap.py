"""Under load: 16 concurrent clients while a new version is built and published into the served base path.

Bounded: each client sends batches of 4 ids until the swap is over and then 25
more (hard limit 300 s); loopback only. Version 1 has K=10, version 2 (built
by the real CLI, export's atomic publish) has K=5 and other vectors, so each
answer is attributable. Latencies are reported (printed and written to
load_swap.json under the test's tmp dir), not asserted.
"""

from __future__ import annotations

import threading
import time

import numpy as np

import support
from retrieval_client import RetrievalClient
from support import harness

CLIENTS, BATCH, AFTER, LIMIT_S = 16, 4, 25, 300.0
QUERIES = [f"sku-{i}" for i in range(0, harness.NUM_ITEMS, 41)]


def _expected(raw: harness.Raw, version: int) -> dict[str, tuple]:
    response = raw.predict(harness.ids_request(QUERIES, version=version))
    return {q: tuple(i.decode() for i in row) for q, row in zip(QUERIES, harness.outputs(response)["ids"], strict=True)}


class Client(threading.Thread):
    """One client with its own channel: (start, latency_s, batch, rows) per request, or the error."""

    def __init__(self, target: str, seed: int, done: threading.Event) -> None:
        super().__init__(daemon=True)
        self.client = RetrievalClient(target, harness.MODEL, timeout_s=60)
        self.rng = np.random.default_rng(seed)
        self.done, self.after = done, 0
        self.records: list[tuple[float, float, list[str], list[tuple]]] = []
        self.errors: list[str] = []

    def run(self) -> None:
        deadline = time.monotonic() + LIMIT_S
        while self.after < AFTER and time.monotonic() < deadline:
            batch = [QUERIES[i] for i in self.rng.integers(0, len(QUERIES), BATCH)]
            swapped = self.done.is_set()
            started = time.monotonic()
            try:
                rows = [tuple(r.ids.tolist()) for r in self.client.search(batch)]
                self.records.append((started, time.monotonic() - started, batch, rows))
            except Exception as err:
                self.errors.append(repr(err))
            self.after += swapped
        self.client.close()


def _percentiles(latencies: list[float]) -> dict:
    if not latencies:
        return {"count": 0}
    ms = np.asarray(latencies) * 1000
    return {
        "count": len(ms),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "max_ms": round(float(ms.max()), 2),
    }


def test_16_clients_while_a_new_version_is_built_and_swapped_in(tmp_path, items_model):
    base = tmp_path / "models"
    harness.publish_copy(items_model, base / harness.MODEL, 1)
    v2_items = harness.write_items(tmp_path / "items-v2.npz", seed=4)
    events: dict[str, float] = {}
    with support.local_server(base, harness.MODEL, log_dir=tmp_path) as server:
        server.wait_available(1)
        raw = harness.Raw(server.target)
        expected = {10: _expected(raw, 1)}
        done = threading.Event()
        clients = [Client(server.target, seed, done) for seed in range(CLIENTS)]
        for client in clients:
            client.start()
        support.wait_for(lambda: all(len(c.records) >= 5 for c in clients), 120, "every client to be running")
        events["build_started"] = time.monotonic()
        build = harness.cli_async(
            "build",
            "--out",
            str(base),
            "--model-name",
            harness.MODEL,
            "--candidates",
            str(v2_items),
            "--query",
            "item",
            "-k",
            "5",
            "--verify-queries",
            "100",
        )
        while build.poll() is None or not done.is_set():
            states = raw.states()
            now = time.monotonic()
            if (base / harness.MODEL / "2").is_dir():
                events.setdefault("version_2_published", now)
            if states.get(2) == "LOADING":
                events.setdefault("version_2_loading", now)
            if states.get(2) == "AVAILABLE":
                events.setdefault("version_2_available", now)
            if states.get(1) == "END":
                events.setdefault("version_1_unloaded", now)
                done.set()
            assert now - events["build_started"] < LIMIT_S, f"no swap within {LIMIT_S} s; states {states}"
            time.sleep(0.02)
        stdout, stderr = build.communicate(timeout=60)
        for client in clients:
            client.join(LIMIT_S)
        expected[5] = _expected(raw, 2)
        raw.close()

    assert build.returncode == 0, stderr[-3000:]
    records = [r for c in clients for r in c.records]
    errors = [e for c in clients for e in c.errors]
    assert errors == [], errors[:5]
    by_version = {10: 0, 5: 0}
    for _, _, batch, rows in records:
        k = len(rows[0])
        assert rows == [expected[k][q] for q in batch], ("mixed or wrong answer", k, batch, rows)
        by_version[k] += 1
    assert min(by_version.values()) >= CLIENTS, by_version
    window = (events.get("version_2_published", events["build_started"]), events["version_1_unloaded"])
    phases = {
        "before_publish": [lat for start, lat, _, _ in records if start < window[0]],
        "during_swap": [lat for start, lat, _, _ in records if window[0] <= start <= window[1]],
        "after_swap": [lat for start, lat, _, _ in records if start > window[1]],
    }
    report = {
        "clients": CLIENTS,
        "batch": BATCH,
        "requests": len(records),
        "failed": len(errors),
        "answers_by_version": {"1": by_version[10], "2": by_version[5]},
        "swap_window_s": round(window[1] - window[0], 3),
        "events_s": {k: round(v - events["build_started"], 3) for k, v in sorted(events.items(), key=lambda kv: kv[1])},
        "latency": {name: _percentiles(lats) for name, lats in phases.items()},
    }
    harness.write_json(tmp_path / "load_swap.json", report)
    print(f"load test ({tmp_path / 'load_swap.json'}): {report}")
