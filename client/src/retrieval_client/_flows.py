"""Every client operation as a generator of I/O actions ("sans-I/O").

A flow yields `Rpc(...)` or `Sleep(...)` and receives the response (or has a
RetrievalError thrown in). The sync client runs flows with blocking calls,
the async client with awaits; the logic (one deadline per call, retries,
lazy metadata, the one-time refresh when a new model version changed the id
dtype, K or dimension, splitting batches above the server's limit) exists
once; wait_until_available's polling is in _waiting.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import grpc

from . import _features as ft
from . import _filter_flow
from . import _filters as fl
from . import _requests as rq
from . import _responses as rs
from ._errors import (
    DeadlineExceededError,
    IncompatibleModelError,
    InvalidRequestError,
    RetrievalError,
    TlsHandshakeError,
    batch_limit,
)
from ._telemetry import log
from ._types import CallSettings, Examples, ModelMetadata, RetryPolicy, SearchResult, VersionStatus


@dataclass(frozen=True)
class Rpc:
    """Perform one attempt of a unary call with this deadline.

    shared: an identical call already in flight on this client may answer
    this one too (single-flight; used for the metadata fetch).
    attempt: 1 for the first attempt of a call, 2 for its first retry, ...
    """

    method: str
    request: Any
    timeout_s: float
    settings: CallSettings = CallSettings()
    shared: bool = False
    attempt: int = 1


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
        # The server's largest request in rows (TF Serving's max_batch_size), once it said so.
        self.max_batch_rows: int | None = None
        # (version, FilterSchema) of the last filtered search: refetched when the version changes.
        self.filter_schema: tuple[int | None, fl.FilterSchema] | None = None
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


def call(
    state: ClientState, deadline: Deadline, method: str, request: Any, settings: CallSettings, *, shared: bool = False
) -> Flow:
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
            raise last_error or deadline.expired(method.rpartition("/")[2])
        try:
            response = yield Rpc(method, request, remaining, settings, shared, attempt)
        except RetrievalError as exc:
            delay = retry_delay(state.retry, attempt, exc, state.rng)
            if delay is None or delay >= deadline.remaining():
                raise
            log.debug("%s attempt %d failed (%s); retrying in %.3f s", method, attempt, exc, delay)
            last_error = exc
        else:
            return response
        attempt += 1
        yield Sleep(delay)


def metadata(state: ClientState, deadline: Deadline, settings: CallSettings) -> Flow:
    """GetModelMetadata -> ModelMetadata; also refreshes the cached contract."""
    request = rq.metadata_request(state.ref)
    response = yield from call(state, deadline, rq.GET_MODEL_METADATA, request, settings, shared=True)
    result: ModelMetadata = rs.parse_metadata(response, state.ref)
    state.contract = rs.Contract.from_metadata(result)
    return result


def _refresh(state: ClientState, deadline: Deadline, settings: CallSettings) -> Flow:
    """Fetch the metadata again and return the new contract."""
    metadata_ = yield from metadata(state, deadline, settings)
    return rs.Contract.from_metadata(metadata_)


def _contract(
    state: ClientState,
    deadline: Deadline,
    settings: CallSettings,
    stale: Callable[[rs.Contract], bool] = lambda contract: False,
) -> Flow:
    """(contract, fresh): the cached contract, fetched on first use, or fetched once more when
    `stale(cached)` says it may belong to an older model version (a request it cannot take:
    another id dtype, K or dimension, an unknown feature). `fresh`: no refresh is left to try."""
    cached = state.contract
    if cached is not None and not stale(cached):
        return cached, False
    contract = yield from _refresh(state, deadline, settings)
    return contract, True


def _predict_rows(
    state: ClientState,
    deadline: Deadline,
    settings: CallSettings,
    rows: int,
    request_for: Callable[[int, int], Any],
    k: int | None,
    signature: str,
) -> Flow:
    """Predict over `rows` query rows -> [(first row, Neighbours)] in row order.

    Above the server's batch limit (TF Serving's max_batch_size, learnt from its "Task size
    N is larger than maximum input batch size M" and kept for later calls) the rows go in
    consecutive requests of at most M rows (request_for(start, stop)), all within the call's
    deadline.
    """
    while True:
        size = min(rows, state.max_batch_rows or rows)
        parts = []
        try:
            for start in range(0, rows, size):
                stop = min(start + size, rows)
                response = yield from call(state, deadline, rq.PREDICT, request_for(start, stop), settings)
                what = f"{state.ref.describe(rs.response_version(response.model_spec))} ({signature})"
                parts.append((start, rs.parse_neighbours(response, k, stop - start, what)))
        except InvalidRequestError as exc:
            limit = batch_limit(exc)
            if limit is None or limit < 1 or limit >= size:
                raise
            state.max_batch_rows = limit
            continue
        return parts


def _results(parts: list[tuple[int, rs.Neighbours]], k: int | None) -> list[SearchResult]:
    return [result for _, neighbours in parts for result in neighbours.results(k)]


def _check_k(state: ClientState, k: int | None, top_k: int | None, signature: str, contract: rs.Contract) -> None:
    if k is not None and top_k is not None and k > top_k:
        raise rq.k_too_large(k, top_k, f"{state.ref.describe(contract.version)} ({signature})")


def search(
    state: ClientState,
    ids: Any,
    k: int | None,
    timeout_s: float | None,
    settings: CallSettings,
    filters: fl.Filters | None = None,
) -> Flow:
    """serving_default (search_filtered with filters): ids -> neighbours; unknown ids raise InvalidRequestError."""
    deadline = state.deadline(timeout_s)
    rq.check_k(k)
    items = rq.as_id_list(ids)
    if not items:
        return []
    signature = rq.SEARCH_SIGNATURE if filters is None else fl.FILTERED_SIGNATURE

    def stale(cached: rs.Contract) -> bool:
        # e.g. "item-5" for a cached int64 model, or k above the cached K: a newer
        # version may take strings or return more neighbours.
        k_above = k is not None and cached.k is not None and k > cached.k
        what = state.ref.describe(cached.version)
        if filters is not None and cached.filtered is None:
            return True  # a newer version may have the filtered signature
        return k_above or bool(rq.impossible_ids(items, cached.require_id_dtype(state.ref), what))

    contract, fresh = yield from _contract(state, deadline, settings, stale)
    while True:
        id_dtype = contract.require_id_dtype(state.ref)
        what = state.ref.describe(contract.version)
        impossible = rq.impossible_ids(items, id_dtype, what)
        if impossible:
            raise rq.unknown_ids_error(impossible, f"{what} takes int64 ids")
        _check_k(state, k, contract.k, rq.SEARCH_SIGNATURE, contract)
        schema = (
            None if filters is None else (yield from _filter_flow.filter_schema(state, deadline, settings, contract))
        )
        if schema is not None and filters is not None:
            fl.filter_tensors(schema, filters, 1, what)  # bad filters raise before anything is sent

        def request_for(start: int, stop: int, id_dtype: str = id_dtype, what: str = what, schema=schema) -> Any:
            inputs = {"ids": rq.ids_tensor(items[start:stop], id_dtype, what)}
            if schema is not None and filters is not None:
                inputs.update(fl.filter_tensors(schema, filters, stop - start, what))
            return rq.predict_request(state.ref, signature, inputs)

        try:
            parts = yield from _predict_rows(state, deadline, settings, len(items), request_for, k, signature)
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
        unknown = [start + row for start, neighbours in parts for row in neighbours.unknown_rows(id_dtype)]
        if unknown:
            raise rq.unknown_ids_error([items[i] for i in unknown], state.ref.describe(parts[0][1].version))
        return _results(parts, k)


def search_by_vector(
    state: ClientState,
    vectors: Any,
    k: int | None,
    timeout_s: float | None,
    settings: CallSettings,
    filters: fl.Filters | None = None,
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

    def stale(cached: rs.Contract) -> bool:
        # The cached dimension or K may belong to an older version.
        wrong_dim = cached.dim is not None and cached.dim != array.shape[1]
        if filters is not None and cached.filtered is None:
            return True  # a newer version may have the filtered signatures
        return wrong_dim or (k is not None and cached.vector_k is not None and k > cached.vector_k)

    contract, _ = yield from _contract(state, deadline, settings, stale)
    if contract.dim is not None and contract.dim != array.shape[1]:
        raise ValueError(
            f"vectors have dimension {array.shape[1]}, but {state.ref.describe(contract.version)} "
            f"takes {contract.dim}-dimensional query embeddings"
        )
    _check_k(state, k, contract.vector_k, rq.VECTOR_SIGNATURE, contract)
    what = state.ref.describe(contract.version)
    schema = None if filters is None else (yield from _filter_flow.filter_schema(state, deadline, settings, contract))
    if schema is not None and filters is not None:
        fl.filter_tensors(schema, filters, 1, what)  # bad filters raise before anything is sent
    signature = rq.VECTOR_SIGNATURE if filters is None else fl.VECTOR_FILTERED_SIGNATURE

    def request_for(start: int, stop: int) -> Any:
        inputs = {"vectors": rq.to_tensor_proto(array[start:stop])}
        if schema is not None and filters is not None:
            inputs.update(fl.filter_tensors(schema, filters, stop - start, what))
        return rq.predict_request(state.ref, signature, inputs)

    parts = yield from _predict_rows(state, deadline, settings, array.shape[0], request_for, k, signature)
    return _results(parts, k)


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

    def stale(cached: rs.Contract) -> bool:
        k_above = k is not None and cached.features_k is not None and k > cached.features_k
        return cached.features is None or bool(set(columns) - set(dict(cached.features))) or k_above

    contract, _ = yield from _contract(state, deadline, settings, stale)
    known = dict(contract.features or ())
    what = state.ref.describe(contract.version)
    if contract.features is None:
        raise IncompatibleModelError(
            f"{what} has no signature {ft.FEATURES_SIGNATURE!r}: it was built without user/item features "
            "(build with features, e.g. `python -m model_builder build --dataset movielens-100k`)"
        )
    _check_k(state, k, contract.features_k, ft.FEATURES_SIGNATURE, contract)
    ft.feature_tensors(columns, batch, known, what)  # bad names or values raise before anything is sent

    def request_for(start: int, stop: int) -> Any:
        rows = {name: values[start:stop] for name, values in columns.items()}
        return rq.predict_request(state.ref, ft.FEATURES_SIGNATURE, ft.feature_tensors(rows, stop - start, known, what))

    parts = yield from _predict_rows(state, deadline, settings, batch, request_for, k, ft.FEATURES_SIGNATURE)
    return _results(parts, k)


def examples(state: ClientState, timeout_s: float | None, settings: CallSettings) -> Flow:
    """The examples signature: known ids and vectors (asks for 0..63, keeps the found rows)."""
    deadline = state.deadline(timeout_s)
    contract, _ = yield from _contract(state, deadline, settings)
    request = rq.examples_request(state.ref, contract.examples_take_index)
    response = yield from call(state, deadline, rq.PREDICT, request, settings)
    what = state.ref.describe(rs.response_version(response.model_spec))
    result: Examples = rs.parse_examples(response, f"{what} ({rq.EXAMPLES_SIGNATURE})")
    return result


def status(state: ClientState, timeout_s: float | None, settings: CallSettings) -> Flow:
    """GetModelStatus -> one VersionStatus per version."""
    deadline = state.deadline(timeout_s)
    response = yield from call(state, deadline, rq.GET_MODEL_STATUS, rq.status_request(state.ref), settings)
    result: list[VersionStatus] = rs.parse_status(response)
    return result


def model_metadata(state: ClientState, timeout_s: float | None, settings: CallSettings) -> Flow:
    """metadata(): GetModelMetadata within one call deadline."""
    result = yield from metadata(state, state.deadline(timeout_s), settings)
    return result
