"""The asyncio client: runs the same flows as RetrievalClient, awaiting I/O.

Nothing here decides anything: requests, parsing, retries and polling live
in _flows/_requests, shared with the blocking client.
"""
from __future__ import annotations

import asyncio
from typing import Any, Callable, Dict, List, Optional

import grpc
import grpc.aio

from . import _flows
from ._base import DEFAULT_WAIT_TIMEOUT_S, _ClientBase
from ._errors import RetrievalError, from_rpc_error
from ._requests import RESPONSE_TYPES
from ._types import Examples, Ids, ModelMetadata, SearchResult, Vectors, VersionStatus


class AsyncRetrievalClient(_ClientBase):
    """asyncio twin of RetrievalClient: same arguments, methods and defaults.

    The channel is created on the first call, inside the running event loop,
    and belongs to that loop. Use `async with` or `await close()`.
    """

    _calls: Dict[str, Callable[..., Any]]

    def _callables(self) -> Dict[str, Callable[..., Any]]:
        self._check_open()
        if self._channel is None:
            if self._credentials is None:
                channel = grpc.aio.insecure_channel(self._target, options=self._options)
            else:
                channel = grpc.aio.secure_channel(self._target, self._credentials, options=self._options)
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

    async def _run(self, flow: _flows.Flow) -> Any:
        calls = self._callables()
        reply: Any = None
        error: Optional[RetrievalError] = None
        try:
            while True:
                action = flow.throw(error) if error is not None else flow.send(reply)
                reply, error = None, None
                if isinstance(action, _flows.Sleep):
                    await asyncio.sleep(action.seconds)
                    continue
                try:
                    reply = await calls[action.method](action.request, timeout=action.timeout_s)
                except grpc.RpcError as exc:
                    # The one conversion point (see RetrievalClient._run).
                    error = from_rpc_error(exc)
        except StopIteration as stop:
            return stop.value
        finally:
            flow.close()

    async def search(
        self, ids: Ids, k: Optional[int] = None, *, timeout_s: Optional[float] = None
    ) -> List[SearchResult]:
        """See RetrievalClient.search."""
        return await self._run(_flows.search(self._state, ids, k, timeout_s))

    async def search_by_vector(
        self, vectors: Vectors, k: Optional[int] = None, *, timeout_s: Optional[float] = None
    ) -> List[SearchResult]:
        """See RetrievalClient.search_by_vector."""
        return await self._run(_flows.search_by_vector(self._state, vectors, k, timeout_s))

    async def examples(self, *, timeout_s: Optional[float] = None) -> Examples:
        """See RetrievalClient.examples."""
        return await self._run(_flows.examples(self._state, timeout_s))

    async def status(self, *, timeout_s: Optional[float] = None) -> List[VersionStatus]:
        """See RetrievalClient.status."""
        return await self._run(_flows.status(self._state, timeout_s))

    async def wait_until_available(self, timeout_s: float = DEFAULT_WAIT_TIMEOUT_S) -> VersionStatus:
        """See RetrievalClient.wait_until_available."""
        return await self._run(_flows.wait_until_available(self._state, timeout_s))

    async def metadata(self, *, timeout_s: Optional[float] = None) -> ModelMetadata:
        """See RetrievalClient.metadata."""
        return await self._run(_flows.metadata(self._state, timeout_s))

    async def close(self) -> None:
        """Close the channel; further calls raise RuntimeError. Idempotent."""
        self._closed = True
        if self._channel is not None:
            await self._channel.close()

    async def __aenter__(self) -> "AsyncRetrievalClient":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
