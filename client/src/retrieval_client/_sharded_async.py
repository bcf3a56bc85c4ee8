"""AsyncShardedRetrievalClient: the asyncio twin of ShardedRetrievalClient (_sharded.py).

Same arguments, pin and merge (_shard_core); the shards are asked with asyncio.gather of one
AsyncRetrievalClient per shard instead of threads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import grpc

from . import _flows
from ._async_client import AsyncRetrievalClient
from ._base import DEFAULT_TIMEOUT_S, DEFAULT_WAIT_TIMEOUT_S
from ._errors import ModelNotFoundError, RetrievalError, WaitTimeoutError
from ._partitioned import HOME_SHARDS, PartitionedSearch, check_query_side
from ._partitioned import QUERY_VECTORS_SIGNATURE as QUERY_VECTORS
from ._shard_core import (
    DEFAULT_VERSION_REFRESH_S,
    MAX_ATTEMPTS,
    Pin,
    Pins,
    Shard,
    merge,
    shard_filters,
    shards_of,
    split_down,
)
from ._sharded import Step
from ._types import Examples, FeatureRows, Headers, Ids, ModelMetadata, SearchResult, Vectors, VersionStatus


class AsyncShardedRetrievalClient:
    """asyncio client for a model built with `build --shards K`; see ShardedRetrievalClient."""

    def __init__(
        self,
        shards: Sequence[Shard | tuple[str, str]],
        *,
        allow_partial: bool = False,
        version: int | None = None,
        version_refresh_s: float = DEFAULT_VERSION_REFRESH_S,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        query_side: str = "replicated",
        **client_options: Any,
    ) -> None:
        self._query_side = check_query_side(query_side)
        if "version_label" in client_options:
            raise ValueError("version_label: a sharded client pins one version number on every shard (version=)")
        self._shards = shards_of(shards)
        self._clients = [
            AsyncRetrievalClient(s.target, s.model, timeout_s=timeout_s, **client_options) for s in self._shards
        ]
        self._allow_partial = bool(allow_partial)
        self._timeout_s = timeout_s
        self._pins = Pins(self._shards, version, version_refresh_s)

    @property
    def shards(self) -> list[Shard]:
        """The shards, in order."""
        return list(self._shards)

    async def _fan_out(
        self, indices: Sequence[int], deadline: _flows.Deadline, run: Callable[[int, float], Awaitable[Any]]
    ) -> dict[int, Any]:
        """run(i, seconds left) on every shard concurrently; each outcome is a value or a RetrievalError."""
        left = max(deadline.remaining(), 0.001)
        results = await asyncio.gather(*(run(i, left) for i in indices), return_exceptions=True)
        outcomes = dict(zip(indices, results, strict=True))
        for outcome in outcomes.values():
            if isinstance(outcome, BaseException) and not isinstance(outcome, RetrievalError):
                raise outcome  # bad input (ValueError, TypeError): as the single client raises it
        return outcomes

    async def _pin(self, deadline: _flows.Deadline, allow_partial: bool) -> Pin:
        pin = self._pins.current(allow_partial)
        if pin is not None:
            return pin
        statuses = await self._fan_out(
            range(len(self._shards)), deadline, lambda i, left: self._clients[i].status(timeout_s=left)
        )
        return self._pins.choose(statuses, allow_partial)

    def _runner(self, pin: Pin, operation: str, step: Step) -> Callable[[int, float], Awaitable[Any]]:
        def run(i: int, left: float) -> Awaitable[Any]:
            state = self._pins.state(i, pin.version, self._clients[i]._state)
            return self._clients[i]._run(operation, step(state, i, left))

        return run

    async def _search(
        self,
        operation: str,
        flow_for: Callable[[_flows.ClientState, float], _flows.Flow] | None,
        k: int | None,
        timeout_s: float | None,
        allow_partial: bool | None,
        plan: PartitionedSearch | None = None,
    ) -> list[SearchResult]:
        partial = self._allow_partial if allow_partial is None else bool(allow_partial)
        deadline = _flows.Deadline(self._timeout_s if timeout_s is None else timeout_s)
        reread = False
        for attempt in range(1, MAX_ATTEMPTS + 1):
            pin = await self._pin(deadline, partial)
            live = [i for i in range(len(self._shards)) if i not in pin.missing]
            retry_on_not_found = attempt < MAX_ATTEMPTS and not reread
            home_down: set[int] = set()
            if plan is not None:  # as ShardedRetrievalClient: step 1 on the home shards
                first = await self._fan_out(
                    plan.home_shards_among(live), deadline, self._runner(pin, QUERY_VECTORS, plan.embed_flow)
                )
                if retry_on_not_found and any(isinstance(o, ModelNotFoundError) for o in first.values()):
                    reread = not self._pins.not_found(pin)
                    continue
                home_down = split_down(first, self._shards, partial)
                plan.take_vectors(first, home_down, f"{HOME_SHARDS}, version {pin.version}")
                live = [i for i in live if i not in home_down]
            step: Step = plan.search_flow if plan is not None else (lambda st, i, left: flow_for(st, left))
            outcomes = await self._fan_out(live, deadline, self._runner(pin, operation, step))
            if retry_on_not_found and any(isinstance(o, ModelNotFoundError) for o in outcomes.values()):
                # As ShardedRetrievalClient: the next lower common version, or re-read the pin once.
                reread = not self._pins.not_found(pin)
                continue
            down = split_down(outcomes, self._shards, partial) | home_down
            missing = tuple(self._shards[i].describe() for i in sorted(set(pin.missing) | down))
            merged = merge([outcomes[i] for i in live if i not in down], k, missing)
            return plan.results(merged, missing) if plan is not None else merged
        raise AssertionError("unreachable")

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
        allow_partial: bool | None = None,
    ) -> list[SearchResult]:
        """As AsyncRetrievalClient.search, over every shard, merged by score (filters, query_side: see
        ShardedRetrievalClient.search)."""
        settings = self._clients[0]._settings(headers, wait_for_ready, compression)
        filters = shard_filters(exclude, allow, deny, where, max_per)
        if self._query_side == "partitioned":
            plan = PartitionedSearch(ids, len(self._shards), k, settings, filters)
            return await self._search("search", None, k, timeout_s, allow_partial, plan) if plan.items else []
        return await self._search(
            "search", lambda st, left: _flows.search(st, ids, k, left, settings, filters), k, timeout_s, allow_partial
        )

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
        allow_partial: bool | None = None,
    ) -> list[SearchResult]:
        """As AsyncRetrievalClient.search_by_vector, over every shard, merged by score (filters as search)."""
        settings = self._clients[0]._settings(headers, wait_for_ready, compression)
        filters = shard_filters(exclude, allow, deny, where, max_per)
        return await self._search(
            "search_by_vector",
            lambda st, left: _flows.search_by_vector(st, vectors, k, left, settings, filters),
            k,
            timeout_s,
            allow_partial,
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
        allow_partial: bool | None = None,
    ) -> list[SearchResult]:
        """As AsyncRetrievalClient.search_by_features, over every shard, merged by score."""
        settings = self._clients[0]._settings(headers, wait_for_ready, compression)
        return await self._search(
            "search_by_features",
            lambda st, left: _flows.search_by_features(st, rows, k, left, settings),
            k,
            timeout_s,
            allow_partial,
        )

    async def _first_live(self, operation: str, flow_for, timeout_s: float | None) -> Any:
        deadline = _flows.Deadline(self._timeout_s if timeout_s is None else timeout_s)
        for attempt in range(1, MAX_ATTEMPTS + 1):
            pin = await self._pin(deadline, self._allow_partial)
            i = next(i for i in range(len(self._shards)) if i not in pin.missing)
            state = self._pins.state(i, pin.version, self._clients[i]._state)
            try:
                return await self._clients[i]._run(operation, flow_for(state, max(deadline.remaining(), 0.001)))
            except ModelNotFoundError:
                if attempt == MAX_ATTEMPTS or not self._pins.not_found(pin):
                    raise
        raise AssertionError("unreachable")

    async def examples(self, *, timeout_s: float | None = None, headers: Headers | None = None) -> Examples:
        """The first answering shard's examples."""
        settings = self._clients[0]._settings(headers, None, None)
        return await self._first_live("examples", lambda st, left: _flows.examples(st, left, settings), timeout_s)

    async def metadata(self, *, timeout_s: float | None = None, headers: Headers | None = None) -> ModelMetadata:
        """The pinned version's signatures."""
        settings = self._clients[0]._settings(headers, None, None)
        return await self._first_live("metadata", lambda st, left: _flows.model_metadata(st, left, settings), timeout_s)

    async def pinned_version(self, *, timeout_s: float | None = None) -> int:
        """The version calls are pinned to now."""
        return (await self._pin(_flows.Deadline(self._timeout_s if timeout_s is None else timeout_s), False)).version

    async def wait_until_available(self, timeout_s: float = DEFAULT_WAIT_TIMEOUT_S) -> VersionStatus:
        """Poll every shard until one version is AVAILABLE on all of them; return it."""
        deadline = _flows.Deadline(timeout_s)
        delay, last = 0.05, "no answer"
        while True:
            self._pins.invalidate()
            try:
                per_call = _flows.Deadline(max(0.001, min(self._timeout_s, deadline.remaining())))
                return VersionStatus((await self._pin(per_call, False)).version, "AVAILABLE")
            except RetrievalError as exc:
                last = str(exc)
            if deadline.remaining() <= 0:
                raise WaitTimeoutError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"no version AVAILABLE on every shard after {timeout_s:g} s; last: {last}",
                )
            await asyncio.sleep(min(delay, max(deadline.remaining(), 0)))
            delay = min(delay * 2, 1.0)

    async def close(self) -> None:
        """Close every shard's channels. Idempotent."""
        for client in self._clients:
            await client.close()

    async def __aenter__(self) -> AsyncShardedRetrievalClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
