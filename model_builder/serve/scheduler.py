"""TensorFlow 2.11's SharedBatchScheduler, imitated: queues of batches, capacity, splitting, batch threads.

Read from TF 2.11's core/kernels/batching_util/shared_batch_scheduler.h (shipped in the
tensorflow-cpu 2.11 wheel's include dir) and input_split_metadata.cc. What it decides, and
so what a client sees, is the same:
- a task larger than `input_batch_size_limit` (the file's max_batch_size) is refused with
  INVALID_ARGUMENT "Task size N is larger than maximum input batch size M" (Queue::Schedule);
- a task the queue cannot hold is refused with UNAVAILABLE "The batch scheduling queue to which
  this task was submitted is full" (BatchTaskExceedQueueCapacity); with large-batch splitting
  the capacity is (max_enqueued_batches - enqueued batches) x max_execution_batch_size + the
  open batch's free slots (SchedulingCapacityInternal), so an idle queue holds
  max_enqueued_batches x max_execution_batch_size rows;
- a task bigger than the open batch's free slots is split (first piece fills the open batch,
  then pieces of max_execution_batch_size), the pieces go to consecutive batches;
- the open batch is closed when it is full or its first task waited batch_timeout_micros;
  batch threads take closed batches round-robin over the queues, and an idle batch thread
  looks again after 1 ms unless a batch became ready (ThreadLogic's WaitForMilliseconds), so a
  lone request waits batch_timeout_micros plus up to ~1 ms, as in TF Serving.
Eager splitting is the only mode (TF Serving 2.11 never sets enable_lazy_split).
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable

from model_builder.compat.tfs_batching import QueueOptions
from model_builder.serve.errors import InvalidInputError, UnavailableError

# ThreadLogic: "Wait until a new batch becomes schedulable, or some time has elapsed" -- 1 ms.
_IDLE_POLL_SECONDS = 0.001


def split_sizes(task_size: int, open_batch_remaining_slot: int, batch_size_limit: int) -> list[int]:
    """InputSplitMetadata: the first piece fills the open batch, the rest are full batches (last one partial)."""
    sizes, left = [], task_size
    if open_batch_remaining_slot > 0:
        sizes.append(min(open_batch_remaining_slot, left))
        left -= sizes[0]
    while left > 0:
        sizes.append(min(batch_size_limit, left))
        left -= sizes[-1]
    return sizes


class Batch:
    """Tasks that run together in one Session::Run."""

    __slots__ = ("tasks", "size", "closed")

    def __init__(self) -> None:
        self.tasks: list = []
        self.size = 0
        self.closed = False

    def add(self, task) -> None:
        self.tasks.append(task)
        self.size += task.size


class Queue:
    """One queue (one tensor signature): a deque of batches whose last one is open."""

    def __init__(
        self, options: QueueOptions, process: Callable[[Batch], None], split: Callable, notify: Callable[[], None]
    ) -> None:
        problem = options.invalid_reason()
        if problem:
            raise InvalidInputError(problem)
        self.options = options
        self._process = process
        self._split = split
        self._notify = notify
        self._lock = threading.Lock()
        self._batches: collections.deque[Batch] = collections.deque([Batch()])
        self._open_since = 0.0
        self._in_flight = 0
        self._closed = False
        self._empty = threading.Condition(self._lock)

    # -- enqueue (request threads) --------------------------------------------
    def schedule(self, task) -> None:
        """Queue::Schedule + ScheduleWithoutOrEagerSplit: refuse, or place the task (or its pieces) in batches."""
        limit = self.options.input_batch_size_limit
        if task.size > limit:
            raise InvalidInputError(f"Task size {task.size} is larger than maximum input batch size {limit}")
        size = self.options.execution_batch_size
        with self._lock:
            if self._closed:
                raise UnavailableError("The batch scheduling queue to which this task was submitted is closed")
            first_task = len(self._batches) == 1 and not self._batches[-1].tasks
            if self._exceeds_capacity(task.size):
                raise UnavailableError("The batch scheduling queue to which this task was submitted is full")
            remaining = size - self._batches[-1].size
            if task.size <= remaining or not self.options.enable_large_batch_splitting:
                pieces = [task]
            else:
                pieces = self._split(task, split_sizes(task.size, remaining, size))
            for piece in pieces:
                if self._batches[-1].size + piece.size > size:
                    self._start_new_batch()
                if not self._batches[-1].tasks:
                    self._open_since = time.monotonic()
                self._batches[-1].add(piece)
            ready = len(self._batches) > 1 or self._open_batch_schedulable()
        # TF notifies only when a batch is ready; its threads then find the rest by polling
        # every 1 ms. Ours sleep while nothing at all is queued, so the first task wakes one.
        # With timeout 0 a lone task is ready here: one idle batch thread is woken at once.
        if ready or first_task:
            self._notify()

    def _exceeds_capacity(self, task_size: int) -> bool:
        size = self.options.execution_batch_size
        if self.options.enable_large_batch_splitting:
            free_batches = self.options.max_enqueued_batches - len(self._batches)
            return task_size > free_batches * size + (size - self._batches[-1].size)
        # TF keeps this looser check for models that relied on it before splitting existed.
        return (
            self._batches[-1].size + task_size > self.options.input_batch_size_limit
            and len(self._batches) >= self.options.max_enqueued_batches
        )

    def _start_new_batch(self) -> None:
        self._batches[-1].closed = True
        self._batches.append(Batch())

    def _open_batch_schedulable(self) -> bool:
        batch = self._batches[-1]
        if not batch.tasks:
            return False
        return (
            self._closed
            or batch.size >= self.options.execution_batch_size
            or time.monotonic() >= self._open_since + self.options.batch_timeout_micros / 1e6
        )

    # -- dequeue (batch threads) ----------------------------------------------
    def take_batch(self) -> Batch | None:
        """Queue::ScheduleBatchWithEagerSplit: a closed batch to process now, or None."""
        with self._lock:
            if len(self._batches) == 1 and self._open_batch_schedulable():
                self._start_new_batch()
            if len(self._batches) < 2:
                return None
            self._in_flight += 1
            return self._batches.popleft()

    def process(self, batch: Batch) -> None:
        """Runs the batch's callback, then lets a closing queue know when it is empty."""
        try:
            self._process(batch)
        finally:
            with self._lock:
                self._in_flight -= 1
                if self._closed:  # only close_and_wait_until_empty waits on it
                    self._empty.notify_all()

    def has_tasks(self) -> bool:
        """A task waits in a batch not yet taken (ready or not)."""
        with self._lock:
            return len(self._batches) > 1 or bool(self._batches[-1].tasks)

    def pending_deadline(self) -> float | None:
        """When the open batch's timeout passes (None: it holds no task)."""
        with self._lock:
            return self._open_since + self.options.batch_timeout_micros / 1e6 if self._batches[-1].tasks else None

    def is_empty(self) -> bool:
        """No task waiting or running."""
        with self._lock:
            return self._in_flight == 0 and len(self._batches) == 1 and not self._batches[-1].tasks

    def close_and_wait_until_empty(self, timeout: float | None = None) -> None:
        """QueueHandle's destructor: no new tasks; the open batch is flushed; waits for running batches."""
        with self._lock:
            self._closed = True
        self._notify()
        with self._lock:
            self._empty.wait_for(
                lambda: self._in_flight == 0 and len(self._batches) == 1 and not self._batches[-1].tasks,
                timeout=timeout,
            )

    def abandon(self, error: Exception) -> None:
        """Shutdown: every task not yet taken by a batch thread finishes with `error` (running batches complete)."""
        with self._lock:
            self._closed = True
            waiting, self._batches = list(self._batches), collections.deque([Batch()])
            self._empty.notify_all()
        for batch in waiting:
            for task in batch.tasks:
                task.finish(error)

    @property
    def closed(self) -> bool:
        """True once closing started."""
        return self._closed


