"""TF Serving 2.11's BatchingSession, imitated: what `--enable_batching` does to every Session::Run.

Read from tensorflow_serving (tag 2.11.0):
- servables/tensorflow/bundle_factory_util.{h,cc} WrapSessionForBatching / GetQueueOptions:
  every signature's tensor set (input and output tensor names) gets its own queue on the
  server's one SharedBatchScheduler; allowed_batch_sizes must end with max_batch_size; a Run
  whose tensor set matches no signature (e.g. an output_filter) gets a queue of its own from
  the default scheduler creator -- in 2.11 it is batched too, it does not bypass the batcher;
- batching/batching_session.cc InternalRun / ProcessBatch / MergeInputTensors /
  SplitOutputTensors / SplitInputTask: tasks of one batch are concatenated along dimension 0
  (other dimensions must match unless pad_variable_length_inputs), padded up to the smallest
  allowed batch size with copies of the last task's first row, run once, split back; every
  task of a batch gets the batch's status; a split task fails if any of its pieces failed;
- batching/batching_util.{h,cc} ComputeTensorBatchSize (a Run without inputs, a scalar input or
  inputs of unequal 0th dimension are refused), AddPadding, RoundToLowestAllowedBatchSize.
The queue itself (capacity, splitting, timeout) is model_builder/serve/scheduler.py; the parameters
and their arithmetic are model_builder/compat/tfs_batching.py (shared with the serving-rules gate).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from model_builder.compat.tfs_batching import BatchingParameters, round_to_allowed_batch_size
from model_builder.serve.errors import (
    FailedPreconditionError,
    InternalError,
    InvalidInputError,
    ResourceExhaustedError,
    ServingError,
)
from model_builder.serve.scheduler import Batch, Queue, SharedBatchScheduler

Feeds = list[tuple[str, np.ndarray]]
SessionRun = Callable[[Feeds, list[str]], list[np.ndarray]]

# BatchingSession._by_names entries; further name orders still work, through TensorSignature.of.
_MAX_NAME_KEYS = 256


def input_batch_size(inputs: Feeds) -> int:
    """ComputeTensorBatchSize: every input's 0th dimension, which must agree."""
    if not inputs:
        raise InvalidInputError("Batching Run() must have at least one input tensor")
    sizes = set()
    for _, value in inputs:
        if value.ndim == 0:
            raise InvalidInputError("Batching Run() input tensors must have at least one dimension")
        sizes.add(value.shape[0])
    if len(sizes) > 1:
        raise InvalidInputError("Batching Run() input tensors must have equal 0th-dimension size")
    return sizes.pop()


class RunCounter:
    """batching_session.cc's wrapped_run_count: Session::Run calls made for merged batches."""

    # TF Serving exports it as /tensorflow/serving/batching_session/wrapped_run_count (Prometheus: '/' -> ':').
    NAME = ":tensorflow:serving:batching_session:wrapped_run_count"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def increment(self) -> None:
        with self._lock:
            self.value += 1


