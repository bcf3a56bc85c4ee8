"""The local server's batch scheduler in-process: the hand-off keeps TF Serving 2.11's timing rules.

model_builder/serve/scheduler.py wakes an idle batch thread through a plain lock and a caller
waits on one (not threading.Condition / Event), to make the hand-off at 1 caller as cheap as
TF's C++ one (benchmarks/README.md, "The local server reproduces the shape"). These tests pin
what must not change with it, read from TF 2.11's shared_batch_scheduler.h (Queue::Schedule,
ScheduleBatchWithEagerSplit, ThreadLogic) and tensorflow_serving 2.11.0's
batching/batching_session.cc: timeout 0 hands a lone request to an idle thread at once; a
timeout > 0 is waited; requests arriving while every batch thread is busy join the open batch up
to max_execution_batch_size; a full queue refuses with UNAVAILABLE; a merged batch has one status.
A real TF session (x * 2) runs every batch; the test only gates when its batch thread may start.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tensorflow as tf

from model_builder.compat.tfs_batching import BatchingParameters
from model_builder.serve.batching import BatchingSession, RunCounter, TensorSignature
from model_builder.serve.errors import InvalidInputError, UnavailableError
from model_builder.serve.scheduler import SharedBatchScheduler
from model_builder.serve.session import SessionRunner

X, Y, Z = "x:0", "y:0", "z:0"


class Doubler:
    """A TF session computing y = 2x, run through SessionRunner; records each batch, can hold batches back."""

    def __init__(self) -> None:
        graph = tf.Graph()
        with graph.as_default():
            x = tf.compat.v1.placeholder(tf.float32, [None, 2], name="x")
            tf.identity(x * 2, name="y")
            tf.identity(x * 3, name="z")  # a second signature (x -> z): a second queue
        self.session = tf.compat.v1.Session(graph=graph)
        self.runner = SessionRunner(self.session, graph)
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.batches: list[int] = []
        self.threads: set[str] = set()
        self.scheduler: SharedBatchScheduler | None = None  # the scheduler running its batches

    def __call__(self, feeds, fetches):
        self.started.set()
        self.gate.wait(30)
        rows = feeds[0][1]
        self.batches.append(len(rows))
        self.threads.add(threading.current_thread().name)
        if (rows < 0).any():  # a bad row fails its whole batch, as a failing Session::Run does
            raise InvalidInputError("negative input")
        return self.runner(feeds, fetches)


@pytest.fixture
def make_session():
    made: list[tuple[SharedBatchScheduler, Doubler]] = []

    def make(threads: int, **params) -> tuple[BatchingSession, Doubler, RunCounter]:
        doubler, counter = Doubler(), RunCounter()
        params = BatchingParameters(num_batch_threads=threads, enable_large_batch_splitting=True, **params)
        doubler.scheduler = SharedBatchScheduler(threads)
        made.append((doubler.scheduler, doubler))
        signatures = [TensorSignature.of([X], [Y]), TensorSignature.of([X], [Z])]
        session = BatchingSession(params, doubler.scheduler, doubler, signatures, counter)
        return session, doubler, counter

    yield make
    for scheduler, doubler in made:
        doubler.gate.set()
        scheduler.stop()
        doubler.session.close()


def _row(value: float, rows: int = 1) -> list:
    return [(X, np.full((rows, 2), value, np.float32))]


def _run(session: BatchingSession, feeds) -> np.ndarray | Exception:
    try:
        return session.run(feeds, [Y])[0]
    except Exception as err:  # the test compares statuses
        return err


def test_timeout_0_hands_each_lone_request_to_an_idle_batch_thread_at_once(make_session):
    session, doubler, counter = make_session(2, max_batch_size=64, batch_timeout_micros=0, max_execution_batch_size=8)
    took, outs = [], []

    def caller() -> None:
        for i in range(200):
            started = time.perf_counter()
            outs.append(session.run(_row(i), [Y])[0])
            took.append(time.perf_counter() - started)

    thread = threading.Thread(target=caller, daemon=True)  # a lost wake-up would hang it, not the test
    thread.start()
    thread.join(30)
    assert len(outs) == 200, f"{len(outs)} of 200 lone requests answered in 30 s"
    for i, out in enumerate(outs):
        np.testing.assert_array_equal(out, np.full((1, 2), 2 * i))
    assert counter.value == 200 and doubler.batches == [1] * 200
    assert all(name.startswith("batch_threads_") for name in doubler.threads)
    # No 1 ms idle poll on this path: TF's Schedule() notifies as soon as the batch is schedulable.
    assert np.median(took) < 1e-3, f"lone requests took {np.median(took) * 1e3:.2f} ms at p50"


def test_a_timeout_above_0_is_waited_by_a_lone_request(make_session):
    session, doubler, _ = make_session(2, max_batch_size=64, batch_timeout_micros=30_000, max_execution_batch_size=8)
    for i in range(3):
        started = time.perf_counter()
        np.testing.assert_array_equal(session.run(_row(i), [Y])[0], np.full((1, 2), 2 * i))
        took = time.perf_counter() - started
        # The timeout, then the idle thread's next 1 ms check (ThreadLogic's WaitForMilliseconds).
        assert 0.030 <= took < 0.5, took
    assert doubler.batches == [1, 1, 1]


def test_a_timed_out_batch_is_taken_by_the_idle_thread_while_the_other_is_busy(make_session):
    # Queue y's lone task times out first and its batch holds one thread (gated); queue z's task,
    # 15 ms later, must still run at its own timeout on the other thread -- TF's idle thread finds
    # it at its next 1 ms poll -- not once the first batch is done (~200 ms later).
    session, doubler, _ = make_session(2, max_batch_size=64, batch_timeout_micros=30_000, max_execution_batch_size=8)
    doubler.gate.clear()
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(_run, session, _row(1))
        time.sleep(0.015)
        started = time.perf_counter()
        second = pool.submit(lambda: session.run(_row(2), [Z])[0])
        assert doubler.started.wait(10)
        doubler.started.clear()
        assert doubler.started.wait(10), "the second queue's batch did not start while the first was held"
        took = time.perf_counter() - started
        threading.Timer(0.2, doubler.gate.set).start()
        np.testing.assert_array_equal(second.result(30), np.full((1, 2), 6))
        np.testing.assert_array_equal(first.result(30), np.full((1, 2), 2))
    assert 0.030 <= took < 0.15, took


def _while_busy(session: BatchingSession, doubler: Doubler, feeds: list) -> list:
    """Holds the one batch thread in a first request's batch, queues `feeds`, then lets it go."""
    doubler.gate.clear()
    with ThreadPoolExecutor(len(feeds) + 1) as pool:
        first = pool.submit(_run, session, _row(100))
        assert doubler.started.wait(10)
        waiting = []
        for feed in feeds:  # one at a time, so they join the batches in this order
            waiting.append(pool.submit(_run, session, feed))
            time.sleep(0.02)
        doubler.gate.set()
        return [first.result(30), *(f.result(30) for f in waiting)]


