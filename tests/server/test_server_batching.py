"""The local server with --enable_batching behaves as TF Serving 2.11's BatchingSession.

Two servers:
- `locked_server`: a batching file whose queues close a batch only when it is full (a 60 s
  timeout, 4 rows per execution batch), so which requests merge is decided by rows, not by
  timing: 4 concurrent one-row requests are one batch, always;
- the session's `items_server` (the image's batching file, as production) for the concurrent
  mix of unknown and valid ids.
Expected behaviour is read from tensorflow_serving/batching/batching_session.cc and TF 2.11's
shared_batch_scheduler.h (see model_builder/serve/batching.py and scheduler.py), and matches
what TF Serving's own BatchingSession did in the harness (tools/tfs_batching_harness).
"""

from __future__ import annotations

import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import tensorflow as tf

import model_builder.scann_import  # noqa: F401  (Scann ops before loading)
import support
from model_builder.compat.tfs_batching import BatchingParameters
from model_builder.serve.batching import RunCounter
from support import harness

LOCKED = """
max_batch_size { value: 16 }
batch_timeout_micros { value: 60000000 }
max_enqueued_batches { value: 4 }
num_batch_threads { value: 1 }
enable_large_batch_splitting { value: true }
max_execution_batch_size { value: 4 }
"""
MONITORING = 'prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }\n'


def _runs(server: support.RunningServer) -> int:
    """TF Serving's wrapped_run_count: Session::Run calls made for merged batches."""
    with urllib.request.urlopen(f"{server.rest}/monitoring/prometheus/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return next(int(line.split()[-1]) for line in text.splitlines() if line.startswith(RunCounter.NAME + " "))


@pytest.fixture(scope="module")
def locked_server(items_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("locked-batching")
    (folder / "batching.txt").write_text(LOCKED)
    (folder / "monitoring.txt").write_text(MONITORING)
    # Warmup off: a lone one-row warmup record would wait the whole 60 s timeout.
    with support.local_server(
        items_model.parent.parent,
        harness.MODEL,
        "--batching_parameters_file",
        str(folder / "batching.txt"),
        "--monitoring_config_file",
        str(folder / "monitoring.txt"),
        "--enable_model_warmup=false",
        log_dir=folder,
    ) as server:
        server.wait_available(1)
        yield server


@pytest.fixture(scope="module")
def direct(items_model):
    """The same version answered in-process, one request at a time (no batching)."""
    loaded = tf.saved_model.load(str(items_model))

    def answer(signature: str, **inputs) -> dict:
        return {
            k: v.numpy()
            for k, v in loaded.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()}).items()
        }

    return answer


def _concurrently(target: str, requests: list) -> list:
    """Sends the requests at once (one channel each); returns responses or RpcErrors in order."""

    def send(request):
        raw = harness.Raw(target)
        try:
            return raw.predict(request, timeout=120)
        except grpc.RpcError as err:
            return err
        finally:
            raw.close()

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(send, requests))


def _ids(*values) -> np.ndarray:
    return np.array([v.encode() for v in values], dtype=object)


def test_a_merged_batch_answers_each_valid_row_as_alone_and_each_unknown_id_only_to_its_sender(locked_server, direct):
    before = _runs(locked_server)
    batch = [_ids("sku-3"), _ids("no-such-sku-a"), _ids("sku-40"), _ids("no-such-sku-b")]
    responses = _concurrently(locked_server.target, [harness.predict_request(inputs={"ids": ids}) for ids in batch])
    assert _runs(locked_server) == before + 1, "the 4 one-row requests were not merged into one batch"
    for ids, response in zip(batch, responses):
        out = harness.outputs(response)
        alone = direct("serving_default", ids=ids)
        assert out["found"].tolist() == alone["found"].tolist() == [not ids[0].startswith(b"no-such")]
        assert out["ids"].tolist() == alone["ids"].tolist()
        np.testing.assert_allclose(out["scores"], alone["scores"], rtol=1e-5, atol=1e-6)


