"""Recovery after an outage: the real local server is killed, stays down for more than 40 s, and
comes back on the same address; the client serves again within a few seconds of the model being
AVAILABLE (its channel retries at most every 2 s). A second client with gRPC's default reconnect
backoff (1 s growing to 120 s) runs alongside for comparison; both figures are printed."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from pathlib import Path

import pytest

import support
from model_builder.serve import process
from retrieval_client import RetrievalClient, RetrievalError

OUTAGE_S = 42.0
# Generous on purpose (a loaded 2-core CI machine); the measured figure is printed.
RECOVERY_BOUND_S = 10.0
GRPC_DEFAULT_BACKOFF = [("grpc.initial_reconnect_backoff_ms", 1000), ("grpc.max_reconnect_backoff_ms", 120_000)]


def serve(version_dir: Path, port: int, rest: int, log: Path):
    """The local server on fixed ports (the restart must reuse the address); stopped on exit."""
    return process.running(
        version_dir.parent.parent,
        version_dir.parent.name,
        log,
        port=port,
        rest_port=rest,
        batching=False,
        env=support.ENV,
        cwd=support.REPO,
    )


def first_success_after(client: RetrievalClient, query, since: float, give_up_s: float) -> float | None:
    """Seconds from `since` to the first successful search (polling every 50 ms), None if none."""
    while time.monotonic() - since < give_up_s:
        try:
            client.search(query, timeout_s=1.0)
            return time.monotonic() - since
        except RetrievalError:
            time.sleep(0.05)
    return None


@pytest.mark.slow
def test_client_serves_again_within_seconds_after_a_40s_outage(synthetic_model, tmp_path):
    port, rest = support.free_port(), support.free_port()
    logs = tmp_path
    ours = RetrievalClient(f"127.0.0.1:{port}", synthetic_model.parent.name, timeout_s=2.0)
    defaults = RetrievalClient(
        f"127.0.0.1:{port}", synthetic_model.parent.name, timeout_s=2.0, channel_options=GRPC_DEFAULT_BACKOFF
    )
    with ours, defaults:
        with serve(synthetic_model, port, rest, logs / "server-before.log") as server:
            server.wait_available(int(synthetic_model.name))
            query = ours.examples().query_ids[:1]
            assert ours.search(query)[0].found and defaults.search(query)[0].found
            server.proc.send_signal(signal.SIGKILL)  # the pod is gone, no goodbye
            server.proc.wait()
        down_at = time.monotonic()
        # Both clients keep calling during the outage, as a backend would.
        while time.monotonic() - down_at < OUTAGE_S:
            for client in (ours, defaults):
                with contextlib.suppress(RetrievalError):
                    client.search(query, timeout_s=0.5)
                    pytest.fail("the server is down; no call can succeed")
            time.sleep(0.5)
        with serve(synthetic_model, port, rest, logs / "server-after.log") as server:
            server.wait_available(int(synthetic_model.name), timeout=180)
            back_at = time.monotonic()
            outage = back_at - down_at
            result = {}
            other = threading.Thread(
                target=lambda: result.update(
                    defaults=first_success_after(defaults, query, back_at, RECOVERY_BOUND_S + 30)
                )
            )
            other.start()
            result["ours"] = first_success_after(ours, query, back_at, RECOVERY_BOUND_S + 30)
            other.join()
    shown = {name: ("not within 40 s" if value is None else f"{value:.2f} s") for name, value in result.items()}
    print(
        f"\noutage {outage:.1f} s; serving again after the model was AVAILABLE: this client {shown['ours']}, "
        f"with gRPC's default reconnect backoff {shown['defaults']}"
    )
    assert result["ours"] is not None and result["ours"] <= RECOVERY_BOUND_S, shown
