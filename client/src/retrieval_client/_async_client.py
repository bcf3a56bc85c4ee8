"""The asyncio client: runs the same flows as RetrievalClient, awaiting I/O.

Nothing here decides anything: requests, parsing, the call deadline, retries
and polling live in _flows/_requests, shared with the blocking client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc
import grpc.aio

from . import _flows, _hedging, _interceptors, _waiting
from ._base import DEFAULT_WAIT_TIMEOUT_S, _ClientBase
from ._errors import RetrievalError, from_rpc_error
from ._filters import Filters
from ._types import Examples, FeatureRows, Headers, Ids, ModelMetadata, SearchResult, Vectors, VersionStatus


class AsyncRetrievalClient(_ClientBase):
    """asyncio twin of RetrievalClient: same arguments, methods and defaults.

    A grpc.aio channel belongs to the event loop it was made in, so the client
    makes one per loop, on that loop's first call: one client serves successive
    `asyncio.run()`s and loops in other threads. Use `async with` or `await close()`.
    """

    _adapt_interceptor = staticmethod(_interceptors.for_aio_channel)
    _inflight: dict[tuple[Any, ...], asyncio.Future[Any]]

    def _callables(self) -> dict[str, Callable[..., Any]]:
        self._check_open()
        loop = asyncio.get_running_loop()
        with self._lock:
            bound = self._loop_channels.get(loop)
            if bound is None:
                # A closed loop's channel cannot be closed any more (its loop is gone): dropped.
                for ended in [other for other in self._loop_channels if other.is_closed()]:
                    del self._loop_channels[ended]
                channel = self._open_channel(grpc.aio, interceptors=list(self._interceptors) or None)
                bound = self._loop_channels[loop] = (channel, self._bind(channel))
        return bound[1]

    async def _invoke(self, calls: dict[str, Callable[..., Any]], action: _flows.Rpc) -> Any:
        """One attempt; raises RetrievalError. Shared calls in flight are joined."""
        if not action.shared:
            return await self._attempt(calls, action)
        key = (asyncio.get_running_loop(), *self._flight_key(action))  # futures belong to their loop
        while True:
            future = self._inflight.get(key)
            if future is None:
                break
            done, _ = await asyncio.wait({future}, timeout=action.timeout_s)
            if not done:
                raise self._flight_timeout()
            if not future.cancelled():  # else the fetching task was cancelled: fetch ourselves
                return future.result()
        future = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            reply = await self._attempt(calls, action)
        except RetrievalError as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        except BaseException:
            future.cancel()
            raise
        else:
            future.set_result(reply)
            return reply
        finally:
            del self._inflight[key]

    async def _attempt(self, calls: dict[str, Callable[..., Any]], action: _flows.Rpc) -> Any:
        with self._telemetry.attempt(action.method, action.attempt):
            method = calls[action.method]
            try:
                if self._latencies is None:
                    return await method(action.request, **self._call_kwargs(action.settings, action.timeout_s))
                return await _hedging.call_async(
                    self._latencies,
                    lambda timeout_s: method(action.request, **self._call_kwargs(action.settings, timeout_s)),
                    action.timeout_s,
                )
            except grpc.RpcError as exc:
                error = from_rpc_error(exc, self._transport)  # the one conversion point
            raise error

    async def _run(self, operation: str, flow: _flows.Flow) -> Any:
        """Run one logical call's flow: its span and metrics around all its attempts."""
        calls = self._callables()
        with self._telemetry.call(operation):
            return await self._drive(calls, flow)

    async def _drive(self, calls: dict[str, Callable[..., Any]], flow: _flows.Flow) -> Any:
        reply: Any = None
        error: RetrievalError | None = None
        try:
            while True:
                action = flow.throw(error) if error is not None else flow.send(reply)
                reply, error = None, None
                if isinstance(action, _flows.Sleep):
                    await asyncio.sleep(action.seconds)
                    continue
                try:
                    reply = await self._invoke(calls, action)
                except RetrievalError as exc:
                    error = exc  # thrown into the flow outside this except block (see RetrievalClient._run)
        except StopIteration as stop:
            return stop.value
        finally:
            flow.close()

    async def search(
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
        """See RetrievalClient.search."""
        settings = self._settings(headers, wait_for_ready, compression)
        filters = Filters.of(exclude, allow, deny, where, max_per)
        return await self._run("search", _flows.search(self._state, ids, k, timeout_s, settings, filters))

    async def search_by_vector(
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
        """See RetrievalClient.search_by_vector."""
        settings = self._settings(headers, wait_for_ready, compression)
        filters = Filters.of(exclude, allow, deny, where, max_per)
        return await self._run(
            "search_by_vector", _flows.search_by_vector(self._state, vectors, k, timeout_s, settings, filters)
        )

    async def search_by_features(
        self,
        rows: FeatureRows,
        k: int | None = None,
        *,
        timeout_s: float | None = None,
        headers: Headers | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> list[SearchResult]:
        """See RetrievalClient.search_by_features."""
        settings = self._settings(headers, wait_for_ready, compression)
        return await self._run(
            "search_by_features", _flows.search_by_features(self._state, rows, k, timeout_s, settings)
        )

    async def examples(
        self,
        *,
        timeout_s: float | None = None,
        headers: Headers | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Examples:
        """See RetrievalClient.examples."""
        settings = self._settings(headers, wait_for_ready, compression)
        return await self._run("examples", _flows.examples(self._state, timeout_s, settings))

    async def status(
        self,
        *,
        timeout_s: float | None = None,
        headers: Headers | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> list[VersionStatus]:
        """See RetrievalClient.status."""
        settings = self._settings(headers, wait_for_ready, compression)
        return await self._run("status", _flows.status(self._state, timeout_s, settings))

    async def wait_until_available(
        self,
        timeout_s: float = DEFAULT_WAIT_TIMEOUT_S,
        *,
        headers: Headers | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> VersionStatus:
        """See RetrievalClient.wait_until_available."""
        settings = self._settings(headers, wait_for_ready, compression)
        return await self._run("wait_until_available", _waiting.wait_until_available(self._state, timeout_s, settings))

    async def metadata(
        self,
        *,
        timeout_s: float | None = None,
        headers: Headers | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> ModelMetadata:
        """See RetrievalClient.metadata."""
        settings = self._settings(headers, wait_for_ready, compression)
        return await self._run("metadata", _flows.model_metadata(self._state, timeout_s, settings))

    async def close(self) -> None:
        """Close the channel; further calls raise RuntimeError. Idempotent.

        Closes the running loop's channel; channels made in other loops cannot be
        closed from this one and are dropped (gRPC frees them with their loop)."""
        self._closed = True
        running = asyncio.get_running_loop()
        with self._lock:
            channels, self._loop_channels = self._loop_channels, {}
        for loop, (channel, _) in channels.items():
            if loop is running:
                await channel.close()

    async def __aenter__(self) -> AsyncRetrievalClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
