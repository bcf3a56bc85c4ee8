"""A draining server cancels the calls it will not finish: the client gets ServerCancelledError,
and with retries on (every call is a read) the call is resent and answered by the replacement."""

from __future__ import annotations

import threading
import time

from grpc_stand_ins import MODEL, RecordingServer

from retrieval_client import RetrievalClient, RetryPolicy, ServerCancelledError, ServerUnavailableError


def _search_in_background(client: RetrievalClient) -> tuple:
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = client.search("item-4")
        except Exception as exc:
            outcome["error"] = exc
        outcome["at"] = time.monotonic()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_cancelled_in_a_drain_is_server_cancelled_error_without_retries():
    server = RecordingServer(predict_delay_s=30).start()
    try:
        with RetrievalClient(server.target, MODEL, retry=RetryPolicy(max_attempts=1), timeout_s=20) as client:
            client.metadata()
            thread, outcome = _search_in_background(client)
            assert server.predict_started.wait(10)
            assert server.cancel_in_flight() == 1
            thread.join(10)
    finally:
        server.stop(None)
    error = outcome["error"]
    assert isinstance(error, ServerCancelledError) and isinstance(error, ServerUnavailableError), repr(error)
    assert "draining" in error.hint or "shutting down" in error.hint


def test_a_call_cancelled_in_a_drain_is_retried_on_the_replacement():
    old = RecordingServer(predict_delay_s=30).start()
    port = int(old.target.rsplit(":", 1)[1])
    patient = RetryPolicy(max_attempts=50, initial_backoff_s=0.05, max_backoff_s=0.2)
    with RetrievalClient(old.target, MODEL, retry=patient, timeout_s=20) as client:
        client.metadata()
        thread, outcome = _search_in_background(client)
        assert old.predict_started.wait(10)
        old.cancel_in_flight()  # the drain gives up on the in-flight call ...
        old.stop(None)  # ... and the pod goes away
        replacement = RecordingServer(port=port).start()  # the new pod, at the same address
        try:
            thread.join(20)
        finally:
            replacement.stop(None)
    assert "error" not in outcome, repr(outcome.get("error"))
    assert outcome["result"][0].ids[0] == "item-4"
    assert replacement.count("Predict") == 1
