"""The blocking client: runs the shared flows with blocking gRPC calls."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable
from typing import Any

import grpc

from . import _flows
from ._base import DEFAULT_WAIT_TIMEOUT_S, _ClientBase
from ._errors import DeadlineExceededError, RetrievalError, from_rpc_error
from ._requests import RESPONSE_TYPES
from ._types import Examples, FeatureRows, Headers, Ids, ModelMetadata, SearchResult, Vectors, VersionStatus


class RetrievalClient(_ClientBase):
    """Blocking client for a ScaNN retrieval model served by TF Serving.

    Thread-safe; create one per process and share it. Use as a context
    manager or call close(). See _ClientBase.__init__ for the arguments.
    """

    _INTERCEPTOR_TYPES = (
        grpc.UnaryUnaryClientInterceptor,
        grpc.UnaryStreamClientInterceptor,
        grpc.StreamUnaryClientInterceptor,
        grpc.StreamStreamClientInterceptor,
    )
    _calls: dict[str, Callable[..., Any]]
    _inflight: dict[tuple[Any, ...], concurrent.futures.Future[Any]]

    def _callables(self) -> dict[str, Callable[..., Any]]:
        self._check_open()
        if self._channel is None:
            with self._lock:
                if self._channel is None:
                    if self._credentials is None:
                        channel = grpc.insecure_channel(self._target, options=self._options)
                    else:
                        channel = grpc.secure_channel(self._target, self._credentials, options=self._options)
                    intercepted = channel
                    if self._interceptors:
                        intercepted = grpc.intercept_channel(channel, *self._interceptors)
                    self._calls = {
                        method: intercepted.unary_unary(
                            method,
                            request_serializer=lambda message: message.SerializeToString(),
                            response_deserializer=response_type.FromString,
                        )
                        for method, response_type in RESPONSE_TYPES.items()
                    }
                    self._channel = channel
        return self._calls

    def _invoke(self, calls: dict[str, Callable[..., Any]], action: _flows.Rpc) -> Any:
        """One attempt; raises RetrievalError. Shared calls in flight are joined."""
        if not action.shared:
            return self._attempt(calls, action)
        key = (action.method, action.request.SerializeToString(deterministic=True), action.settings)
        with self._lock:
            future = self._inflight.get(key)
            leader = future is None
            if leader:
                future = self._inflight[key] = concurrent.futures.Future()
        if leader:
            try:
                future.set_result(self._attempt(calls, action))
            except BaseException as exc:
                future.set_exception(exc)
            finally:
                with self._lock:
                    del self._inflight[key]
        try:
            return future.result(timeout=action.timeout_s)
        except concurrent.futures.TimeoutError:
            raise DeadlineExceededError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "Deadline Exceeded (waiting for the metadata another call is fetching)",
            ) from None

    def _attempt(self, calls: dict[str, Callable[..., Any]], action: _flows.Rpc) -> Any:
        try:
            return calls[action.method](action.request, **self._call_kwargs(action.settings, action.timeout_s))
        except grpc.RpcError as exc:
            error = from_rpc_error(exc, self._transport)  # the one conversion point
        raise error

    def _run(self, flow: _flows.Flow) -> Any:
        calls = self._callables()
        reply: Any = None
        error: RetrievalError | None = None
        try:
            while True:
                action = flow.throw(error) if error is not None else flow.send(reply)
                reply, error = None, None
                if isinstance(action, _flows.Sleep):
                    time.sleep(action.seconds)
                    continue
                try:
                    reply = self._invoke(calls, action)
                except RetrievalError as exc:
                    # Thrown into the flow outside this except block so no gRPC error is chained.
                    error = exc
        except StopIteration as stop:
            return stop.value
        finally:
            flow.close()

    def search(
        self,
        ids: Ids,
        k: int | None = None,
        *,
        timeout_s: float | None = None,
        headers: Headers | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> list[SearchResult]:
        """Nearest candidates for each query id (signature serving_default).

        ids: one id or a 1-D sequence/array of str, bytes or int ids; they
            are converted to the model's id dtype (ints to decimal strings,
            decimal strings to int64; TypeError for other types).
        k: None for all K neighbours the model returns, else 1..K
            (ValueError naming K if larger, before anything is sent).
        timeout_s, headers, wait_for_ready, compression: this call's
            deadline and gRPC settings (None: the client's).
        Returns one SearchResult per id, in order. Ids the model does not know
        raise InvalidRequestError naming them (only this call's ids), unless the
        model was built with a fallback: then those results have found=False.
        """
        settings = self._settings(headers, wait_for_ready, compression)
        return self._run(_flows.search(self._state, ids, k, timeout_s, settings))

    def search_by_vector(
        self,
        vectors: Vectors,
        k: int | None = None,
        *,
        timeout_s: float | None = None,
        headers: Headers | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> list[SearchResult]:
        """Nearest candidates for query embeddings (signature search_by_vector).

        vectors: float [dim] (one query) or [batch, dim]; sent as float32.
            NaN/Inf or a dimension other than the model's raise ValueError
            before anything is sent.
        k and the keyword arguments: as in search().
        """
        settings = self._settings(headers, wait_for_ready, compression)
        return self._run(_flows.search_by_vector(self._state, vectors, k, timeout_s, settings))

    def search_by_features(
        self,
        rows: FeatureRows,
        k: int | None = None,
        *,
        timeout_s: float | None = None,
        headers: Headers | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> list[SearchResult]:
        """Nearest candidates for queries described by their features (signature search_by_features).

        rows: a list of dicts, one per query ({"age": 24, "occupation": "technician"}),
            or a dict of columns ({"age": [24, 61], ...}). Names and dtypes come from
            the model's metadata: numbers for float32 features, text for string ones
            (a list of values for a multi-valued feature, sent joined by "|"), ints
            for an int64 id. A feature left out, or None, is sent as missing; leave
            out the id for a user the model has never seen. Unknown names, values of
            the wrong type and models without the signature raise before sending.
        k and the keyword arguments: as in search().
        """
        settings = self._settings(headers, wait_for_ready, compression)
        return self._run(_flows.search_by_features(self._state, rows, k, timeout_s, settings))

    def examples(
        self,
        *,
        timeout_s: float | None = None,
        headers: Headers | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Examples:
        """Known query ids, candidate ids and candidate vectors (signature examples)."""
        settings = self._settings(headers, wait_for_ready, compression)
        return self._run(_flows.examples(self._state, timeout_s, settings))

    def status(
        self,
        *,
        timeout_s: float | None = None,
        headers: Headers | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> list[VersionStatus]:
        """Every version the server knows for the model, oldest first."""
        settings = self._settings(headers, wait_for_ready, compression)
        return self._run(_flows.status(self._state, timeout_s, settings))

    def wait_until_available(
        self,
        timeout_s: float = DEFAULT_WAIT_TIMEOUT_S,
        *,
        headers: Headers | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> VersionStatus:
        """Poll status() with backoff until a version is AVAILABLE; return it.

        Raises WaitTimeoutError (a DeadlineExceededError) after timeout_s,
        saying which state or error it saw last.
        """
        settings = self._settings(headers, wait_for_ready, compression)
        return self._run(_flows.wait_until_available(self._state, timeout_s, settings))

    def metadata(
        self,
        *,
        timeout_s: float | None = None,
        headers: Headers | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> ModelMetadata:
        """The answering version's signatures with their inputs and outputs."""
        settings = self._settings(headers, wait_for_ready, compression)
        return self._run(_flows.model_metadata(self._state, timeout_s, settings))

    def close(self) -> None:
        """Close the channel; further calls raise RuntimeError. Idempotent."""
        self._closed = True
        if self._channel is not None:
            self._channel.close()

    def __enter__(self) -> RetrievalClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
