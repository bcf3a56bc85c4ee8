"""The blocking client: runs the shared flows with blocking gRPC calls."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc

from . import _channel, _flows, _hedging, _interceptors, _waiting
from ._base import DEFAULT_WAIT_TIMEOUT_S, _ClientBase
from ._errors import RetrievalError, ServerUnavailableError, from_rpc_error
from ._filters import Filters
from ._types import Examples, FeatureRows, Headers, Ids, ModelMetadata, SearchResult, Vectors, VersionStatus


class RetrievalClient(_ClientBase):
    """Blocking client for a ScaNN retrieval model served by TF Serving.

    Thread-safe; create one per process and share it. Use as a context
    manager or call close(). See _ClientBase.__init__ for the arguments.
    """

    _adapt_interceptor = staticmethod(_interceptors.for_sync_channel)
    _calls: dict[str, Callable[..., Any]]
    _reconnect: _channel.ReconnectWatch
    _inflight: dict[tuple[Any, ...], concurrent.futures.Future[Any]]

    def _callables(self) -> dict[str, Callable[..., Any]]:
        self._check_open()
        if self._channel is None:
            with self._lock:
                if self._channel is None:
                    channel = self._open_channel(grpc)
                    intercepted = (
                        grpc.intercept_channel(channel, *self._interceptors) if self._interceptors else channel
                    )
                    self._calls = self._bind(intercepted)
                    self._reconnect = _channel.ReconnectWatch(channel)
                    self._channel = channel
        return self._calls

    def _invoke(self, calls: dict[str, Callable[..., Any]], action: _flows.Rpc) -> Any:
        """One attempt; raises RetrievalError. Shared calls in flight are joined."""
        if not action.shared:
            return self._attempt(calls, action)
        key = self._flight_key(action)
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
            raise self._flight_timeout() from None

    def _attempt(self, calls: dict[str, Callable[..., Any]], action: _flows.Rpc) -> Any:
        with self._telemetry.attempt(action.method, action.attempt):
            method = calls[action.method]
            try:
                if self._latencies is None:
                    return method(action.request, **self._call_kwargs(action.settings, action.timeout_s))
                return _hedging.call_sync(
                    self._latencies,
                    lambda timeout_s: method.future(action.request, **self._call_kwargs(action.settings, timeout_s)),
                    action.timeout_s,
                )
            except grpc.RpcError as exc:
                error = from_rpc_error(exc, self._transport)  # the one conversion point
            if type(error) is ServerUnavailableError:
                # A transport failure (a busy server or a loading model answer with more specific
                # errors): the channel may be reconnecting, keep it polled.
                self._reconnect.start()
            raise error

    def _run(self, operation: str, flow: _flows.Flow) -> Any:
        """Run one logical call's flow: its span and metrics around all its attempts."""
        calls = self._callables()
        with self._telemetry.call(operation):
            return self._drive(calls, flow)

    def _drive(self, calls: dict[str, Callable[..., Any]], flow: _flows.Flow) -> Any:
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
        exclude: Sequence[Any] | None = None,
        allow: Mapping[str, Sequence[str]] | None = None,
        deny: Mapping[str, Sequence[str]] | None = None,
        where: Mapping[str, tuple[float | None, float | None]] | None = None,
        max_per: int | None = None,
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
        exclude, allow, deny, where, max_per: filters applied to every id of the
            call (signature search_filtered; models built with --item-attributes):
            ids never returned; {namespace: [tokens]} of which an item needs one
            (per namespace); {namespace: [tokens]} an item must have none of;
            {attribute: (low, high)} inclusive, None for an open end; at most
            max_per results per value of the model's crowding attribute. Unknown
            namespaces, tokens and attributes raise InvalidRequestError naming
            them before anything is sent. No filter: serving_default answers.
        Returns one SearchResult per id, in order. Ids the model does not know
        raise InvalidRequestError naming them (only this call's ids), unless the
        model was built with a fallback: then those results have found=False.
        """
        settings = self._settings(headers, wait_for_ready, compression)
        filters = Filters.of(exclude, allow, deny, where, max_per)
        return self._run("search", _flows.search(self._state, ids, k, timeout_s, settings, filters))

    def search_by_vector(
        self,
        vectors: Vectors,
        k: int | None = None,
        *,
        exclude: Sequence[Any] | None = None,
        allow: Mapping[str, Sequence[str]] | None = None,
        deny: Mapping[str, Sequence[str]] | None = None,
        where: Mapping[str, tuple[float | None, float | None]] | None = None,
        max_per: int | None = None,
        timeout_s: float | None = None,
        headers: Headers | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> list[SearchResult]:
        """Nearest candidates for query embeddings (signature search_by_vector).

        vectors: float [dim] (one query) or [batch, dim]; sent as float32.
            NaN/Inf or a dimension other than the model's raise ValueError
            before anything is sent.
        k, the filters and the keyword arguments: as in search() (with filters:
            signature search_by_vector_filtered).
        """
        settings = self._settings(headers, wait_for_ready, compression)
        filters = Filters.of(exclude, allow, deny, where, max_per)
        return self._run(
            "search_by_vector", _flows.search_by_vector(self._state, vectors, k, timeout_s, settings, filters)
        )

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
        return self._run("search_by_features", _flows.search_by_features(self._state, rows, k, timeout_s, settings))

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
        return self._run("examples", _flows.examples(self._state, timeout_s, settings))

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
        return self._run("status", _flows.status(self._state, timeout_s, settings))

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
        return self._run("wait_until_available", _waiting.wait_until_available(self._state, timeout_s, settings))

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
        return self._run("metadata", _flows.model_metadata(self._state, timeout_s, settings))

    def close(self) -> None:
        """Close the channel; further calls raise RuntimeError. Idempotent."""
        self._closed = True
        if self._channel is not None:
            self._reconnect.stop()
            self._channel.close()

    def __enter__(self) -> RetrievalClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
