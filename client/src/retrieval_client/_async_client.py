"""The asyncio client: runs the same flows as RetrievalClient, awaiting I/O.

Nothing here decides anything: requests, parsing, the call deadline, retries
and polling live in _flows/_requests, shared with the blocking client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio

from . import _flows
from ._base import DEFAULT_WAIT_TIMEOUT_S, _ClientBase
from ._errors import DeadlineExceededError, RetrievalError, from_rpc_error
from ._requests import RESPONSE_TYPES
from ._types import Examples, FeatureRows, Headers, Ids, ModelMetadata, SearchResult, Vectors, VersionStatus


class AsyncRetrievalClient(_ClientBase):
    """asyncio twin of RetrievalClient: same arguments, methods and defaults.

    The channel is created on the first call, inside the running event loop,
    and belongs to that loop. Use `async with` or `await close()`.
    """

    _INTERCEPTOR_TYPES = (grpc.aio.ClientInterceptor,)
    _calls: dict[str, Callable[..., Any]]
    _inflight: dict[tuple[Any, ...], asyncio.Future[Any]]

    def _callables(self) -> dict[str, Callable[..., Any]]:
        self._check_open()
        if self._channel is None:
            interceptors = list(self._interceptors) or None
            if self._credentials is None:
                channel = grpc.aio.insecure_channel(self._target, options=self._options, interceptors=interceptors)
            else:
                channel = grpc.aio.secure_channel(
                    self._target, self._credentials, options=self._options, interceptors=interceptors
                )
            self._calls = {
                method: channel.unary_unary(
                    method,
                    request_serializer=lambda message: message.SerializeToString(),
                    response_deserializer=response_type.FromString,
                )
                for method, response_type in RESPONSE_TYPES.items()
            }
            self._channel = channel
        return self._calls

    async def _invoke(self, calls: dict[str, Callable[..., Any]], action: _flows.Rpc) -> Any:
        """One attempt; raises RetrievalError. Shared calls in flight are joined."""
        if not action.shared:
            return await self._attempt(calls, action)
        key = (action.method, action.request.SerializeToString(deterministic=True), action.settings)
        while True:
            future = self._inflight.get(key)
            if future is None:
                break
            done, _ = await asyncio.wait({future}, timeout=action.timeout_s)
            if not done:
                raise DeadlineExceededError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    "Deadline Exceeded (waiting for the metadata another call is fetching)",
                )
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
        try:
            return await calls[action.method](action.request, **self._call_kwargs(action.settings, action.timeout_s))
        except grpc.RpcError as exc:
            error = from_rpc_error(exc, self._transport)  # the one conversion point
        raise error

    async def _run(self, flow: _flows.Flow) -> Any:
        calls = self._callables()
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
        timeout_s: float | None = None,
        headers: Headers | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> list[SearchResult]:
        """See RetrievalClient.search."""
        settings = self._settings(headers, wait_for_ready, compression)
        return await self._run(_flows.search(self._state, ids, k, timeout_s, settings))

    async def search_by_vector(
        self,
        vectors: Vectors,
        k: int | None = None,
        *,
        timeout_s: float | None = None,
        headers: Headers | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> list[SearchResult]:
        """See RetrievalClient.search_by_vector."""
        settings = self._settings(headers, wait_for_ready, compression)
        return await self._run(_flows.search_by_vector(self._state, vectors, k, timeout_s, settings))

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
        return await self._run(_flows.search_by_features(self._state, rows, k, timeout_s, settings))

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
        return await self._run(_flows.examples(self._state, timeout_s, settings))

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
        return await self._run(_flows.status(self._state, timeout_s, settings))

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
        return await self._run(_flows.wait_until_available(self._state, timeout_s, settings))

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
        return await self._run(_flows.model_metadata(self._state, timeout_s, settings))

    async def close(self) -> None:
        """Close the channel; further calls raise RuntimeError. Idempotent."""
        self._closed = True
        if self._channel is not None:
            await self._channel.close()

    async def __aenter__(self) -> AsyncRetrievalClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
