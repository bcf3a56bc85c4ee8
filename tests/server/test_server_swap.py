"""A new version appears while clients loop: no request fails, every answer comes from one complete version.

Version 1 has K=10, version 2 has K=5 and other vectors for the same ids, so
each answer is attributable: by the response's model_spec.version (raw gRPC)
and by its K and ids (the client, which does not expose the version).
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.request

import pytest

import support
from retrieval_client import RetrievalClient
from support import harness

QUERIES = [f"sku-{i}" for i in range(0, harness.NUM_ITEMS, 97)]
BATCH = 3


def _answers(raw: harness.Raw, version: int) -> dict[str, tuple]:
    response = raw.predict(harness.ids_request(QUERIES, version=version))
    assert response.model_spec.version.value == version
    rows = harness.outputs(response)["ids"]
    return {q: tuple(i.decode() for i in row) for q, row in zip(QUERIES, rows, strict=True)}


class Loop(threading.Thread):
    """Sends batches of BATCH ids round-robin until stopped; records (version or None, batch, rows) or the error."""

    def __init__(self, send) -> None:
        super().__init__(daemon=True)
        self.send, self.records, self.errors = send, [], []
        self.stop = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            batch = [QUERIES[(i + j) % len(QUERIES)] for j in range(BATCH)]
            i += BATCH
            try:
                self.records.append((*self.send(batch), batch))
            except Exception as err:
                self.errors.append(repr(err))


def _run_until(loops: list[Loop], predicate, count_after: int, timeout: float) -> None:
    """Waits for predicate(), then until each loop made count_after more requests."""
    support.wait_for(predicate, timeout, "the swap")
    marks = [len(loop.records) + len(loop.errors) for loop in loops]
    support.wait_for(
        lambda: all(len(lp.records) + len(lp.errors) >= m + count_after for lp, m in zip(loops, marks)),
        timeout,
        "requests after the swap",
    )


def test_version_swap_while_clients_loop(tmp_path, items_model, items_v2_model):
    model_dir = tmp_path / "models" / harness.MODEL
    harness.publish_copy(items_model, model_dir, 1)
    with support.local_server(tmp_path / "models", harness.MODEL, log_dir=tmp_path) as server:
        server.wait_available(1)
        with pytest.raises(urllib.error.HTTPError, match="404"):  # no --monitoring_config_file: no metrics
            urllib.request.urlopen(f"{server.rest}/monitoring/prometheus/metrics", timeout=10)
        raw = harness.Raw(server.target)
        expected = {1: _answers(raw, 1)}

        def via_raw(batch):
            response = raw.predict(harness.ids_request(batch), timeout=30)
            return response.model_spec.version.value, [
                tuple(i.decode() for i in row) for row in harness.outputs(response)["ids"]
            ]

        client = RetrievalClient(server.target, harness.MODEL, timeout_s=30)

        def via_client(batch):
            return None, [tuple(r.ids.tolist()) for r in client.search(batch)]

        loops = [Loop(via_raw), Loop(via_client)]
        for loop in loops:
            loop.start()
        support.wait_for(lambda: all(len(lp.records) >= 20 for lp in loops), 60, "requests before the swap")
        harness.publish_copy(items_v2_model, model_dir, 2)
        _run_until(loops, lambda: raw.states() == {1: "END", 2: "AVAILABLE"}, count_after=20, timeout=120)
        for loop in loops:
            loop.stop.set()
            loop.join(60)
        expected[2] = _answers(raw, 2)
        status = server.status()
        client.close()
        raw.close()

    assert expected[1] != expected[2] and {len(v) for v in expected[1].values()} == {10}
    assert {len(v) for v in expected[2].values()} == {5}
    for loop in loops:
        assert loop.errors == [], loop.errors[:5]
    versions_seen = {1: 0, 2: 0}
    for version, rows, batch in loops[0].records:
        assert rows == [expected[version][q] for q in batch], (version, batch, rows)
        versions_seen[version] += 1
    for _, rows, batch in loops[1].records:
        version = 1 if len(rows[0]) == 10 else 2
        assert rows == [expected[version][q] for q in batch], (batch, rows)
    assert min(versions_seen.values()) >= 20, versions_seen
    assert {s["version"]: s["state"] for s in status["model_version_status"]} == {"1": "END", "2": "AVAILABLE"}
    print(f"swap: {sum(len(lp.records) for lp in loops)} requests, 0 failed; raw answers by version {versions_seen}")
