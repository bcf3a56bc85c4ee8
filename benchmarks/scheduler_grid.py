"""The batching settings and caller counts the scheduler benchmark measures, and how its cells are summarized.

Shared by the TF Serving 2.11 harness driver (benchmarks/scheduler_cxx.py) and the local server's
scheduler (benchmarks/scheduler_local.py), so both tables have the same rows and columns.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

# The image's fixed parameters (k8s/base/config/batching_parameters.txt); only the knobs below vary.
MAX_BATCH_SIZE = 1024


@dataclass(frozen=True)
class Setting:
    """One batching configuration: the knobs that decide a lone request's wait and a batch's size."""

    timeout_us: int
    execution_batch: int
    batch_threads: int = 2

    @property
    def name(self) -> str:
        """Row label, e.g. `timeout 0 us, exec 8, 2 threads`."""
        return f"timeout {self.timeout_us} us, exec {self.execution_batch}, {self.batch_threads} threads"

    @property
    def max_enqueued_batches(self) -> int:
        """Enough execution batches that an idle queue holds a max_batch_size request (serving_rules' rule)."""
        return max(128, -(-MAX_BATCH_SIZE // self.execution_batch))

    def key_values(self) -> dict[str, int | bool]:
        """TF Serving's BatchingParameters fields for this setting."""
        return {
            "max_batch_size": MAX_BATCH_SIZE,
            "batch_timeout_micros": self.timeout_us,
            "max_enqueued_batches": self.max_enqueued_batches,
            "num_batch_threads": self.batch_threads,
            "enable_large_batch_splitting": True,
            "max_execution_batch_size": self.execution_batch,
        }


@dataclass(frozen=True)
class Grid:
    """What one run measures: settings x callers, `runs` times each, `calls` calls per cell (all callers)."""

    name: str
    settings: tuple[Setting, ...]
    callers: tuple[int, ...]
    runs: int
    calls: int
    min_calls_per_caller: int = 30

    def calls_per_caller(self, callers: int) -> int:
        """Closed-loop calls each caller makes: about `calls` in all, never fewer than the minimum each."""
        return max(self.min_calls_per_caller, self.calls // callers)

    def to_dict(self) -> dict:
        """JSON-ready form for the results."""
        return asdict(self)


# Every timeout at the image's execution batch and thread count; execution batch 4 and 16 at the
# two timeouts in question (0 and the image's 400 µs); batch threads 1 and 4 at timeout 0. One harness
# process per cell (~6 s of TF start-up each on a busy 2-core machine) bounds the grid's size.
FULL = Grid(
    name="full",
    settings=(
        *(Setting(t, 8) for t in (0, 100, 400, 1000)),
        *(Setting(t, e) for e in (4, 16) for t in (0, 400)),
        Setting(0, 8, 1),
        Setting(0, 8, 4),
    ),
    callers=(1, 2, 4, 8, 16, 32),
    runs=3,
    calls=1500,
)
# The shipped file against the previous one, more runs per cell (for a second look on a busy machine).
SHIPPED = Grid(name="shipped", settings=(Setting(0, 8), Setting(400, 8)), callers=FULL.callers, runs=5, calls=1500)
# Tiny: proves the pipeline (tests/bench), measures nothing worth reading.
QUICK = Grid(
    name="quick",
    settings=(Setting(0, 8), Setting(400, 8)),
    callers=(1, 4),
    runs=1,
    calls=40,
    min_calls_per_caller=10,
)
GRIDS = {g.name: g for g in (FULL, SHIPPED, QUICK)}
PLAIN = "plain session (no batching)"


@dataclass(frozen=True)
class Sample:
    """One closed-loop run of one cell."""

    qps: float
    p50_us: float
    p99_us: float
    failed: int = 0


def cell(samples: list[Sample]) -> dict:
    """Median of the runs of one cell, with the spread (min..max) of QPS and p50."""
    qps = [s.qps for s in samples]
    p50 = [s.p50_us for s in samples]
    return {
        "qps": round(statistics.median(qps)),
        "p50_us": round(statistics.median(p50)),
        "p99_us": round(statistics.median([s.p99_us for s in samples])),
        "qps_range": [round(min(qps)), round(max(qps))],
        "p50_us_range": [round(min(p50)), round(max(p50))],
        "runs": len(samples),
        "failed": sum(s.failed for s in samples),
    }


def table(rows: dict[str, dict[str, dict]], callers: tuple[int, ...]) -> str:
    """Markdown table: one row per setting (plain first), one column per caller count, `QPS / p50 µs`."""
    head = "| setting | " + " | ".join(f"{c} caller{'s' if c > 1 else ''}" for c in callers) + " |"
    lines = [head, "|---|" + "---|" * len(callers)]
    for name, cells in rows.items():
        values = []
        for c in callers:
            v = cells.get(str(c))
            values.append(f"{v['qps']:,} / {v['p50_us']:,}" if v else "—")
        lines.append(f"| {name} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def goal_check(rows: dict[str, dict[str, dict]], setting: str, baseline: str = PLAIN) -> dict:
    """The issue's goal for a shipped setting against the plain session and the timeout-0 rows.

    1-caller p50 within 200 µs of plain; QPS at least plain's from 8 callers up; no caller count where
    its QPS is below every timeout-0 row's (the best timeout-0 row at that count is the reference).
    """
    ours, plain = rows[setting], rows[baseline]
    zero_rows = {n: r for n, r in rows.items() if n.startswith("timeout 0 ")}
    low_p50 = ours["1"]["p50_us"] - plain["1"]["p50_us"]
    from_8 = {c: ours[c]["qps"] - plain[c]["qps"] for c in ours if int(c) >= 8}
    below_zero = {
        c: max(r[c]["qps"] for r in zero_rows.values()) - ours[c]["qps"]
        for c in ours
        if zero_rows and max(r[c]["qps"] for r in zero_rows.values()) > ours[c]["qps"]
    }
    return {
        "setting": setting,
        "one_caller_p50_over_plain_us": low_p50,
        "one_caller_ok": low_p50 <= 200,
        "qps_minus_plain_from_8_callers": from_8,
        "from_8_ok": all(v >= 0 for v in from_8.values()),
        "qps_below_best_timeout_0_row": below_zero,
    }