class _Sleeper:
    """One batch thread's wake-up: a plain lock held while the thread sleeps, released to wake it.

    TF's schedulable_batch_cv_.notify_one() costs one futex wake-up. threading.Condition would
    cost several locks and a waiter allocation per wait, in Python code holding the GIL, on
    every request's path (benchmarks/README.md, "The local server reproduces the shape").
    """

    __slots__ = ("lock",)

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()


class SharedBatchScheduler:
    """A pool of batch threads serving every queue round-robin (one pool per server, like TF Serving's)."""

    def __init__(self, num_batch_threads: int, thread_pool_name: str = "batch_threads") -> None:
        if num_batch_threads < 1:
            raise InvalidInputError(f"num_batch_threads must be positive; was {num_batch_threads}")
        self._queues: list[Queue] = []
        self._next = 0
        self._mu = threading.Lock()  # TF's mu_: the queue list, the round-robin position, the idle threads
        self._idle: list[_Sleeper] = []
        self._stopped = False
        self._threads = [
            threading.Thread(target=self._thread_logic, name=f"{thread_pool_name}_{i}", daemon=True)
            for i in range(num_batch_threads)
        ]
        for thread in self._threads:
            thread.start()

    def add_queue(self, options: QueueOptions, process: Callable[[Batch], None], split: Callable) -> Queue:
        """SharedBatchScheduler::AddQueue (validates the options like TF)."""
        queue = Queue(options, process, split, self._notify)
        with self._mu:
            self._queues.append(queue)
        return queue

    def _notify(self) -> None:
        # The queues' schedulable_batch_callback_: notify_one -- wake one idle batch thread, if any.
        with self._mu:
            if self._idle:
                self._idle.pop().lock.release()

    def _next_work(self) -> tuple[Queue, Batch] | None:
        # GetNextWorkItem_Locked: ask each queue once, starting after the last one served.
        for _ in range(len(self._queues)):
            if not self._queues:
                return None
            queue = self._queues[self._next % len(self._queues)]
            batch = queue.take_batch()
            if batch is None and queue.closed and queue.is_empty():
                self._queues.remove(queue)  # a closed, drained queue is dropped
                continue
            self._next = (self._next + 1) % max(1, len(self._queues))
            if batch is not None:
                return queue, batch
        return None

    def _idle_wait(self, last_check: float) -> tuple[float, float]:
        """How long an idle thread sleeps (-1: until notified) and when its next 1 ms check falls."""
        deadlines = [d for d in (q.pending_deadline() for q in self._queues) if d is not None]
        if not deadlines:
            return -1.0, 0.0
        now = time.monotonic()
        steps = max(1, math.ceil((max(min(deadlines), now) - last_check) / _IDLE_POLL_SECONDS))
        wake = last_check + steps * _IDLE_POLL_SECONDS
        return max(0.0, wake - now), wake

    def _thread_logic(self) -> None:
        # TF's thread checks the queues, and when it finds nothing waits 1 ms and checks again: a
        # timed-out open batch is taken at this thread's first check at or after its timeout.
        # That is reproduced by sleeping straight to that check; with nothing queued at all, the
        # thread sleeps until a task arrives (TF keeps polling then, to no visible effect).
        sleeper = _Sleeper()
        last_check = time.monotonic()
        while True:
            with self._mu:
                if self._stopped:
                    return
                work = self._next_work()
                if work is None:
                    timeout, wake = self._idle_wait(last_check)
                    self._idle.append(sleeper)
                elif self._idle and any(q.has_tasks() for q in self._queues):
                    # Tasks remain (more ready batches, or an open batch whose timeout a sleeping
                    # thread does not watch): TF's idle threads would find them at their next 1 ms
                    # poll; ours sleep, so wake one to look. Nothing queued (1 caller): no wake-up.
                    self._idle.pop().lock.release()
            if work is not None:
                queue, batch = work
                queue.process(batch)
                last_check = time.monotonic()  # TF checks again at once after a batch
                continue
            if sleeper.lock.acquire(timeout=timeout):
                last_check = time.monotonic()
                continue
            with self._mu:
                notified = sleeper not in self._idle
                if notified:  # notified between the timeout and here: take the release back
                    sleeper.lock.acquire()
                else:
                    self._idle.remove(sleeper)
            last_check = time.monotonic() if notified else wake

    def stop(self) -> None:
        """Shutdown (the local server's, TF Serving has none): tasks still queued fail UNAVAILABLE, threads stop.

        Called once gRPC's grace period is over: those requests were answered or cancelled by
        then, and nothing must keep a request thread waiting for a batch that never runs.
        """
        with self._mu:
            self._stopped = True
            queues = list(self._queues)
            for sleeper in self._idle:
                sleeper.lock.release()
            self._idle.clear()
        for queue in queues:
            queue.abandon(UnavailableError("the server is shutting down"))
        for thread in self._threads:
            thread.join(timeout=10)