def test_every_request_of_a_merged_batch_gets_the_batchs_status(locked_server):
    """ProcessBatch gives one status to all: a request that cannot be merged fails its batch-mates too."""
    good = np.ones((1, harness.DIM), np.float32)
    for odd, code, message in (
        (
            np.ones((1, harness.DIM - 1), np.float32),
            grpc.StatusCode.FAILED_PRECONDITION,
            "Tensors with name 'search_by_vector_vectors:0' from different tasks have different shapes and padding is turned off",
        ),
        (
            np.ones((1, harness.DIM), np.float64),
            grpc.StatusCode.INTERNAL,
            "Tensor concat operation failed: INVALID_ARGUMENT: Cannot concatenate tensors that have different data types.",
        ),
    ):
        requests = [harness.predict_request("search_by_vector", {"vectors": v}) for v in (good, good, odd, good)]
        errors = _concurrently(locked_server.target, requests)
        assert all(isinstance(e, grpc.RpcError) for e in errors), errors
        assert {(e.code(), message in e.details()) for e in errors} == {(code, True)}, [e.details() for e in errors]


def test_large_requests_are_split_across_batches_and_reassembled(locked_server, direct):
    before = _runs(locked_server)
    ten = _ids(*[f"sku-{i * 7}" for i in range(9)], "no-such-sku")
    two = _ids("sku-11", "sku-12")
    responses = _concurrently(
        locked_server.target, [harness.predict_request(inputs={"ids": ids}) for ids in (ten, two)]
    )
    assert _runs(locked_server) == before + 3, "12 rows in execution batches of 4"
    for ids, response in zip((ten, two), responses):
        out, alone = harness.outputs(response), direct("serving_default", ids=ids)
        assert out["ids"].tolist() == alone["ids"].tolist() and out["found"].tolist() == alone["found"].tolist()


def test_queue_capacity_and_refusals_follow_tfs_formula(locked_server):
    """Capacity = (max_enqueued_batches - enqueued) x max_execution_batch_size + free slots of the open batch."""
    raw = harness.Raw(locked_server.target)
    too_big = harness.rpc_error(raw.predict, harness.ids_request([f"sku-{i}" for i in range(17)]))
    assert (too_big.code(), too_big.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Task size 17 is larger than maximum input batch size 16",
    )
    # An idle queue holds 4 x 4 = 16 rows: a request of max_batch_size fits.
    assert harness.outputs(raw.predict(harness.ids_request([f"sku-{i}" for i in range(16)])))["ids"].shape == (16, 10)
    # 3 rows wait in the open batch (its timeout is 60 s); capacity is now 3 x 4 + 1 = 13 rows.
    pool = ThreadPoolExecutor(1)
    waiting = pool.submit(raw.predict, harness.ids_request(["sku-1", "sku-2", "sku-3"]), timeout=120)
    time.sleep(1.0)  # ordering only: the 3-row request is queued before the next ones are sent
    assert not waiting.done()
    full = harness.rpc_error(raw.predict, harness.ids_request([f"sku-{i}" for i in range(14)]))
    assert (full.code(), full.details()) == (
        grpc.StatusCode.UNAVAILABLE,
        "The batch scheduling queue to which this task was submitted is full",
    )
    # 13 rows fit, fill the open batch and three more: every batch is full, both requests are answered.
    assert harness.outputs(raw.predict(harness.ids_request([f"sku-{i}" for i in range(13)])))["ids"].shape == (13, 10)
    assert harness.outputs(waiting.result(timeout=60))["ids"].shape == (3, 10)
    pool.shutdown()
    raw.close()


def test_a_filtered_run_is_batched_in_a_queue_of_its_own(locked_server):
    """An output_filter makes a tensor set no signature declares: 2.11's default scheduler creator gives it a queue."""
    before = _runs(locked_server)
    requests = []
    for i in range(4):
        request = harness.ids_request([f"sku-{i}"])
        request.output_filter.append("ids")
        requests.append(request)
    responses = _concurrently(locked_server.target, requests)
    assert all(set(r.outputs) == {"ids"} for r in responses)
    assert _runs(locked_server) == before + 1, "filtered requests are batched with each other, not run one by one"


