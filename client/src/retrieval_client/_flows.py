"""Every client operation as a generator of I/O actions ("sans-I/O").

A flow yields `Rpc(...)` or `Sleep(...)` and receives the response (or has a
RetrievalError thrown in). The sync client runs flows with blocking calls,
the async client with awaits; the logic (one deadline per call, retries,
lazy metadata, the one-time refresh when a new model version changed the id
dtype, K or dimension, polling) exists once.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import grpc

from . import _features as ft
from . import _requests as rq
from . import _responses as rs
from ._errors import (
    DeadlineExceededError,
    IncompatibleModelError,
    InvalidRequestError,
    ModelNotFoundError,
    ModelNotReadyError,
    RetrievalError,
    ServerUnavailableError,
    TlsHandshakeError,
    WaitTimeoutError,
)
from ._types import CallSettings, Examples, ModelMetadata, RetryPolicy, SearchResult, VersionStatus


@dataclass(frozen=True)
class Rpc:
    """Perform one attempt of a unary call with this deadline.

    shared: an identical call already in flight on this client may answer
    this one too (single-flight; used for the metadata fetch).
    """

    method: str
    request: Any
    timeout_s: float
    settings: CallSettings = CallSettings()
    shared: bool = False


@dataclass(frozen=True)
class Sleep:
    """Wait before the next attempt."""

    seconds: float


Flow = Generator[Any, Any, Any]

# Codes a retry can fix: no server yet or any more, a draining pod, a full batch queue.
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
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
        self.contract: rs.Contract | None = None
        self.rng = random.Random()

    def deadline(self, timeout_s: float | None) -> Deadline:
        """The deadline of one call: the per-call override, else the client's default."""
        if timeout_s is None:
            return Deadline(self.timeout_s)
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        return Deadline(float(timeout_s))


