"""Retry policy: what is retried, how often, how long it waits. Against a real gRPC server."""

from __future__ import annotations

import asyncio
import random
import socket
import time

import grpc
import pytest
from fake_tfs import FAST_RETRY

from retrieval_client import (
    AsyncRetrievalClient,
    DeadlineExceededError,
    InvalidRequestError,
    ModelNotReadyError,
    ResourceExhaustedError,
    RetrievalClient,
    RetryPolicy,
    ServerCancelledError,
    ServerOverloadedError,
    ServerUnavailableError,
)
from retrieval_client._errors import error_for
from retrieval_client._flows import backoff_s, retry_delay

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def test_unavailable_is_retried_until_success(server):
    server.fail_next("GetModelStatus", 3, UNAVAILABLE, "pod going away")
    with RetrievalClient(server.target, retry=FAST_RETRY) as client:
        assert client.status()[0].state == "AVAILABLE"
    assert server.calls["GetModelStatus"] == 4


def test_unavailable_gives_up_after_max_attempts(server):
    server.fail_next("GetModelStatus", 10, UNAVAILABLE, "pod going away")
    with RetrievalClient(server.target, retry=FAST_RETRY) as client:
        with pytest.raises(ServerUnavailableError, match="pod going away"):
            client.status()
    assert server.calls["GetModelStatus"] == FAST_RETRY.max_attempts


def test_unavailable_while_loading_is_model_not_ready_and_retried(server):
    server.fail_next("Predict", 10, UNAVAILABLE, "model is loading")
    with RetrievalClient(server.target, retry=FAST_RETRY) as client, pytest.raises(ModelNotReadyError):
        client.examples()
    assert server.calls["Predict"] == FAST_RETRY.max_attempts


@pytest.mark.parametrize(
    "code, error",
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidRequestError),
        (grpc.StatusCode.FAILED_PRECONDITION, ModelNotReadyError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhaustedError),
    ],
)
def test_other_codes_are_never_retried(server, code, error):
    server.fail_next("Predict", 1, code, "no")
    with RetrievalClient(server.target, retry=FAST_RETRY) as client, pytest.raises(error):
        client.examples()
    assert server.calls["Predict"] == 1


def test_deadline_is_the_calls_and_is_not_retried(server):
    with RetrievalClient(server.target, retry=FAST_RETRY, timeout_s=0.2) as client:
        server.stall_next("GetModelStatus", 1, 0.5)
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError, match="DEADLINE_EXCEEDED"):
            client.status()
        # One attempt used the whole deadline; nothing was left for another.
        assert time.monotonic() - started < 0.45
        assert server.calls["GetModelStatus"] == 1


def test_retries_share_the_deadline_and_stop_before_a_backoff_that_does_not_fit(server):
    server.fail_next("GetModelStatus", 50, UNAVAILABLE, "pod going away")
    slow = RetryPolicy(max_attempts=50, initial_backoff_s=0.2, max_backoff_s=0.2)
    with RetrievalClient(server.target, retry=slow, timeout_s=0.5) as client:
        client.examples()  # connected, metadata cached
        started = time.monotonic()
        with pytest.raises(ServerUnavailableError, match="pod going away"):
            client.status()
        elapsed = time.monotonic() - started
    # Backoffs of 0.1-0.2 s in a 0.5 s deadline: 2 to 5 attempts, never past the deadline.
    assert elapsed < 0.5
    assert 2 <= server.calls["GetModelStatus"] <= 5


def test_cancelled_by_the_server_is_its_own_error_and_retried(server):
    server.fail_next("GetModelStatus", 2, grpc.StatusCode.CANCELLED, "server shutting down")
    with RetrievalClient(server.target, retry=FAST_RETRY) as client:
        assert client.status()[0].state == "AVAILABLE"
        server.fail_next("GetModelStatus", 10, grpc.StatusCode.CANCELLED, "server shutting down")
        with pytest.raises(ServerCancelledError, match="server shutting down") as info:
            client.status()
    assert isinstance(info.value, ServerUnavailableError)
    assert server.calls["GetModelStatus"] == 3 + FAST_RETRY.max_attempts


