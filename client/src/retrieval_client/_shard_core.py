"""What the sync and async sharded clients share: the shards, the version pin, the merge.

A sharded model (`build --shards K`, model_builder/sharding.py) is K TF Serving models
`<name>-shard-<i>`, each holding a part of the candidates and the whole query side. A query is
asked of every shard and the answers merged by score. All shards must answer from one model
version (a shard still on version 3 while another has 4 would merge two catalogues): the client
reads each shard's AVAILABLE versions (GetModelStatus) and pins model_spec.version to the highest
version every shard has, so during a rollout answers stay on the old version until the last shard
has the new one. The old one stays loaded until then because every pod serves two versions
(TF Serving's model_version_policy { latest { num_versions: 2 } }, k8s/README.md "Sharding").

A status call reaches one pod behind a shard's Service: while a shard rolls, it can report the new
version although another pod of that shard (still old) lacks it, and a call pinned to it that lands
there is NOT_FOUND. The call is then asked again, of every shard, on the next lower version all
shards reported (the old one, loaded on every pod under num_versions 2), and that lower pin is kept
until the next refresh: no failed call, and every merged answer comes from one version.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import numpy as np

from . import _requests as rq
from ._errors import (
    DeadlineExceededError,
    ModelNotFoundError,
    ModelNotReadyError,
    RetrievalError,
    ServerUnavailableError,
    ShardUnavailableError,
)
from ._filters import Filters
from ._flows import ClientState
from ._types import SearchResult, VersionStatus

# Errors that mean "this shard is not answering", as opposed to a bad request (which every shard
# would refuse alike and is raised as is).
SHARD_DOWN = (ServerUnavailableError, DeadlineExceededError, ModelNotFoundError, ModelNotReadyError)
DEFAULT_VERSION_REFRESH_S = 5.0
# Fan-outs per call: the pinned version, lower common versions after NOT_FOUND, one re-read of the pin.
MAX_ATTEMPTS = 4


@dataclass(frozen=True)
class Shard:
    """One shard: its gRPC target and TF Serving model name (`<name>-shard-<i>`)."""

    target: str
    model: str

    def describe(self) -> str:
        return f"{self.target} {self.model}"


def shards_of(shards: Sequence[Shard | tuple[str, str]]) -> list[Shard]:
    """Shard objects from Shard or (target, model) pairs; ValueError when empty or repeated."""
    out = [s if isinstance(s, Shard) else Shard(*s) for s in shards]
    if not out:
        raise ValueError("shards must name at least one (target, model) pair")
    if len(set(out)) != len(out):
        raise ValueError("shards: each (target, model) pair must appear once")
    return out


def shard_models(model: str, targets: Sequence[str]) -> list[Shard]:
    """The shards of `build --shards len(targets) --model-name model`, shard i at targets[i]."""
    return [Shard(target, f"{model}-shard-{i}") for i, target in enumerate(targets)]


def shard_error(shard: Shard, error: RetrievalError) -> ShardUnavailableError:
    """The typed error naming a shard that did not answer."""
    return ShardUnavailableError(
        error.code, f"shard {shard.describe()} did not answer: {error.details}", shard.target, shard.model
    )


@dataclass(frozen=True)
class Pin:
    """The version every answering shard serves, and the shards left out (allow_partial)."""

    version: int
    missing: tuple[int, ...]
    at: float
    # The other versions every answering shard reported, highest first: where a NOT_FOUND falls back to.
    lower: tuple[int, ...] = ()


class Pins:
    """The version pin, refreshed every `refresh_s` (and at once after a NOT_FOUND)."""

    def __init__(self, shards: list[Shard], fixed: int | None, refresh_s: float) -> None:
        self._shards = shards
        self._fixed = fixed
        self._refresh_s = refresh_s
        self._pin: Pin | None = None
        self._states: dict[tuple[int, int], ClientState] = {}
        self._lock = threading.Lock()

    def current(self, allow_partial: bool) -> Pin | None:
        """The cached pin while fresh (and complete unless partial answers are allowed)."""
        pin = self._pin
        if pin is None or time.monotonic() - pin.at > self._refresh_s or (pin.missing and not allow_partial):
            return None
        return pin

    def invalidate(self) -> None:
        self._pin = None

    def not_found(self, pin: Pin) -> bool:
        """A call pinned to `pin` met NOT_FOUND: pin the next lower common version until the next refresh
        (True), or, with none left, forget the pin so the next call re-reads the shards (False)."""
        with self._lock:
            current = self._pin
            if current is not None and current.version < pin.version:
                return True  # another caller already lowered it
            if not pin.lower:
                self._pin = None
                return False
            self._pin = Pin(pin.lower[0], pin.missing, pin.at, pin.lower[1:])
            return True

    def choose(self, statuses: dict[int, list[VersionStatus] | RetrievalError], allow_partial: bool) -> Pin:
        """The highest version AVAILABLE on every answering shard; raises the shard's error otherwise."""
        down = split_down(statuses, self._shards, allow_partial)
        available = {
            i: {s.version for s in answer if s.state == "AVAILABLE"} for i, answer in statuses.items() if i not in down
        }
        common = set.intersection(*available.values())
        if self._fixed is not None:
            common &= {self._fixed}
        if not common:
            seen = "; ".join(f"{self._shards[i].describe()}: {sorted(v)}" for i, v in available.items())
            wanted = f"version {self._fixed}" if self._fixed is not None else "a version"
            raise ModelNotReadyError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"no shard-consistent answer: {wanted} is not AVAILABLE on every shard (AVAILABLE: {seen})",
                "wait until every shard has loaded the same version (wait_until_available())",
            )
        ordered = sorted(common, reverse=True)
        self._pin = Pin(ordered[0], tuple(sorted(down)), time.monotonic(), tuple(ordered[1:]))
        return self._pin

    def state(self, index: int, version: int, like: ClientState) -> ClientState:
        """Shard `index`'s flow state pinned to `version` (its own metadata cache)."""
        with self._lock:
            state = self._states.get((index, version))
            if state is None:
                ref = rq.ModelRef(self._shards[index].model, version)
                state = self._states[(index, version)] = ClientState(ref, like.timeout_s, like.retry)
                for stale in [key for key in self._states if key[0] == index and key[1] != version]:
                    del self._states[stale]
            return state


