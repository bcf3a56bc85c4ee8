"""TF Serving 2.11's batching parameters and the queue arithmetic they imply (shared by the server and the gate).

- BatchingParameters: servables/tensorflow/session_bundle_config.proto (every 2.11 field; the
  text format is parsed by compat/tfs_config.py with the same field names and numbers);
- QueueOptions: how bundle_factory_util.h GetQueueOptions fills TF's
  SharedBatchScheduler::QueueOptions, and what TF 2.11's core/kernels/batching_util/
  shared_batch_scheduler.h checks (AddQueueAfterRewritingOptions) and computes
  (SchedulingCapacityInternal);
- the one allowed_batch_sizes rule the server applies (bundle_factory_util.cc WrapSessionForBatching)
  and RoundToLowestAllowedBatchSize (batching_util.cc).
Pure data and arithmetic: model_builder/serve runs it, model_builder/compat/serving_rules.py checks it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# What tensorflow_model_server uses with --enable_batching and no parameters file (model_servers/server.cc).
DEFAULT_THREAD_POOL_NAME = "model_server_batch_threads"


def max_parallelism() -> int:
    """port::MaxParallelism(): the CPUs this process may run on (SharedBatchScheduler's default thread count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class QueueOptions:
    """SharedBatchScheduler::QueueOptions (defaults are TF's)."""

    input_batch_size_limit: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: int = 1000

    @property
    def execution_batch_size(self) -> int:
        """Queue::GetMaxExecutionBatchSize: the split size, or the input limit when not splitting."""
        return self.max_execution_batch_size if self.enable_large_batch_splitting else self.input_batch_size_limit

    def invalid_reason(self) -> str | None:
        """AddQueueAfterRewritingOptions' refusals, in TF's words (a refusal fails the model load)."""
        if self.input_batch_size_limit <= 0:
            return f"input_batch_size_limit must be positive; was {self.input_batch_size_limit}"
        if self.batch_timeout_micros < 0:
            return f"batch_timeout_micros must be non-negative; was {self.batch_timeout_micros}"
        if self.max_enqueued_batches <= 0:
            return f"max_enqueued_batches must be positive; was {self.max_enqueued_batches}"
        if self.enable_large_batch_splitting and self.input_batch_size_limit < self.max_execution_batch_size:
            return (
                "When enable_large_batch_splitting is true, input_batch_size_limit must be greater than or equal to "
                "max_execution_batch_size."
            )
        return None

    def idle_capacity(self) -> int:
        """Rows one task may have on an idle queue (one empty open batch): SchedulingCapacityInternal.

        With splitting: (max_enqueued_batches - 1) x size + size. Without, TF keeps a looser
        check that accepts any task up to input_batch_size_limit on an idle queue.
        """
        if not self.enable_large_batch_splitting:
            return self.input_batch_size_limit
        size = self.execution_batch_size
        return (self.max_enqueued_batches - 1) * size + size


@dataclass(frozen=True)
class BatchingParameters:
    """session_bundle_config.proto BatchingParameters; None = the field is not set in the file."""

    max_batch_size: int | None = None
    batch_timeout_micros: int | None = None
    max_enqueued_batches: int | None = None
    num_batch_threads: int | None = None
    thread_pool_name: str | None = None
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False
    enable_large_batch_splitting: bool | None = None
    max_execution_batch_size: int | None = None

    @classmethod
    def from_file(cls, path: Path | None, flag: str = "--batching_parameters_file") -> BatchingParameters:
        """Parses a batching parameters file (None: what the server uses without one)."""
        if path is None:
            return cls(thread_pool_name=DEFAULT_THREAD_POOL_NAME)
        from model_builder.compat import tfs_config

        proto = tfs_config.parse("BatchingParameters", path, flag)
        values = {}
        for name in (
            "max_batch_size",
            "batch_timeout_micros",
            "max_enqueued_batches",
            "num_batch_threads",
            "thread_pool_name",
            "enable_large_batch_splitting",
            "max_execution_batch_size",
        ):
            if proto.HasField(name):
                values[name] = getattr(proto, name).value
        return cls(
            **values,
            allowed_batch_sizes=tuple(proto.allowed_batch_sizes),
            pad_variable_length_inputs=proto.pad_variable_length_inputs,
        )

    def queue_options(self) -> QueueOptions:
        """GetQueueOptions (bundle_factory_util.h): unset fields keep QueueOptions' defaults."""
        defaults = QueueOptions()
        splitting = bool(self.enable_large_batch_splitting)
        return QueueOptions(
            input_batch_size_limit=defaults.input_batch_size_limit
            if self.max_batch_size is None
            else self.max_batch_size,
            batch_timeout_micros=defaults.batch_timeout_micros
            if self.batch_timeout_micros is None
            else self.batch_timeout_micros,
            max_enqueued_batches=defaults.max_enqueued_batches
            if self.max_enqueued_batches is None
            else self.max_enqueued_batches,
            enable_large_batch_splitting=splitting,
            # Unset with splitting on, TF takes max_batch_size().value(): 0 when that is unset too.
            max_execution_batch_size=(
                self.max_execution_batch_size
                if self.max_execution_batch_size is not None
                else (self.max_batch_size or 0)
            )
            if splitting
            else defaults.max_execution_batch_size,
        )

    def threads(self) -> int:
        """num_batch_threads, or port::MaxParallelism() when unset."""
        return max_parallelism() if self.num_batch_threads is None else self.num_batch_threads

    def allowed_batch_sizes_problem(self) -> str | None:
        """WrapSessionForBatching's only allowed_batch_sizes check, in TF's words (a failure fails the load)."""
        if self.allowed_batch_sizes:
            last, limit = self.allowed_batch_sizes[-1], self.queue_options().input_batch_size_limit
            if last != limit:
                return f"Last entry in allowed_batch_sizes must match max_batch_size; last entry was {last}; expected {limit}"
        return None


def round_to_allowed_batch_size(allowed: tuple[int, ...], size: int) -> int:
    """RoundToLowestAllowedBatchSize: the smallest allowed size >= size (size itself if none or above all)."""
    return next((a for a in allowed if a >= size), size)
