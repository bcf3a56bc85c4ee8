"""Request counters and latency histograms in Prometheus' text format (names like TF Serving's)."""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict

# Microseconds, like TF Serving's request_latency buckets (roughly x1.8 apart).
BUCKETS_US = (50, 100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 51200, 102400, 204800, 409600, 819200, 1638400)


class Metrics:
    """Thread-safe counters keyed by (model, API, status) and latency histograms keyed by (model, API)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple, int] = defaultdict(int)
        self._hist: dict[tuple, list[int]] = {}
        self._sums: dict[tuple, float] = defaultdict(float)
        self._counters: dict[str, object] = {}

    def add_counter(self, name: str, read) -> None:
        """Exports a label-free counter read from `read()` (e.g. the batching session's run count)."""
        self._counters[name] = read

    def observe(self, model: str, api: str, status: str, seconds: float) -> None:
        """Records one request."""
        micros = seconds * 1e6
        with self._lock:
            self._counts[(model, api, status)] += 1
            buckets = self._hist.setdefault((model, api), [0] * (len(BUCKETS_US) + 1))
            buckets[bisect.bisect_left(BUCKETS_US, micros)] += 1
            self._sums[(model, api)] += micros

    def render(self) -> str:
        """The Prometheus exposition text."""
        lines = ["# TYPE :tensorflow:serving:request_count counter"]
        with self._lock:
            for (model, api, status), n in sorted(self._counts.items()):
                lines.append(
                    f':tensorflow:serving:request_count{{API="{api}",model_name="{model}",status="{status}"}} {n}'
                )
            lines.append("# TYPE :tensorflow:serving:request_latency histogram")
            for (model, api), buckets in sorted(self._hist.items()):
                total = 0
                for bound, n in zip([*BUCKETS_US, "+Inf"], buckets):
                    total += n
                    lines.append(
                        f':tensorflow:serving:request_latency_bucket{{API="{api}",model_name="{model}",le="{bound}"}} {total}'
                    )
                lines.append(
                    f':tensorflow:serving:request_latency_sum{{API="{api}",model_name="{model}"}} {self._sums[(model, api)]:.0f}'
                )
                lines.append(f':tensorflow:serving:request_latency_count{{API="{api}",model_name="{model}"}} {total}')
        for name, read in sorted(self._counters.items()):
            lines += [f"# TYPE {name} counter", f"{name} {read()}"]
        return "\n".join(lines) + "\n"
