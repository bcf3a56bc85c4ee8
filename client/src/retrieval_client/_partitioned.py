"""Search by id on shards built with `build --shards K --query-side partitioned`.

Such a shard holds its own candidates and only the query ids whose crc32 (of the id's text: UTF-8,
int64 ids as decimal) mod K is its index, its *home* shard (model_builder/sharding.py). A search by
id therefore takes two steps, both pinned to the shard-consistent version:
  1. each id's home shard returns the id's stored vector (signature `query_vectors`);
  2. the home shard answers the id itself (serving_default: it knows the id, so an item is never its
     own result), every other shard answers its vector (search_by_vector); the answers are merged.
Two round trips instead of one, for 1/K of the query table per shard.

What the sync and async sharded clients share is here: the plan of one call and its flows.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _flows
from . import _requests as rq
from . import _responses as rs
from ._filters import Filters
from ._flows import ClientState, Flow
from ._types import CallSettings, SearchResult

QUERY_VECTORS_SIGNATURE = "query_vectors"
QUERY_SIDES = ("replicated", "partitioned")
HOME_SHARDS = "their home shards (query_side partitioned)"


def check_query_side(query_side: str) -> str:
    """The constructor's query_side, or ValueError naming the choices."""
    if query_side not in QUERY_SIDES:
        raise ValueError(f"query_side {query_side!r}: choose {' or '.join(QUERY_SIDES)} (as the build's --query-side)")
    return query_side


def home_shards(items: Sequence[Any], count: int) -> np.ndarray:
    """Each id's home shard: crc32 of its text mod `count`, as the builder partitions."""
    return np.fromiter((zlib.crc32(rq._id_as_bytes(i)) % count for i in items), np.int64, len(items))


def query_vectors(state: ClientState, ids: list[Any], timeout_s: float, settings: CallSettings) -> Flow:
    """Step 1 on a home shard: ids -> (vectors [B, D] float32, found [B] bool)."""
    deadline = state.deadline(timeout_s)
    contract, _ = yield from _flows._contract(state, deadline, settings)
    what = f"{state.ref.describe(contract.version)} ({QUERY_VECTORS_SIGNATURE})"
    inputs = {"ids": rq.ids_tensor(ids, contract.require_id_dtype(state.ref), what)}
    request = rq.predict_request(state.ref, QUERY_VECTORS_SIGNATURE, inputs)
    response = yield from _flows.call(state, deadline, rq.PREDICT, request, settings)
    vectors = rs.output_array(response, "vectors", what).astype(np.float32).reshape(len(ids), -1)
    found = rs.output_array(response, "found", what).astype(bool).reshape(len(ids))
    return vectors, found


class PartitionedSearch:
    """One search(ids) call over partitioned shards: its ids, their home shards and, after step 1,
    their vectors. Rows whose home shard is down (allow_partial) cannot be asked of the others."""

    def __init__(
        self, ids: Any, count: int, k: int | None, settings: CallSettings, filters: Filters | None = None
    ) -> None:
        rq.check_k(k)
        self.items = rq.as_id_list(ids)
        self.homes = home_shards(self.items, count)
        self.k = k
        self.settings = settings
        self.filters = filters
        self.vectors: np.ndarray | None = None
        self.answerable = np.zeros(len(self.items), bool)

    def home_shards_among(self, live: Sequence[int]) -> list[int]:
        """The live shards that are home to some id (step 1 asks only these)."""
        return sorted(set(self.homes.tolist()) & set(live))

    def embed_flow(self, state: ClientState, shard: int, left: float) -> Flow:
        """Step 1 on `shard`: the vectors of the ids homed there."""
        rows = np.flatnonzero(self.homes == shard)
        return query_vectors(state, [self.items[r] for r in rows], left, self.settings)

    def take_vectors(self, outcomes: dict[int, Any], down: set[int], what: str) -> None:
        """Keeps step 1's vectors; raises InvalidRequestError naming ids no home shard knows."""
        unknown, parts = [], {}
        for shard, outcome in outcomes.items():
            if shard in down:
                continue
            rows = np.flatnonzero(self.homes == shard)
            vectors, found = outcome
            parts[shard] = (rows, vectors)
            unknown += [self.items[r] for r, ok in zip(rows.tolist(), found.tolist(), strict=True) if not ok]
        if unknown:
            raise rq.unknown_ids_error(unknown, what)
        dim = next(iter(parts.values()))[1].shape[1] if parts else 0
        self.vectors = np.zeros((len(self.items), dim), np.float32)
        self.answerable[:] = False
        for rows, vectors in parts.values():
            self.vectors[rows] = vectors
            self.answerable[rows] = True

    def search_flow(self, state: ClientState, shard: int, left: float) -> Flow:
        """Step 2 on `shard`: its home ids by id, the other answerable rows by vector; one result
        per answerable row, in row order."""
        deadline = _flows.Deadline(left)
        rows = np.flatnonzero(self.answerable)
        own = rows[self.homes[rows] == shard]
        others = rows[self.homes[rows] != shard]
        by_row: dict[int, SearchResult] = {}
        if len(own):
            ids = [self.items[r] for r in own]
            left_now = max(deadline.remaining(), 0.001)
            answers = yield from _flows.search(state, ids, self.k, left_now, self.settings, self.filters)
            by_row.update(zip(own.tolist(), answers, strict=True))
        if len(others):
            assert self.vectors is not None
            vectors = self.vectors[others]
            left_now = max(deadline.remaining(), 0.001)
            answers = yield from _flows.search_by_vector(state, vectors, self.k, left_now, self.settings, self.filters)
            by_row.update(zip(others.tolist(), answers, strict=True))
        return [by_row[r] for r in rows.tolist()]

    def results(self, merged: list[SearchResult], missing: tuple[str, ...]) -> list[SearchResult]:
        """The merged answers of the answerable rows, and for rows whose home shard is down an
        empty, not-found answer flagged partial."""
        merged_rows = iter(merged)
        empty_ids = np.asarray([], dtype=merged[0].ids.dtype if merged else object)
        out = []
        for ok in self.answerable.tolist():
            if ok:
                out.append(next(merged_rows))
            else:
                out.append(SearchResult(empty_ids, np.asarray([], np.float32), False, missing))
        return out