def test_requests_arriving_while_the_batch_threads_are_busy_join_the_open_batch(make_session):
    session, doubler, counter = make_session(1, max_batch_size=64, batch_timeout_micros=0, max_execution_batch_size=4)
    results = _while_busy(session, doubler, [_row(i) for i in range(6)])
    assert doubler.batches == [1, 4, 2] and counter.value == 3
    for i, out in enumerate(results[1:]):
        np.testing.assert_array_equal(out, np.full((1, 2), 2 * i))


def test_a_full_queue_refuses_unavailable_and_a_merged_batch_shares_one_status(make_session):
    session, doubler, _ = make_session(
        1, max_batch_size=64, batch_timeout_micros=0, max_execution_batch_size=4, max_enqueued_batches=2
    )
    # Busy thread: the queue holds (2 - 1) x 4 + 4 = 8 rows (SchedulingCapacityInternal); the 9th is refused.
    feeds = [_row(i) for i in range(3)] + [_row(-1)] + [_row(i) for i in range(4, 8)] + [_row(9)]
    results = _while_busy(session, doubler, feeds)
    refused = results[9]
    assert isinstance(refused, UnavailableError) and "is full" in str(refused)
    # Rows 0-3 ran as one batch with a bad row: every task of it gets that batch's error.
    assert all(isinstance(r, InvalidInputError) for r in results[1:5])
    for i, out in zip(range(4, 8), results[5:9]):
        np.testing.assert_array_equal(out, np.full((1, 2), 2 * i))
    assert doubler.batches == [1, 4, 4]


def test_a_large_request_is_split_into_execution_batches_and_reassembled(make_session):
    session, doubler, counter = make_session(2, max_batch_size=64, batch_timeout_micros=0, max_execution_batch_size=4)
    rows = np.arange(20, dtype=np.float32).reshape(10, 2)
    np.testing.assert_array_equal(session.run([(X, rows)], [Y])[0], rows * 2)
    assert sorted(doubler.batches) == [2, 4, 4] and counter.value == 3


def test_stop_fails_what_is_still_queued_unavailable(make_session):
    session, doubler, _ = make_session(1, max_batch_size=64, batch_timeout_micros=0, max_execution_batch_size=4)
    doubler.gate.clear()
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(_run, session, _row(1))
        assert doubler.started.wait(10)
        queued = pool.submit(_run, session, _row(2))
        time.sleep(0.05)
        stopper = threading.Thread(target=doubler.scheduler.stop)
        stopper.start()
        assert isinstance(queued.result(10), UnavailableError)
        doubler.gate.set()
        stopper.join(10)
        np.testing.assert_array_equal(first.result(10), np.full((1, 2), 2))
