"""wait_until_available() as a flow (see _flows): poll GetModelStatus with backoff until a
version is AVAILABLE, within its own timeout rather than the client's per-call deadline."""

from __future__ import annotations

import grpc

from . import _requests as rq
from . import _responses as rs
from ._errors import (
    DeadlineExceededError,
    ModelNotFoundError,
    ModelNotReadyError,
    ServerUnavailableError,
    TlsHandshakeError,
    WaitTimeoutError,
)
from ._flows import ClientState, Deadline, Flow, Rpc, Sleep, backoff_s
from ._types import CallSettings, VersionStatus


def _describe_statuses(statuses: list[VersionStatus]) -> str:
    if not statuses:
        return "the server lists no versions"
    parts = []
    for s in statuses:
        text = f"version {s.version} {s.state}"
        if s.error_code != "OK":
            text += f" ({s.error_code}: {s.error_message})"
        parts.append(text)
    return "last status: " + ", ".join(parts)


# Errors that mean "not there yet" while a server or model starts up.
_STARTING_UP = (ServerUnavailableError, ModelNotFoundError, ModelNotReadyError, DeadlineExceededError)


def wait_until_available(state: ClientState, timeout_s: float, settings: CallSettings) -> Flow:
    """Poll GetModelStatus with backoff until a version is AVAILABLE.

    Returns the newest AVAILABLE version; raises WaitTimeoutError naming the
    last state or error seen. Errors that polling cannot fix (e.g.
    INVALID_ARGUMENT, UNAUTHENTICATED, a failed TLS handshake) are raised at once.
    """
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
    deadline = Deadline(timeout_s)
    last_seen = "no answer from the server"
    attempt = 0
    while True:
        per_call = max(0.001, min(state.timeout_s, deadline.remaining()))
        try:
            response = yield Rpc(
                rq.GET_MODEL_STATUS, rq.status_request(state.ref), per_call, settings, attempt=attempt + 1
            )
        except TlsHandshakeError:
            raise
        except _STARTING_UP as exc:
            last_seen = f"last error {exc.code.name}: {exc.details}"
        else:
            statuses = rs.parse_status(response)
            available = [s for s in statuses if s.state == "AVAILABLE"]
            if available:
                return max(available, key=lambda s: s.version)
            last_seen = _describe_statuses(statuses)
        remaining = deadline.remaining()
        if remaining <= 0:
            raise WaitTimeoutError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"{state.ref.describe()} not AVAILABLE after {timeout_s:g} s; {last_seen}",
            )
        attempt += 1
        yield Sleep(min(remaining, backoff_s(state.retry, attempt, state.rng)))