def split_down(outcomes: dict[int, object], shards: list[Shard], allow_partial: bool) -> set[int]:
    """Shards whose outcome is a 'not answering' error: raised (typed, naming the shard) unless
    partial answers are allowed and some shard answered. Any other error is raised as is."""
    down = set()
    for i, outcome in outcomes.items():
        if isinstance(outcome, SHARD_DOWN):
            down.add(i)
        elif isinstance(outcome, BaseException):
            raise outcome
    if down and (not allow_partial or len(down) == len(outcomes)):
        first = min(down)
        raise shard_error(shards[first], outcomes[first])  # type: ignore[arg-type]
    return down


def merge(answers: list[list[SearchResult]], k: int | None, missing: tuple[str, ...]) -> list[SearchResult]:
    """Row by row, the best k (id, score) over the shards' answers, best first.

    Each shard already returned its own best k, so the global best k are among them. Ties keep
    shard order (stable sort). `found` is False only if a shard answered found=False. `version` is
    the version the shards answered from (None if they did not all say the same one).
    """
    merged = []
    for rows in zip(*answers, strict=True):
        ids = np.concatenate([r.ids for r in rows])
        scores = np.concatenate([r.scores for r in rows])
        take = k if k is not None else max(len(r.ids) for r in rows)
        order = np.argsort(-scores, kind="stable")[:take]
        versions = {r.version for r in rows}
        version = versions.pop() if len(versions) == 1 else None
        merged.append(SearchResult(ids[order], scores[order], all(r.found for r in rows), missing, version))
    return merged


def shard_filters(exclude, allow, deny, where, max_per) -> Filters | None:
    """The single client's filters, applied on every shard before the merge. Not max_per: crowding
    runs inside each shard, so the merged top k could hold K x max_per items of one value."""
    if max_per:
        raise ValueError(
            "max_per: crowding is applied per shard, so a merged answer could hold shards x max_per results "
            "of one value; call without max_per and crowd the merged results yourself"
        )
    return Filters.of(exclude, allow, deny, where, None)
