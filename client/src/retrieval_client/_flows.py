"""Every client operation as a generator of I/O actions ("sans-I/O").

A flow yields `Rpc(...)` or `Sleep(...)` and receives the response (or has a
RetrievalError thrown in). The sync client runs flows with blocking calls,
the async client with awaits; the logic (retries, lazy metadata, the one-time
refresh when a new model version changed the id dtype, polling) exists once.
"""
from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass
from typing import Any, Generator, List, Optional

import grpc

from . import _requests as rq
from ._errors import (
    DeadlineExceededError,
    InvalidRequestError,
    ModelNotFoundError,
    ModelNotReadyError,
    RetrievalError,
    ServerUnavailableError,
    WaitTimeoutError,
)
from ._types import Examples, ModelMetadata, RetryPolicy, SearchResult, VersionStatus


@dataclass(frozen=True)
class Rpc:
    """Perform one attempt of a unary call with this deadline."""

    method: str
    request: Any
    timeout_s: float


@dataclass(frozen=True)
class Sleep:
    """Wait before the next attempt."""

    seconds: float


Flow = Generator[Any, Any, Any]

# Codes that say nothing about whether a server ever answered.
_TRANSPORT_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
# How TF Serving (and TensorFlow) word a dtype mismatch:
# "Expects arg[0] to be string but int64 is provided".
_DTYPE_MISMATCH = re.compile(r"dtype|data ?type|\btype\b|expects arg|is provided", re.IGNORECASE)


class ClientState:
    """Per-client configuration plus what the flows learn while running."""

    def __init__(self, ref: rq.ModelRef, timeout_s: float, retry: RetryPolicy) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self.ref = ref
        self.timeout_s = float(timeout_s)
        self.retry = retry
        self.contract: Optional[rq.Contract] = None
        # True once any server answered on this channel: from then on a
        # DEADLINE_EXCEEDED means a slow server, and retrying would only
        # multiply the latency.
        self.connected = False
        self.rng = random.Random()

    def timeout(self, timeout_s: Optional[float]) -> float:
        """The per-call override, else the client's default deadline."""
        if timeout_s is None:
            return self.timeout_s
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        return float(timeout_s)


def backoff_s(policy: RetryPolicy, attempt: int, rng: random.Random) -> float:
    """Exponential step for the attempt-th retry (1-based), jittered to 50-100 %
    so clients that failed together do not retry together."""
    step = min(policy.max_backoff_s, policy.initial_backoff_s * policy.backoff_multiplier ** (attempt - 1))
    return step * (0.5 + 0.5 * rng.random())


def retry_delay(
    policy: RetryPolicy, attempt: int, code: grpc.StatusCode, connected: bool, rng: random.Random
) -> Optional[float]:
    """Seconds to wait before retrying after `attempt` failed, or None to give up."""
    if attempt >= policy.max_attempts:
        return None
    if code == grpc.StatusCode.UNAVAILABLE or (code == grpc.StatusCode.DEADLINE_EXCEEDED and not connected):
        return backoff_s(policy, attempt, rng)
    return None


def call(state: ClientState, rpc: Rpc) -> Flow:
    """One logical call: attempts plus backoff per the retry policy."""
    attempt = 1
    while True:
        try:
            response = yield rpc
        except RetrievalError as exc:
            if exc.code not in _TRANSPORT_CODES:
                state.connected = True
            delay = retry_delay(state.retry, attempt, exc.code, state.connected, state.rng)
            if delay is None:
                raise
        else:
            state.connected = True
            return response
        attempt += 1
        yield Sleep(delay)


def metadata(state: ClientState, timeout_s: Optional[float]) -> Flow:
    """GetModelMetadata -> ModelMetadata; also refreshes the cached contract."""
    response = yield from call(state, Rpc(rq.GET_MODEL_METADATA, rq.metadata_request(state.ref), state.timeout(timeout_s)))
    result: ModelMetadata = rq.parse_metadata(response, state.ref)
    state.contract = rq.Contract.from_metadata(result)
    return result


def _refresh(state: ClientState, timeout: float) -> Flow:
    """Fetch the metadata again and return the new contract."""
    metadata_ = yield from metadata(state, timeout)
    return rq.Contract.from_metadata(metadata_)


def _contract(state: ClientState, timeout: float) -> Flow:
    """(contract, fresh): the cached contract, fetching it on first use."""
    if state.contract is not None:
        return state.contract, False
    contract = yield from _refresh(state, timeout)
    return contract, True