class Deadline:
    """One call's deadline, shared by its metadata fetch, attempts and backoff."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.at = time.monotonic() + timeout_s

    def remaining(self) -> float:
        """Seconds left (may be negative)."""
        return self.at - time.monotonic()

    def expired(self, before: str) -> DeadlineExceededError:
        """The error for a deadline that passed between attempts."""
        return DeadlineExceededError(
            grpc.StatusCode.DEADLINE_EXCEEDED, f"the call's deadline of {self.timeout_s:g} s passed before {before}"
        )


def backoff_s(policy: RetryPolicy, attempt: int, rng: random.Random) -> float:
    """Exponential step for the attempt-th retry (1-based), jittered to 50-100 %
    so clients that failed together do not retry together."""
    step = min(policy.max_backoff_s, policy.initial_backoff_s * policy.backoff_multiplier ** (attempt - 1))
    return step * (0.5 + 0.5 * rng.random())


def retry_delay(policy: RetryPolicy, attempt: int, error: RetrievalError, rng: random.Random) -> float | None:
    """Seconds to wait before retrying after `attempt` failed, or None to give up."""
    if attempt >= policy.max_attempts or error.code not in _RETRYABLE or isinstance(error, TlsHandshakeError):
        return None
    return backoff_s(policy, attempt, rng)


def call(state: ClientState, deadline: Deadline, rpc: Rpc) -> Flow:
    """One logical call: attempts plus backoff, all within `deadline`.

    Each attempt gets the time that remains; a retry starts only when more
    remains than its backoff, so the call never outlives its deadline.
    """
    attempt = 1
    last_error: RetrievalError | None = None
    while True:
        remaining = deadline.remaining()
        if remaining <= 0:
            # Overslept the backoff (a busy machine): the last real error says more than a timeout.
            raise last_error or deadline.expired(rpc.method.rpartition("/")[2])
        try:
            response = yield Rpc(rpc.method, rpc.request, remaining, rpc.settings, rpc.shared)
        except RetrievalError as exc:
            delay = retry_delay(state.retry, attempt, exc, state.rng)
            if delay is None or delay >= deadline.remaining():
                raise
            last_error = exc
        else:
            return response
        attempt += 1
        yield Sleep(delay)


def metadata(state: ClientState, deadline: Deadline, settings: CallSettings) -> Flow:
    """GetModelMetadata -> ModelMetadata; also refreshes the cached contract."""
    rpc = Rpc(rq.GET_MODEL_METADATA, rq.metadata_request(state.ref), 0.0, settings, shared=True)
    response = yield from call(state, deadline, rpc)
    result: ModelMetadata = rs.parse_metadata(response, state.ref)
    state.contract = rs.Contract.from_metadata(result)
    return result


def _refresh(state: ClientState, deadline: Deadline, settings: CallSettings) -> Flow:
    """Fetch the metadata again and return the new contract."""
    metadata_ = yield from metadata(state, deadline, settings)
    return rs.Contract.from_metadata(metadata_)


def _contract(state: ClientState, deadline: Deadline, settings: CallSettings) -> Flow:
    """(contract, fresh): the cached contract, fetching it on first use."""
    if state.contract is not None:
        return state.contract, False
    contract = yield from _refresh(state, deadline, settings)
    return contract, True


def _check_k(state: ClientState, k: int | None, top_k: int | None, signature: str, contract: rs.Contract) -> None:
    if k is not None and top_k is not None and k > top_k:
        raise rq.k_too_large(k, top_k, f"{state.ref.describe(contract.version)} ({signature})")


def search(state: ClientState, ids: Any, k: int | None, timeout_s: float | None, settings: CallSettings) -> Flow:
    """serving_default: ids -> neighbours; unknown ids raise InvalidRequestError."""
    deadline = state.deadline(timeout_s)
    rq.check_k(k)
    items = rq.as_id_list(ids)
    if not items:
        return []
    contract, fresh = yield from _contract(state, deadline, settings)
    while True:
        id_dtype = contract.require_id_dtype(state.ref)
        what = state.ref.describe(contract.version)
        k_above = k is not None and contract.k is not None and k > contract.k
        stale = k_above or bool(rq.impossible_ids(items, id_dtype, what))
        if stale and not fresh:
            # e.g. "item-5" for a cached int64 model, or k above the cached K: a newer
            # version may take strings or return more neighbours. Ask once.
            fresh = True
            contract = yield from _refresh(state, deadline, settings)
            continue
        impossible = rq.impossible_ids(items, id_dtype, what)
        if impossible:
            raise rq.unknown_ids_error(impossible, f"{what} takes int64 ids")
        _check_k(state, k, contract.k, rq.SEARCH_SIGNATURE, contract)
        request = rq.predict_request(state.ref, rq.SEARCH_SIGNATURE, {"ids": rq.ids_tensor(items, id_dtype, what)})
        try:
            response = yield from call(state, deadline, Rpc(rq.PREDICT, request, 0.0, settings))
        except InvalidRequestError as exc:
            # A new model version may take another id dtype than the cached
            # metadata says: refresh once, resend only if the dtype changed.
            if fresh or not _DTYPE_MISMATCH.search(exc.details):
                raise
            fresh = True
            contract = yield from _refresh(state, deadline, settings)
            if contract.id_dtype == id_dtype:
                raise
            continue
        what = state.ref.describe(rs.response_version(response.model_spec))
        neighbours = rs.parse_neighbours(response, k, len(items), f"{what} ({rq.SEARCH_SIGNATURE})")
        unknown = neighbours.unknown_rows(id_dtype)
        if unknown:
            raise rq.unknown_ids_error([items[i] for i in unknown], what)
        result: list[SearchResult] = neighbours.results(k)
        return result


def search_by_vector(
    state: ClientState, vectors: Any, k: int | None, timeout_s: float | None, settings: CallSettings
) -> Flow:
    """search_by_vector: float32 [batch, dim] query embeddings -> neighbours.

    The dimension is checked before sending: TF Serving's batcher merges rows of
    concurrent requests, and one request of the wrong dimension fails the whole
    merged batch, other callers' requests included.
    """
    deadline = state.deadline(timeout_s)
    rq.check_k(k)
    array = rq.vectors_array(vectors)
    if array.shape[0] == 0:
        return []
    contract, fresh = yield from _contract(state, deadline, settings)
    wrong_dim = contract.dim is not None and contract.dim != array.shape[1]
    k_above = k is not None and contract.vector_k is not None and k > contract.vector_k
    if (wrong_dim or k_above) and not fresh:
        # The cached dimension or K may belong to an older version: ask again.
        contract = yield from _refresh(state, deadline, settings)
    if contract.dim is not None and contract.dim != array.shape[1]:
        raise ValueError(
            f"vectors have dimension {array.shape[1]}, but {state.ref.describe(contract.version)} "
            f"takes {contract.dim}-dimensional query embeddings"
        )
    _check_k(state, k, contract.vector_k, rq.VECTOR_SIGNATURE, contract)
    request = rq.predict_request(state.ref, rq.VECTOR_SIGNATURE, {"vectors": rq.to_tensor_proto(array)})
    response = yield from call(state, deadline, Rpc(rq.PREDICT, request, 0.0, settings))
    what = state.ref.describe(rs.response_version(response.model_spec))
    neighbours = rs.parse_neighbours(response, k, array.shape[0], f"{what} ({rq.VECTOR_SIGNATURE})")
    result: list[SearchResult] = neighbours.results(k)
    return result


def search_by_features(
    state: ClientState, rows: Any, k: int | None, timeout_s: float | None, settings: CallSettings
) -> Flow:
    """search_by_features: one dict of features per query -> neighbours (users the model never saw too).

    Names and dtypes are checked against the signature before sending (one
    refresh first if the cached metadata does not know a name: a newer version
    may have other features).
    """
    deadline = state.deadline(timeout_s)
    rq.check_k(k)
    columns, batch = ft.feature_columns(rows)
    if batch == 0:
        return []
    contract, fresh = yield from _contract(state, deadline, settings)
    known = dict(contract.features or ())
    k_above = k is not None and contract.features_k is not None and k > contract.features_k
    if (contract.features is None or set(columns) - set(known) or k_above) and not fresh:
        contract = yield from _refresh(state, deadline, settings)
        known = dict(contract.features or ())
    what = state.ref.describe(contract.version)
    if contract.features is None:
        raise IncompatibleModelError(
            f"{what} has no signature {ft.FEATURES_SIGNATURE!r}: it was built without user/item features "
            "(build with features, e.g. `python -m model_builder build --dataset movielens-100k`)"
        )
    _check_k(state, k, contract.features_k, ft.FEATURES_SIGNATURE, contract)
    request = rq.predict_request(state.ref, ft.FEATURES_SIGNATURE, ft.feature_tensors(columns, batch, known, what))
    response = yield from call(state, deadline, Rpc(rq.PREDICT, request, 0.0, settings))
    what = state.ref.describe(rs.response_version(response.model_spec))
    neighbours = rs.parse_neighbours(response, k, batch, f"{what} ({ft.FEATURES_SIGNATURE})")
    result: list[SearchResult] = neighbours.results(k)
    return result


def examples(state: ClientState, timeout_s: float | None, settings: CallSettings) -> Flow:
    """The examples signature: known ids and vectors (asks for 0..63, keeps the found rows)."""
    deadline = state.deadline(timeout_s)
    contract, _ = yield from _contract(state, deadline, settings)
    request = rq.examples_request(state.ref, contract.examples_take_index)
    response = yield from call(state, deadline, Rpc(rq.PREDICT, request, 0.0, settings))
    what = state.ref.describe(rs.response_version(response.model_spec))
    result: Examples = rs.parse_examples(response, f"{what} ({rq.EXAMPLES_SIGNATURE})")
    return result


def status(state: ClientState, timeout_s: float | None, settings: CallSettings) -> Flow:
    """GetModelStatus -> one VersionStatus per version."""
    deadline = state.deadline(timeout_s)
    response = yield from call(state, deadline, Rpc(rq.GET_MODEL_STATUS, rq.status_request(state.ref), 0.0, settings))
    result: list[VersionStatus] = rs.parse_status(response)
    return result


def model_metadata(state: ClientState, timeout_s: float | None, settings: CallSettings) -> Flow:
    """metadata(): GetModelMetadata within one call deadline."""
    result = yield from metadata(state, state.deadline(timeout_s), settings)
    return result


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
            response = yield Rpc(rq.GET_MODEL_STATUS, rq.status_request(state.ref), per_call, settings)
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