def test_concurrent_unknown_and_valid_ids_on_the_image_batching_file(items_server, direct):
    """16 clients; 1 id in 4 unknown, some requests mixing both: every answer is the request's own, as alone."""
    rng = np.random.default_rng(7)
    requests = []
    for n in range(400):
        size = 1 + n % 3
        ids = [
            f"no-such-sku-{n}-{j}" if rng.random() < 0.25 else f"sku-{rng.integers(harness.NUM_ITEMS)}"
            for j in range(size)
        ]
        requests.append(_ids(*ids))
    expected = [direct("serving_default", ids=ids) for ids in requests]
    failures: list[str] = []
    lock = threading.Lock()

    def client(part: list[int]) -> None:
        raw = harness.Raw(items_server.target)
        for i in part:
            try:
                out = harness.outputs(raw.predict(harness.predict_request(inputs={"ids": requests[i]}), timeout=60))
                ok = (
                    out["ids"].tolist() == expected[i]["ids"].tolist()
                    and out["found"].tolist() == expected[i]["found"].tolist()
                    and np.allclose(out["scores"], expected[i]["scores"], rtol=1e-5, atol=1e-6)
                )
                problem = (
                    None
                    if ok
                    else f"request {i} {requests[i].tolist()}: got {out['ids'].tolist()} {out['found'].tolist()}"
                )
            except grpc.RpcError as err:
                problem = f"request {i}: {err.code().name} {err.details()}"
            if problem:
                with lock:
                    failures.append(problem)
        raw.close()

    before = _runs(items_server)
    threads = [threading.Thread(target=client, args=(list(range(t, len(requests), 16)),)) for t in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    runs = _runs(items_server) - before
    unknown = sum(int((~e["found"]).sum()) for e in expected)
    print(f"{len(requests)} requests ({unknown} unknown ids) in {runs} merged Session::Run calls")
    assert failures == [], failures[:5]
    assert runs < len(requests), "no request was merged with another: batching did not happen"


def test_1024_rows_succeed_on_an_idle_image_batching_server_and_1025_are_refused_for_good(items_server):
    """The image's file: an idle queue holds 128 x 8 = 1024 rows (at 100 x 8, 801-1024 rows were always UNAVAILABLE)."""
    from retrieval_client import RetrievalClient, RetryPolicy

    options = BatchingParameters.from_file(support.IMAGE_BATCHING_FILE).queue_options()
    assert (options.input_batch_size_limit, options.idle_capacity()) == (1024, 1024)
    raw = harness.Raw(items_server.target)
    ids = [f"sku-{i % harness.NUM_ITEMS}" for i in range(1025)]
    out = harness.outputs(raw.predict(harness.ids_request(ids[:1024]), timeout=120))
    assert out["ids"].shape == (1024, 10) and out["found"].all()
    refused = harness.rpc_error(raw.predict, harness.ids_request(ids), timeout=120)
    assert (refused.code(), refused.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Task size 1025 is larger than maximum input batch size 1024",
    )
    raw.close()
    # Through the client: the refusal is never retried as is; the client learns the limit from it
    # and splits the request (one INVALID_ARGUMENT, then every row answered).
    before = _invalid_argument_count(items_server)
    with RetrievalClient(items_server.target, harness.MODEL, retry=RetryPolicy(max_attempts=5)) as client:
        result = client.search(ids)
    assert len(result) == 1025 and all(len(row.ids) == 10 for row in result)
    assert _invalid_argument_count(items_server) == before + 1, "the client resent a request that can never succeed"


def _invalid_argument_count(server: support.RunningServer) -> int:
    with urllib.request.urlopen(f"{server.rest}/monitoring/prometheus/metrics", timeout=10) as resp:
        text = resp.read().decode()
    prefix = (
        f':tensorflow:serving:request_count{{API="Predict",model_name="{harness.MODEL}",status="INVALID_ARGUMENT"}} '
    )
    return next((int(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix)), 0)
