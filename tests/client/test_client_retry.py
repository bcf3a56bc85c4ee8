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
    ServerUnavailableError,
)
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


def test_deadline_is_retried_only_before_any_server_answered(server):
    with RetrievalClient(server.target, retry=FAST_RETRY, timeout_s=0.2) as client:
        # Fresh client: no answer seen yet, so a deadline may be a connection
        # that never came up: retried.
        server.stall_next("GetModelStatus", 2, 0.5)
        assert client.status()[0].state == "AVAILABLE"
        assert server.calls["GetModelStatus"] == 3
        # Now the server is known to answer: a deadline means a slow call.
        server.stall_next("GetModelStatus", 1, 0.5)
        with pytest.raises(DeadlineExceededError, match="DEADLINE_EXCEEDED"):
            client.status()
        assert server.calls["GetModelStatus"] == 4


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
    assert server.calls == {"Predict": 3, "GetModelStatus": 1}


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
    delays = [retry_delay(policy, n, UNAVAILABLE, True, rng) for n in range(1, 5)]
    for delay, step in zip(delays, (0.1, 0.2, 0.3, 0.3), strict=True):
        assert step * 0.5 <= delay <= step
    assert retry_delay(policy, 5, UNAVAILABLE, True, rng) is None
    assert retry_delay(policy, 1, grpc.StatusCode.DEADLINE_EXCEEDED, False, rng) is not None
    assert retry_delay(policy, 1, grpc.StatusCode.DEADLINE_EXCEEDED, True, rng) is None
    assert retry_delay(policy, 1, grpc.StatusCode.INVALID_ARGUMENT, False, rng) is None
    assert len({backoff_s(policy, 1, rng) for _ in range(20)}) > 1, "jitter must vary"
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
