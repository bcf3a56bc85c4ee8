"""ShardedRetrievalClient: one logical model served as K shards, asked in parallel and merged.

One RetrievalClient per shard (its channel, retries, interceptors, telemetry); every call runs
the same flows (_flows) on each shard with a state pinned to the shard-consistent version
(_shard_core.Pins), in parallel threads within the call's one deadline, and merges by score.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc

from . import _flows
from ._base import DEFAULT_TIMEOUT_S, DEFAULT_WAIT_TIMEOUT_S
from ._client import RetrievalClient
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
from ._types import Examples, FeatureRows, Headers, Ids, ModelMetadata, SearchResult, Vectors, VersionStatus

# One shard's flow of a fanned-out call: (its pinned state, its index, seconds left) -> Flow.
Step = Callable[[_flows.ClientState, int, float], _flows.Flow]


class ShardedRetrievalClient:
    """Blocking client for a model built with `build --shards K` (K TF Serving models).

    shards: (target, model) pairs or Shard objects, one per shard (`shard_models(name, targets)`
        builds them for `<name>-shard-<i>`).
    allow_partial: when a shard does not answer, return the merged answer of the others with
        `result.partial` / `result.missing_shards` set instead of raising ShardUnavailableError
        (per call: allow_partial=).
    version: pin this version on every shard; default: the highest version AVAILABLE on every
        shard, re-read every `version_refresh_s` seconds and after a NOT_FOUND.
    max_workers: threads for the shard calls of all concurrent callers (default 16 per shard).
    query_side: "replicated" (every shard knows every query id) or "partitioned" (each shard knows
        the ids homed there: search() asks the home shard for the id's vector first), as the
        build's --query-side (its manifest OUT/<name>.shards-<version>.json says which).
    Every other keyword argument goes to each shard's RetrievalClient (timeout_s, tls, retry,
    headers, interceptors, ...); timeout_s is the deadline of the whole fanned-out call.
    """

    _client_class: type = RetrievalClient

    def __init__(
        self,
        shards: Sequence[Shard | tuple[str, str]],
        *,
        allow_partial: bool = False,
        version: int | None = None,
        version_refresh_s: float = DEFAULT_VERSION_REFRESH_S,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_workers: int | None = None,
        query_side: str = "replicated",
        **client_options: Any,
    ) -> None:
        self._query_side = check_query_side(query_side)
        if "version_label" in client_options:
            raise ValueError("version_label: a sharded client pins one version number on every shard (version=)")
        self._shards = shards_of(shards)
        self._clients = [
            self._client_class(s.target, s.model, timeout_s=timeout_s, **client_options) for s in self._shards
        ]
        self._allow_partial = bool(allow_partial)
        self._timeout_s = timeout_s
        self._pins = Pins(self._shards, version, version_refresh_s)
        # Threads shared by every caller of this client: one shard call holds one while it waits,
        # so K threads would queue concurrent callers behind each other.
        workers = max_workers if max_workers is not None else 16 * len(self._shards)
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="shard")

    @property
    def shards(self) -> list[Shard]:
        """The shards, in order."""
        return list(self._shards)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({[s.describe() for s in self._shards]!r})"

    # -- fan-out --------------------------------------------------------------
    def _fan_out(
        self, indices: Sequence[int], deadline: _flows.Deadline, run: Callable[[int, float], Any]
    ) -> dict[int, Any]:
        """run(i, seconds left) on every shard in parallel; each outcome is a value or a RetrievalError."""
        futures = {i: self._pool.submit(run, i, max(deadline.remaining(), 0.001)) for i in indices}
        outcomes: dict[int, Any] = {}
        for i, future in futures.items():
            try:
                # The shard's own flow keeps the deadline; the margin only guards a stuck thread.
                outcomes[i] = future.result(timeout=max(deadline.remaining(), 0) + 1.0)
            except RetrievalError as exc:
                outcomes[i] = exc
            except concurrent.futures.TimeoutError:
                outcomes[i] = deadline.expired(f"shard {self._shards[i].describe()} answered")
        return outcomes

    def _pin(self, deadline: _flows.Deadline, allow_partial: bool) -> Pin:
        pin = self._pins.current(allow_partial)
        if pin is not None:
            return pin
        statuses = self._fan_out(
            range(len(self._shards)), deadline, lambda i, left: self._clients[i].status(timeout_s=left)
        )
        return self._pins.choose(statuses, allow_partial)

    def _runner(self, pin: Pin, operation: str, step: Step) -> Callable[[int, float], Any]:
        def run(i: int, left: float) -> Any:
            state = self._pins.state(i, pin.version, self._clients[i]._state)
            return self._clients[i]._run(operation, step(state, i, left))

        return run

    def _search(
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
            pin = self._pin(deadline, partial)
            live = [i for i in range(len(self._shards)) if i not in pin.missing]
            retry_on_not_found = attempt < MAX_ATTEMPTS and not reread
            home_down: set[int] = set()
            if plan is not None:  # step 1: the ids' vectors from their home shards
                first = self._fan_out(
                    plan.home_shards_among(live), deadline, self._runner(pin, QUERY_VECTORS, plan.embed_flow)
                )
                if retry_on_not_found and any(isinstance(o, ModelNotFoundError) for o in first.values()):
                    reread = not self._pins.not_found(pin)
                    continue
                home_down = split_down(first, self._shards, partial)
                plan.take_vectors(first, home_down, f"{HOME_SHARDS}, version {pin.version}")
                live = [i for i in live if i not in home_down]
            step: Step = plan.search_flow if plan is not None else (lambda st, i, left: flow_for(st, left))
            outcomes = self._fan_out(live, deadline, self._runner(pin, operation, step))
            if retry_on_not_found and any(isinstance(o, ModelNotFoundError) for o in outcomes.values()):
                # A pod lacks the pinned version (its shard is mid-roll, or the version was unloaded):
                # ask every shard again on the next lower common version, or re-read the pin once.
                reread = not self._pins.not_found(pin)
                continue
            down = split_down(outcomes, self._shards, partial) | home_down
            missing = tuple(self._shards[i].describe() for i in sorted(set(pin.missing) | down))
            merged = merge([outcomes[i] for i in live if i not in down], k, missing)
            return plan.results(merged, missing) if plan is not None else merged
        raise AssertionError("unreachable")

    # -- the RetrievalClient methods ------------------------------------------
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
        allow_partial: bool | None = None,
    ) -> list[SearchResult]:
        """As RetrievalClient.search, over every shard, merged by score (serving_default; with
        query_side="partitioned" the two steps of _partitioned.py). exclude/allow/deny/where apply on
        every shard before the merge; max_per raises ValueError (crowding is per shard)."""
        settings = self._clients[0]._settings(headers, wait_for_ready, compression)
        filters = shard_filters(exclude, allow, deny, where, max_per)
        if self._query_side == "partitioned":
            plan = PartitionedSearch(ids, len(self._shards), k, settings, filters)
            return self._search("search", None, k, timeout_s, allow_partial, plan) if plan.items else []
        return self._search(
            "search", lambda st, left: _flows.search(st, ids, k, left, settings, filters), k, timeout_s, allow_partial
        )

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
        allow_partial: bool | None = None,
    ) -> list[SearchResult]:
        """As RetrievalClient.search_by_vector, over every shard, merged by score (filters as search)."""
        settings = self._clients[0]._settings(headers, wait_for_ready, compression)
        filters = shard_filters(exclude, allow, deny, where, max_per)
        return self._search(
            "search_by_vector",
            lambda st, left: _flows.search_by_vector(st, vectors, k, left, settings, filters),
            k,
            timeout_s,
            allow_partial,
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
        allow_partial: bool | None = None,
    ) -> list[SearchResult]:
        """As RetrievalClient.search_by_features (feature models), over every shard, merged by score."""
        settings = self._clients[0]._settings(headers, wait_for_ready, compression)
        return self._search(
            "search_by_features",
            lambda st, left: _flows.search_by_features(st, rows, k, left, settings),
            k,
            timeout_s,
            allow_partial,
        )

    def _first_live(self, operation: str, flow_for: Callable[[_flows.ClientState, float], _flows.Flow], timeout_s):
        """One answer from the first answering shard, at the pinned version (lowered after NOT_FOUND, as _search)."""
        deadline = _flows.Deadline(self._timeout_s if timeout_s is None else timeout_s)
        for attempt in range(1, MAX_ATTEMPTS + 1):
            pin = self._pin(deadline, self._allow_partial)
            i = next(i for i in range(len(self._shards)) if i not in pin.missing)
            state = self._pins.state(i, pin.version, self._clients[i]._state)
            try:
                return self._clients[i]._run(operation, flow_for(state, max(deadline.remaining(), 0.001)))
            except ModelNotFoundError:
                if attempt == MAX_ATTEMPTS or not self._pins.not_found(pin):
                    raise
        raise AssertionError("unreachable")

    def examples(self, *, timeout_s: float | None = None, headers: Headers | None = None) -> Examples:
        """The first answering shard's examples (its candidates; the query ids are valid on every shard)."""
        settings = self._clients[0]._settings(headers, None, None)
        return self._first_live("examples", lambda st, left: _flows.examples(st, left, settings), timeout_s)

    def metadata(self, *, timeout_s: float | None = None, headers: Headers | None = None) -> ModelMetadata:
        """The pinned version's signatures (every shard serves the same ones)."""
        settings = self._clients[0]._settings(headers, None, None)
        return self._first_live("metadata", lambda st, left: _flows.model_metadata(st, left, settings), timeout_s)

    def pinned_version(self, *, timeout_s: float | None = None) -> int:
        """The version calls are pinned to now (read from the shards if not fresh)."""
        return self._pin(_flows.Deadline(self._timeout_s if timeout_s is None else timeout_s), False).version

    def wait_until_available(self, timeout_s: float = DEFAULT_WAIT_TIMEOUT_S) -> VersionStatus:
        """Poll every shard until one version is AVAILABLE on all of them; return it.

        Raises WaitTimeoutError after timeout_s naming what it saw last.
        """
        deadline = _flows.Deadline(timeout_s)
        delay, last = 0.05, "no answer"
        while True:
            self._pins.invalidate()
            try:
                per_call = _flows.Deadline(max(0.001, min(self._timeout_s, deadline.remaining())))
                return VersionStatus(self._pin(per_call, False).version, "AVAILABLE")
            except RetrievalError as exc:
                last = str(exc)
            if deadline.remaining() <= 0:
                raise WaitTimeoutError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"no version AVAILABLE on every shard after {timeout_s:g} s; last: {last}",
                )
            time.sleep(min(delay, max(deadline.remaining(), 0)))
            delay = min(delay * 2, 1.0)

    def close(self) -> None:
        """Close every shard's channel and the worker threads. Idempotent."""
        for client in self._clients:
            client.close()
        self._pool.shutdown(wait=False)

    def __enter__(self) -> ShardedRetrievalClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