@dataclass(frozen=True)
class TensorSignature:
    """The key of a queue: the input and the output tensor names (std::set in TF, so sorted)."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    @classmethod
    def of(cls, input_names, output_names) -> TensorSignature:
        return cls(tuple(sorted(set(input_names))), tuple(sorted(set(output_names))))


@dataclass(eq=False)
class _SplitState:
    """What the pieces of one split task share (SplitInputTask's IncrementalBarrier + ThreadSafeStatus)."""

    parent: _Task
    pieces: int
    outputs: list = field(default_factory=list)
    error: ServingError | None = None
    finished: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Task:
    """One Run() call (or one piece of a split one) waiting in a queue.

    A caller waits on `_done`, a plain lock released by the batch thread: one futex wake-up,
    as TF's Notification; threading.Event would add a Condition, a waiter lock per wait and
    ~50 us of Python on the request's path (benchmarks/README.md, "The local server reproduces
    the shape"). Pieces of a split task are never waited on and get no lock.
    """

    __slots__ = ("inputs", "output_names", "size", "deadline", "error", "outputs", "split", "split_index", "_done")

    def __init__(
        self,
        inputs: Feeds,
        output_names: list[str],
        size: int,
        deadline: float | None,
        split: _SplitState | None = None,
        split_index: int = 0,
    ) -> None:
        self.inputs = inputs
        self.output_names = output_names
        self.size = size
        self.deadline = deadline
        self.error: ServingError | None = None
        self.outputs: list = []
        self.split = split
        self.split_index = split_index
        self._done: threading.Lock | None = None
        if split is None:
            self._done = threading.Lock()
            self._done.acquire()

    def wait(self) -> None:
        """Blocks until the task's batch ran (finish was called)."""
        self._done.acquire()

    def finish(self, error: ServingError | None) -> None:
        if self.split is None:
            self.error = error
            self._done.release()
            return
        state = self.split
        with state.lock:
            state.error = state.error or error  # ThreadSafeStatus keeps the first failure
            state.outputs[self.split_index] = self.outputs
            state.finished += 1
            last = state.finished == state.pieces
        if last:
            parent = state.parent
            if state.error is None:
                parent.outputs = [
                    np.concatenate([piece[i] for piece in state.outputs]) for i in range(len(parent.output_names))
                ]
            parent.finish(state.error)


def _split_task(task: _Task, sizes: list[int]) -> list[_Task]:
    """SplitInputTask: one piece per size, each with its rows of every input."""
    state = _SplitState(parent=task, pieces=len(sizes), outputs=[None] * len(sizes))
    bounds = np.cumsum(sizes)[:-1]
    columns = [(name, np.split(value, bounds)) for name, value in task.inputs]
    return [
        _Task(
            [(name, parts[i]) for name, parts in columns],
            task.output_names,
            size,
            task.deadline,
            split=state,
            split_index=i,
        )
        for i, size in enumerate(sizes)
    ]


_TF_DTYPE_NAMES = {"O": "string", "S": "string", "U": "string"}


def tf_dtype_name(dtype: np.dtype) -> str:
    """TF's DataTypeString for a numpy dtype ("float", "int64", "string", ...), as its errors name it."""
    if dtype.kind in _TF_DTYPE_NAMES:
        return "string"
    return {"float32": "float", "float64": "double"}.get(dtype.name, dtype.name)


class BatchingSession:
    """Session::Run through per-signature queues on a shared scheduler; `run` blocks until the batch ran."""

    def __init__(
        self,
        params: BatchingParameters,
        scheduler: SharedBatchScheduler,
        wrapped: SessionRun,
        signatures: list[TensorSignature],
        run_count: RunCounter | None = None,
    ) -> None:
        problem = params.allowed_batch_sizes_problem()
        if problem:
            raise InvalidInputError(problem)
        self._run_count = run_count or RunCounter()
        self._params = params
        self._options = params.queue_options()
        self._scheduler = scheduler
        self._wrapped = wrapped
        self._lock = threading.Lock()
        self._queues = {sig: self._add_queue(sig) for sig in signatures}
        self._custom: dict = {}
        # (input names, output names) as a Run() names them -> its queue: skips sorting and
        # hashing a TensorSignature on every request. Bounded: names come from clients.
        self._by_names: dict[tuple[tuple[str, ...], tuple[str, ...]], Queue] = {}

    def _add_queue(self, signature: TensorSignature):
        return self._scheduler.add_queue(
            self._options, lambda batch: self._process_batch(signature, batch), _split_task
        )

    def run(self, inputs: Feeds, output_names: list[str], deadline: float | None = None) -> list[np.ndarray]:
        """BatchingSession::InternalRun: queue lookup, input size, Schedule, wait for the batch's status."""
        names = (tuple(name for name, _ in inputs), tuple(output_names))
        queue = self._by_names.get(names) or self._queue_for(names)
        task = _Task(list(inputs), list(output_names), input_batch_size(inputs), deadline)
        queue.schedule(task)
        task.wait()
        if task.error is not None:
            # The raised error's traceback holds this frame; dropping `task` here keeps that from
            # becoming a cycle (frame -> task -> error -> traceback -> frame) that would keep the
            # request's arrays alive until a full GC: RSS grew ~1 KB per refused request.
            try:
                raise task.error.with_traceback(None)
            finally:
                del task
        return task.outputs

    def _queue_for(self, names: tuple[tuple[str, ...], tuple[str, ...]]) -> Queue:
        """The signature's queue; a tensor set no signature has gets a queue of its own (bundle_factory_util.cc)."""
        signature = TensorSignature.of(*names)
        queue = self._queues.get(signature)
        with self._lock:
            if queue is None:
                queue = self._custom.get(signature)
                if queue is None:
                    queue = self._custom[signature] = self._add_queue(signature)
            if len(self._by_names) < _MAX_NAME_KEYS:
                self._by_names[names] = queue
        return queue

    def close(self, timeout: float | None = None) -> None:
        """Closes every queue and waits until their batches ran (a version unloads)."""
        with self._lock:
            queues = [*self._queues.values(), *self._custom.values()]
        for queue in queues:
            queue.close_and_wait_until_empty(timeout)

    # -- batch threads -----------------------------------------------------------
    def _process_batch(self, signature: TensorSignature, batch: Batch) -> None:
        error: ServingError | None = None
        try:
            now = time.monotonic()
            if all(t.deadline is not None and t.deadline <= now for t in batch.tasks):
                raise ResourceExhaustedError("Run() timeout exceeded while waiting in batching queue")
            merged = self._merge_inputs(signature, batch)
            try:
                outputs = self._wrapped(merged, list(signature.outputs))
            finally:
                self._run_count.increment()  # counted whatever the run's status, as in TF
            self._split_outputs(signature, outputs, batch)
        except ServingError as err:
            error = err.with_traceback(None)  # no frame (with the merged batch) kept alive by the error
        except Exception as err:
            error = InternalError(f"batch processing failed: {type(err).__name__}: {err}")
        finally:
            for task in batch.tasks:
                task.finish(error)

    def _padding(self, batch: Batch) -> int:
        return round_to_allowed_batch_size(self._params.allowed_batch_sizes, batch.size) - batch.size

    def _merge_inputs(self, signature: TensorSignature, batch: Batch) -> Feeds:
        """MergeInputTensors: pad (optional), check shapes, add padding rows, concatenate per tensor name."""
        padding = self._padding(batch)
        if len(batch.tasks) == 1 and padding == 0 and not self._params.pad_variable_length_inputs:
            # A lone task is its own batch: nothing to concatenate, check or pad (the loop below
            # would return its arrays as they are). Duplicate or foreign names take the loop.
            inputs = batch.tasks[0].inputs
            by_name = dict(inputs)
            if len(by_name) == len(inputs) == len(signature.inputs) and all(n in by_name for n in signature.inputs):
                return [(name, by_name[name]) for name in signature.inputs]
        per_name: dict[str, list[np.ndarray]] = {}
        max_dims = _max_dim_sizes(batch) if self._params.pad_variable_length_inputs else None
        for i, task in enumerate(batch.tasks):
            for name, value in task.inputs:
                values = per_name.setdefault(name, [])
                if max_dims is not None:
                    value = _add_padding(value, max_dims[name])
                elif values and value.shape[1:] != values[0].shape[1:]:
                    raise FailedPreconditionError(
                        f"Tensors with name '{name}' from different tasks have different shapes and padding is turned off. "
                        "Set pad_variable_length_inputs to true, or ensure that all tensors with the same name have equal "
                        "dimensions starting with the first dim."
                    )
                values.append(value)
                if i == len(batch.tasks) - 1 and padding > 0:
                    if values[-1].shape[0] == 0:
                        # TF would take row 0 of an empty tensor (Tensor::Slice CHECK-fails: the server dies).
                        raise InternalError(
                            "cannot pad a batch of empty requests up to an allowed batch size "
                            "(TF Serving 2.11 aborts on this)"
                        )
                    values.extend([values[-1][:1]] * padding)
        if set(per_name) != set(signature.inputs):
            raise InternalError("One or more tasks does not conform to batch signature")
        merged = []
        for name in signature.inputs:
            values = per_name[name]
            first = tf_dtype_name(values[0].dtype)
            other = next((tf_dtype_name(v.dtype) for v in values if tf_dtype_name(v.dtype) != first), None)
            if other is not None:
                # tensor::Concat's status, wrapped by MergeInputTensors (a DCHECK there only fires in debug builds).
                raise InternalError(
                    "Tensor concat operation failed: INVALID_ARGUMENT: Cannot concatenate tensors that "
                    f"have different data types. Got {first} and {other}."
                )
            merged.append((name, np.concatenate(values) if len(values) > 1 else values[0]))
        return merged

    def _split_outputs(self, signature: TensorSignature, outputs: list[np.ndarray], batch: Batch) -> None:
        """SplitOutputTensors: every output has one row per merged row; each task takes its rows."""
        padding = self._padding(batch)
        for value in outputs:
            if value.ndim == 0:
                raise FailedPreconditionError("Batched output tensor has 0 dimensions")
            if value.shape[0] != batch.size + padding:
                raise FailedPreconditionError(
                    "Batched output tensor's 0th dimension does not equal the sum of the 0th "
                    "dimension sizes of the input tensors"
                )
        if len(batch.tasks) == 1 and padding == 0:  # a lone task takes the outputs whole
            by_name = dict(zip(signature.outputs, outputs))
            batch.tasks[0].outputs = [by_name[name] for name in batch.tasks[0].output_names]
            return
        sizes = [t.size for t in batch.tasks] + ([padding] if padding > 0 else [])
        bounds = np.cumsum(sizes)[:-1]
        split = {name: np.split(value, bounds) for name, value in zip(signature.outputs, outputs)}
        for i, task in enumerate(batch.tasks):
            task.outputs = [split[name][i] for name in task.output_names]


def _max_dim_sizes(batch: Batch) -> dict[str, list[int]]:
    """CalculateMaxDimSizes: per tensor name, the largest size of every dimension over the batch's tasks."""
    sizes: dict[str, list[int]] = {}
    for task in batch.tasks:
        for name, value in task.inputs:
            current = sizes.setdefault(name, [0] * value.ndim)
            for d, n in enumerate(value.shape[: len(current)]):
                current[d] = max(current[d], n)
    return sizes


def _add_padding(value: np.ndarray, max_dims: list[int]) -> np.ndarray:
    """AddPadding: pad dimensions 1.. up to max_dims with the tensor's first element."""
    if value.ndim < 1 or value.ndim > 6:
        raise InvalidInputError("Only tensors with rank from 1 to 6 can be padded.")
    pads = [(0, 0)] + [(0, max(0, m - n)) for m, n in zip(max_dims[1:], value.shape[1:])]
    if not any(after for _, after in pads):
        return value
    if value.size < 1:
        raise InvalidInputError("Got empty tensor in batch of non-empty tensors.")
    return (
        np.pad(value, pads, mode="constant", constant_values=value.flat[0])
        if value.dtype != object
        else _pad_object(value, pads)
    )


def _pad_object(value: np.ndarray, pads) -> np.ndarray:
    out = np.full([n + after for n, (_, after) in zip(value.shape, pads)], value.flat[0], dtype=object)
    out[tuple(slice(0, n) for n in value.shape)] = value
    return out