def search(state: ClientState, ids: Any, k: Optional[int], timeout_s: Optional[float]) -> Flow:
    """serving_default: ids -> neighbours."""
    timeout = state.timeout(timeout_s)
    rq.check_k(k)
    items = rq.as_id_list(ids)
    if not items:
        return []
    contract, fresh = yield from _contract(state, timeout)
    while True:
        id_dtype = contract.require_id_dtype(state.ref)
        what = state.ref.describe(contract.version)
        try:
            ids_tensor = rq.ids_tensor(items, id_dtype, what)
        except (TypeError, ValueError):
            if fresh:
                raise
            # e.g. "item-5" for a cached int64 model: a newer version may take strings.
            fresh = True
            contract = yield from _refresh(state, timeout)
            continue
        request = rq.predict_request(state.ref, rq.SEARCH_SIGNATURE, {"ids": ids_tensor})
        try:
            response = yield from call(state, Rpc(rq.PREDICT, request, timeout))
        except InvalidRequestError as exc:
            # A new model version may take another id dtype than the cached
            # metadata says: refresh once, resend only if the dtype changed.
            if fresh or not _DTYPE_MISMATCH.search(exc.details):
                raise
            fresh = True
            contract = yield from _refresh(state, timeout)
            if contract.id_dtype == id_dtype:
                raise
            continue
        what = state.ref.describe(rq.response_version(response.model_spec))
        result: List[SearchResult] = rq.parse_neighbours(response, k, len(items), f"{what} ({rq.SEARCH_SIGNATURE})")
        return result


def search_by_vector(state: ClientState, vectors: Any, k: Optional[int], timeout_s: Optional[float]) -> Flow:
    """search_by_vector: float32 [batch, dim] query embeddings -> neighbours."""
    timeout = state.timeout(timeout_s)
    rq.check_k(k)
    array = rq.vectors_array(vectors)
    if array.shape[0] == 0:
        return []
    contract, fresh = yield from _contract(state, timeout)
    if contract.dim is not None and contract.dim != array.shape[1] and not fresh:
        # The cached dimension may belong to an older version: ask again.
        contract = yield from _refresh(state, timeout)
    if contract.dim is not None and contract.dim != array.shape[1]:
        raise ValueError(
            f"vectors have dimension {array.shape[1]}, but {state.ref.describe(contract.version)} "
            f"takes {contract.dim}-dimensional query embeddings"
        )
    request = rq.predict_request(state.ref, rq.VECTOR_SIGNATURE, {"vectors": rq.to_tensor_proto(array)})
    response = yield from call(state, Rpc(rq.PREDICT, request, timeout))
    what = state.ref.describe(rq.response_version(response.model_spec))
    result: List[SearchResult] = rq.parse_neighbours(response, k, array.shape[0], f"{what} ({rq.VECTOR_SIGNATURE})")
    return result


def examples(state: ClientState, timeout_s: Optional[float]) -> Flow:
    """The examples signature: no inputs, known ids and vectors out."""
    request = rq.predict_request(state.ref, rq.EXAMPLES_SIGNATURE, {})
    response = yield from call(state, Rpc(rq.PREDICT, request, state.timeout(timeout_s)))
    what = state.ref.describe(rq.response_version(response.model_spec))
    result: Examples = rq.parse_examples(response, f"{what} ({rq.EXAMPLES_SIGNATURE})")
    return result


def status(state: ClientState, timeout_s: Optional[float]) -> Flow:
    """GetModelStatus -> one VersionStatus per version."""
    response = yield from call(state, Rpc(rq.GET_MODEL_STATUS, rq.status_request(state.ref), state.timeout(timeout_s)))
    result: List[VersionStatus] = rq.parse_status(response)
    return result


def _describe_statuses(statuses: List[VersionStatus]) -> str:
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


def wait_until_available(state: ClientState, timeout_s: float) -> Flow:
    """Poll GetModelStatus with backoff until a version is AVAILABLE.

    Returns the newest AVAILABLE version; raises WaitTimeoutError naming the
    last state or error seen. Errors that polling cannot fix (e.g.
    INVALID_ARGUMENT, UNAUTHENTICATED) are raised at once.
    """
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
    deadline = time.monotonic() + timeout_s
    last_seen = "no answer from the server"
    attempt = 0
    while True:
        per_call = max(0.001, min(state.timeout_s, deadline - time.monotonic()))
        try:
            response = yield Rpc(rq.GET_MODEL_STATUS, rq.status_request(state.ref), per_call)
        except _STARTING_UP as exc:
            if exc.code not in _TRANSPORT_CODES:
                state.connected = True
            last_seen = f"last error {exc.code.name}: {exc.details}"
        else:
            state.connected = True
            statuses = rq.parse_status(response)
            available = [s for s in statuses if s.state == "AVAILABLE"]
            if available:
                return max(available, key=lambda s: s.version)
            last_seen = _describe_statuses(statuses)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeoutError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"{state.ref.describe()} not AVAILABLE after {timeout_s:g} s; {last_seen}",
            )
        attempt += 1
        yield Sleep(min(remaining, backoff_s(state.retry, attempt, state.rng)))
