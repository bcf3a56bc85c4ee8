"""Hedged attempts: a hung or slow pod costs a short delay, not the call.

With HedgePolicy, an attempt that has not answered within a delay derived from the latency
the client has observed gets a copy sent alongside it; round robin sends the copy to another
pod. The first answer wins and the other attempts are cancelled; all of them share the
attempt's deadline. Every client call is a read, so a duplicate is safe. The cost: one extra
request for each call slower than the delay (by default twice the 90th percentile of recent
answers), which a healthy server sees for about 5 % of calls.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class HedgePolicy:
    """When to send a copy of a pending attempt.

    delay = latency_multiplier x the 90th percentile of the last `window` answers, clamped to
    [min_delay_s, max_delay_s]; initial_delay_s until `warmup` answers were seen. Up to
    max_extra copies per attempt, each one delay after the previous.
    """

    initial_delay_s: float = 0.05
    min_delay_s: float = 0.01
    max_delay_s: float = 1.0
    latency_multiplier: float = 2.0
    max_extra: int = 2
    window: int = 100
    warmup: int = 20

    def __post_init__(self) -> None:
        if not 0 < self.min_delay_s <= self.max_delay_s:
            raise ValueError("HedgePolicy needs 0 < min_delay_s <= max_delay_s")
        if self.max_extra < 1 or self.latency_multiplier <= 0 or self.warmup < 1 or self.window < self.warmup:
            raise ValueError("HedgePolicy needs max_extra >= 1, latency_multiplier > 0, 1 <= warmup <= window")


class Latencies:
    """Recent answer times of one client (thread-safe); the hedge delay derives from them."""

    def __init__(self, policy: HedgePolicy) -> None:
        self.policy = policy
        self._seen: collections.deque[float] = collections.deque(maxlen=policy.window)
        self._lock = threading.Lock()

    def record(self, seconds: float) -> None:
        """One answer's time, from the winning copy's send: what the server took, not the hedge delay
        (counting the wait before a copy would feed the delay back into itself)."""
        with self._lock:
            self._seen.append(seconds)

    def delay(self, timeout_s: float) -> float:
        """Seconds before the next copy; at most an even share of the attempt's time, so the
        copies fit in it."""
        policy = self.policy
        with self._lock:
            seen = sorted(self._seen)
        if len(seen) < policy.warmup:
            delay = policy.initial_delay_s
        else:
            p90 = seen[min(len(seen) - 1, int(0.9 * len(seen)))]
            delay = policy.latency_multiplier * p90
        return min(policy.max_delay_s, timeout_s / (policy.max_extra + 1), max(policy.min_delay_s, delay))


def call_sync(latencies: Latencies, send: Callable[[float], Any], timeout_s: float) -> Any:
    """Run one hedged attempt with blocking gRPC: send(timeout) starts a copy (a grpc Future).

    Returns the first response; raises the last copy's grpc.RpcError when every copy failed.
    """
    started = time.monotonic()
    deadline = started + timeout_s
    delay = latencies.delay(timeout_s)
    changed = threading.Condition()
    pending: list[Any] = []
    sent_at: dict[int, float] = {}
    error: BaseException | None = None

    def launch() -> None:
        now = time.monotonic()
        future = send(max(0.001, deadline - now))
        sent_at[id(future)] = now
        future.add_done_callback(lambda _: _notify(changed))
        pending.append(future)

    launch()
    extra = 0
    while True:
        next_copy = started + delay * (extra + 1) if extra < latencies.policy.max_extra else deadline
        with changed:
            changed.wait_for(lambda: any(f.done() for f in pending), timeout=max(0.0, next_copy - time.monotonic()))
        for future in [f for f in pending if f.done()]:
            pending.remove(future)
            failure = None if future.cancelled() else future.exception()
            if failure is None and not future.cancelled():
                for other in pending:
                    other.cancel()
                latencies.record(time.monotonic() - sent_at[id(future)])
                return future.result()
            error = failure or error
        now = time.monotonic()
        if extra < latencies.policy.max_extra and now >= next_copy and deadline - now > latencies.policy.min_delay_s:
            launch()
            extra += 1
        elif not pending:
            assert error is not None
            raise error


def _notify(condition: threading.Condition) -> None:
    with condition:
        condition.notify_all()


async def call_async(latencies: Latencies, send: Callable[[float], Any], timeout_s: float) -> Any:
    """call_sync for grpc.aio: send(timeout) starts a copy (an awaitable grpc.aio call)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + timeout_s
    delay = latencies.delay(timeout_s)
    calls: dict[asyncio.Future[Any], Any] = {}
    sent_at: dict[asyncio.Future[Any], float] = {}

    def launch() -> None:
        now = loop.time()
        call = send(max(0.001, deadline - now))
        task = asyncio.ensure_future(_await(call))
        calls[task], sent_at[task] = call, now

    launch()
    extra = 0
    error: BaseException | None = None
    try:
        while True:
            next_copy = started + delay * (extra + 1) if extra < latencies.policy.max_extra else deadline
            done, _ = await asyncio.wait(
                set(calls), timeout=max(0.0, next_copy - loop.time()), return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                del calls[task]
                if task.cancelled():
                    continue
                if task.exception() is None:
                    latencies.record(loop.time() - sent_at[task])
                    return task.result()
                error = task.exception()
            now = loop.time()
            if (
                extra < latencies.policy.max_extra
                and now >= next_copy
                and deadline - now > latencies.policy.min_delay_s
            ):
                launch()
                extra += 1
            elif not calls:
                assert error is not None
                raise error
    finally:
        for task, call in calls.items():
            call.cancel()
            task.cancel()


async def _await(call: Any) -> Any:
    return await call