def test_tf_serving_batch_queue_full_is_overload_and_retried(server):
    # TF's shared_batch_scheduler.h words it so when max_enqueued_batches are queued.
    full = "The batch scheduling queue to which this task was submitted is full"
    server.fail_next("Predict", 2, UNAVAILABLE, full)
    with RetrievalClient(server.target, retry=FAST_RETRY) as client:
        assert client.search("item-1")[0].ids[0] == "item-1"
        server.fail_next("Predict", 10, UNAVAILABLE, full)
        with pytest.raises(ServerOverloadedError, match="queue") as info:
            client.search("item-1")
    assert "replicas" in str(info.value)
    assert server.calls["Predict"] == 3 + FAST_RETRY.max_attempts


def test_a_batch_above_tf_servings_maximum_is_split_to_its_limit_and_merged(server):
    # TF's shared_batch_scheduler.h (Queue::Schedule) refuses a task above max_batch_size as a
    # whole; the client takes the limit from that answer and sends the rows in batches of it.
    server.fail_next(
        "Predict", 1, grpc.StatusCode.INVALID_ARGUMENT, "Task size 1025 is larger than maximum input batch size 1024"
    )
    ids = [f"item-{i % 40}" for i in range(1025)]
    with RetrievalClient(server.target, retry=FAST_RETRY) as client:
        client.metadata()
        results = client.search(ids)
        again = client.search(ids)  # the limit is kept: split before sending
    rows = [
        request.inputs["ids"].tensor_shape.dim[0].size for method, request in server.requests if method == "Predict"
    ]
    assert rows == [1025, 1024, 1, 1024, 1]
    assert [result.ids[0] for result in results] == ids, "each query's nearest is itself, in order"
    assert len(again) == 1025


def test_per_call_timeout_overrides_the_default(server):
    server.stall_next("GetModelStatus", 1, 0.3)
    with RetrievalClient(server.target, retry=RetryPolicy(max_attempts=1), timeout_s=0.1) as client:
        assert client.status(timeout_s=2.0)[0].state == "AVAILABLE"
        with pytest.raises(ValueError, match="timeout_s"):
            client.status(timeout_s=0)


def test_async_client_retries_the_same_way(server):
    server.fail_next("Predict", 2, UNAVAILABLE, "pod going away")
    server.fail_next("GetModelStatus", 1, grpc.StatusCode.INVALID_ARGUMENT, "bad")

    async def run():
        async with AsyncRetrievalClient(server.target, retry=FAST_RETRY) as client:
            await client.examples()
            with pytest.raises(InvalidRequestError):
                await client.status()

    asyncio.run(run())
    # examples() reads the metadata first (does the signature take `index`?).
    assert server.calls == {"GetModelMetadata": 1, "Predict": 3, "GetModelStatus": 1}


def test_nothing_listening_is_server_unavailable_after_backoff():
    with socket.socket() as sock:  # a port that was free a moment ago
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=0.1, max_backoff_s=0.1)
    started = time.monotonic()
    with RetrievalClient(f"127.0.0.1:{port}", retry=policy) as client, pytest.raises(ServerUnavailableError) as info:
        client.status()
    # Two backoffs of at least 50 % of 0.1 s happened between the three attempts.
    assert time.monotonic() - started >= 0.1
    assert "check the target address" in str(info.value)


def test_retry_delay_policy():
    policy = RetryPolicy(max_attempts=5, initial_backoff_s=0.1, max_backoff_s=0.3, backoff_multiplier=2)
    rng = random.Random(0)
    unavailable = error_for(UNAVAILABLE, "connection refused")
    delays = [retry_delay(policy, n, unavailable, rng) for n in range(1, 5)]
    for delay, step in zip(delays, (0.1, 0.2, 0.3, 0.3), strict=True):
        assert step * 0.5 <= delay <= step
    assert retry_delay(policy, 5, unavailable, rng) is None
    assert retry_delay(policy, 1, error_for(grpc.StatusCode.CANCELLED, "drain"), rng) is not None
    for code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL):
        assert retry_delay(policy, 1, error_for(code, "x"), rng) is None, code
    tls = error_for(
        UNAVAILABLE,
        "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:1.2.3.4:8500: Socket closed",
        "tls",
    )
    assert retry_delay(policy, 1, tls, rng) is None, "a refused TLS handshake is not retried"
    assert len({backoff_s(policy, 1, rng) for _ in range(20)}) > 1, "jitter must vary"
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
