"""client/README.md's error table matches the code: every public error class has a row, each row's
status and 'retried' columns are what error_for() and the retry policy do, and hints exist."""

from __future__ import annotations

import inspect
import random
import re

import grpc
import pytest

import retrieval_client
import support
from retrieval_client import RetrievalError, RetryPolicy
from retrieval_client._errors import MUTUAL_TLS, PLAINTEXT, TLS, error_for
from retrieval_client._flows import retry_delay

README = support.REPO / "client" / "README.md"
S = grpc.StatusCode
CLOSED = "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:10.0.0.1:8500: Socket closed"
# One real-world status per class (wording from TF Serving 2.11, TensorFlow's batcher and gRPC core).
SAMPLES = {
    "InvalidRequestError": [
        (S.INVALID_ARGUMENT, "assertion failed: [unknown query id(s), not in this model version:] [x]", None),
        (S.INVALID_ARGUMENT, "Task size 1025 is larger than maximum input batch size 1024", None),
    ],
    "ModelNotFoundError": [(S.NOT_FOUND, "Servable not found for request: Latest(scann_model)", None)],
    "ModelNotReadyError": [
        (S.FAILED_PRECONDITION, "model not ready", None),
        (S.UNAVAILABLE, "Servable scann_model is loading", None),
    ],
    "IncompatibleModelError": [(S.FAILED_PRECONDITION, 'Serving signature key "examples" not found.', None)],
    "ServerUnavailableError": [
        (S.UNAVAILABLE, "failed to connect to all addresses; last error: Connection refused", PLAINTEXT),
        # Closed before HTTP/2 on a plaintext channel: a restarting server does that too.
        (S.UNAVAILABLE, CLOSED, PLAINTEXT),
    ],
    "ServerOverloadedError": [
        (S.UNAVAILABLE, "The batch scheduling queue to which this task was submitted is full", None)
    ],
    "ServerCancelledError": [(S.CANCELLED, "Cancelled", None)],
    "TlsHandshakeError": [
        (S.UNAVAILABLE, CLOSED, TLS),
        (S.UNAVAILABLE, CLOSED, MUTUAL_TLS),
        (S.UNAVAILABLE, "Ssl handshake failed: SSL_ERROR_SSL: CERTIFICATE_VERIFY_FAILED", TLS),
        (S.UNAVAILABLE, "Peer name 10.0.0.1 is not in peer certificate", TLS),
    ],
    "DeadlineExceededError": [(S.DEADLINE_EXCEEDED, "Deadline Exceeded", None)],
    "ResourceExhaustedError": [
        (S.RESOURCE_EXHAUSTED, "Received message larger than max (70000000 vs. 67108864)", None)
    ],
    "RetrievalError": [(S.INTERNAL, "boom", None), (S.UNAUTHENTICATED, "bad token", None)],
}


def table() -> dict:
    """{exception: (status cell, retried cell)} from the README's Errors section."""
    section = README.read_text().split("## Errors", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        match = re.match(r"`(\w+)`", cells[0]) if len(cells) == 4 else None
        if match:
            rows[match.group(1)] = (cells[1], cells[2])
    return rows


def public_errors() -> set:
    return {
        name
        for name in retrieval_client.__all__
        if inspect.isclass(getattr(retrieval_client, name)) and issubclass(getattr(retrieval_client, name), Exception)
    }


def test_every_public_error_has_a_row_and_every_row_a_class():
    assert set(table()) == public_errors()


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_a_row_states_the_status_the_code_maps_and_whether_it_is_retried(name):
    status_cell, retried_cell = table()[name]
    policy = RetryPolicy()
    for code, details, transport in SAMPLES[name]:
        error = error_for(code, details, transport)
        assert type(error).__name__ == name, (code, details, type(error).__name__)
        assert name == "RetrievalError" or f"`{code.name}`" in status_cell, (name, code.name, status_cell)
        retried = retry_delay(policy, 1, error, random.Random(0)) is not None
        if retried_cell == "yes":
            assert retried, (name, code)
        elif retried_cell == "no":
            assert not retried, (name, code)
        else:  # "`UNAVAILABLE` only"
            assert retried == (f"`{code.name}` only" == retried_cell), (name, code, retried_cell)
        assert error.hint or name == "RetrievalError" or name == "InvalidRequestError" and "unknown" in details


def test_wait_timeout_is_a_deadline_error_that_is_not_retried():
    # Raised by wait_until_available() itself, never converted from a status.
    assert issubclass(retrieval_client.WaitTimeoutError, retrieval_client.DeadlineExceededError)
    assert table()["WaitTimeoutError"] == ("`DEADLINE_EXCEEDED`", "no")


def test_hints_are_specific_where_one_status_has_several_causes():
    too_large = error_for(S.INVALID_ARGUMENT, "Task size 1025 is larger than maximum input batch size 1024")
    assert too_large.hint == "split the request into batches of at most 1024 rows"
    hints = {transport: error_for(S.UNAVAILABLE, CLOSED, transport).hint for transport in (PLAINTEXT, TLS, MUTUAL_TLS)}
    assert "requires TLS" in hints[PLAINTEXT] and "requires a client certificate" in hints[TLS]
    assert "did not accept the client certificate" in hints[MUTUAL_TLS]
    assert isinstance(error_for(S.UNAVAILABLE, CLOSED), retrieval_client.ServerUnavailableError), (
        "without knowing the channel's TLS setting a closed socket is just unavailable"
    )
    assert type(error_for(S.UNAVAILABLE, CLOSED)) is retrieval_client.ServerUnavailableError
    assert all(issubclass(getattr(retrieval_client, n), RetrievalError) for n in public_errors())
