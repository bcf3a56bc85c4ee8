"""The local server against TF Serving's contract: version policy, status, error codes, metadata, metrics, labels.

Codes and messages are TF Serving's (servables/tensorflow/predict_util.cc,
model_servers/server_core.cc, get_model_status_impl.cc): unknown model or
version NOT_FOUND, unknown label INVALID_ARGUMENT, unknown signature
FAILED_PRECONDITION, bad inputs INVALID_ARGUMENT.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest

import support
from support import harness
from support.harness import rpc_error

NOT_FOUND, INVALID, PRECONDITION = (
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
)


def _rest(server: support.RunningServer, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(server.rest + path, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except urllib.error.URLError:
        return 0, ""  # not listening (yet)


def _slow_warmup(version_dir, records: int = 120) -> None:
    """Replaces a version's warmup file with many batch-512 requests, so a load lasts long enough to be seen."""
    from tensorflow_serving.apis import prediction_log_pb2

    from model_builder.export import warmup

    request = harness.ids_request([f"sku-{i}" for i in range(512)])
    log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    warmup.write(version_dir, [log] * records)


def test_ports_open_only_after_the_first_load_and_only_the_highest_version_loads(tmp_path, items_model, items_v2_model):
    """model_servers/server.cc BuildAndStart: gRPC and REST start after ServerCore::Create, i.e. after the first load."""
    model_dir = tmp_path / "models" / harness.MODEL
    harness.publish_copy(items_model, model_dir, 1)
    staged = tmp_path / "staged"
    harness.publish_copy(items_v2_model, staged, 2)
    _slow_warmup(staged / "2")
    harness.publish_copy(staged / "2", model_dir, 2)
    (model_dir / "not-a-version").mkdir()  # ignored, like TF Serving
    with support.local_server(tmp_path / "models", harness.MODEL, log_dir=tmp_path) as server:
        raw = harness.Raw(server.target, options=harness.FAST_RECONNECT)
        refused, deadline = 0, time.monotonic() + 300
        while "AVAILABLE" not in server.log():
            assert server.proc.poll() is None and time.monotonic() < deadline, server.log()[-3000:]
            if "loading scann_model" in server.log():
                # While the first version loads, nothing listens: connections are refused.
                assert _rest(server, f"/v1/models/{harness.MODEL}") == (0, "")
                assert rpc_error(raw.states, timeout=2).code() == grpc.StatusCode.UNAVAILABLE
                refused += 1
            time.sleep(0.05)
        assert refused > 0, "the load finished before it could be observed"
        server.wait_available(2)
        raw.close()
        raw = harness.Raw(server.target)  # the old channel is backing off from its refused connections
        # TF Serving's default policy (latest, 1 version): version 1 is never loaded.
        assert raw.states() == {2: "AVAILABLE"}
        response = raw.predict(harness.ids_request(["sku-1"]))
        assert response.model_spec.version.value == 2 and harness.outputs(response)["ids"].shape == (1, 5)
        raw.close()


def test_status_over_grpc_and_rest(items_server, raw):
    assert raw.states() == {1: "AVAILABLE"}
    [entry] = raw.status().model_version_status
    assert entry.status.error_code == 0 and entry.status.error_message == ""
    assert raw.states(version=1) == {1: "AVAILABLE"} and raw.states(label="stable") == {1: "AVAILABLE"}
    code, body = _rest(items_server, f"/v1/models/{harness.MODEL}")
    assert code == 200 and json.loads(body) == {
        "model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    assert _rest(items_server, f"/v1/models/{harness.MODEL}/versions/1")[0] == 200
    assert (
        json.loads(_rest(items_server, f"/v1/models/{harness.MODEL}/labels/stable")[1])["model_version_status"][0][
            "version"
        ]
        == "1"
    )


@pytest.mark.parametrize(
    ("spec", "code", "message", "rest_path", "rest_code"),
    [
        ({"model": "nope"}, NOT_FOUND, "Could not find any versions of model nope", "/v1/models/nope", 404),
        (
            {"version": 9},
            NOT_FOUND,
            "Could not find version 9 of model scann_model",
            "/v1/models/scann_model/versions/9",
            404,
        ),
        (
            {"label": "nope"},
            INVALID,
            "Unrecognized servable version label: nope",
            "/v1/models/scann_model/labels/nope",
            400,
        ),
    ],
    ids=["unknown-model", "unknown-version", "unknown-label"],
)
def test_status_errors(items_server, raw, spec, code, message, rest_path, rest_code):
    err = rpc_error(raw.status, **spec)
    assert (err.code(), err.details()) == (code, message)
    status, body = _rest(items_server, rest_path)
    assert status == rest_code and message in json.loads(body)["error"]


@pytest.mark.parametrize(
    ("request_kwargs", "code", "message"),
    [
        ({"model": "nope"}, NOT_FOUND, "Servable not found for request: Latest(nope)"),
        ({"version": 9}, NOT_FOUND, "Servable not found for request: Specific(scann_model, 9)"),
        ({"label": "nope"}, INVALID, "Unrecognized servable version label: nope"),
        ({"label": "future"}, NOT_FOUND, "Servable not found for request: Specific(scann_model, 7)"),
        ({"signature": "nope"}, PRECONDITION, 'Serving signature key "nope" not found.'),
    ],
    ids=["unknown-model", "unknown-version", "unknown-label", "label-of-unloaded-version", "unknown-signature"],
)
def test_model_spec_errors_use_tf_servings_codes(raw, request_kwargs, code, message):
    signature = request_kwargs.pop("signature", "serving_default")
    ids = np.array([b"sku-1"], dtype=object)
    err = rpc_error(raw.predict, harness.predict_request(signature, {"ids": ids}, **request_kwargs))
    assert (err.code(), err.details()) == (code, message)


@pytest.mark.parametrize(
    ("signature", "inputs", "message"),
    [
        # TF Serving checks no dtype or shape before Session::Run (predict_util.cc): the session checks the dtype
        # (DirectSession's call frame, TF 2.11's words), the graph the shape (EnsureShape).
        (
            "serving_default",
            {"ids": np.array([1, 2], dtype=np.int64)},
            "Expects arg[0] to be string but int64 is provided",
        ),
        (
            "serving_default",
            {"ids": np.array([[b"sku-1"]], dtype=object)},
            "[1,1] is not compatible with expected shape [?]",
        ),
        (
            "search_by_vector",
            {"vectors": np.ones((2, 16), np.float64)},
            "Expects arg[0] to be float but double is provided",
        ),
        # 16 rows to the batcher, split into execution batches of 8 (the image's file), each refused by the graph.
        ("search_by_vector", {"vectors": np.ones(16, np.float32)}, "[8] is not compatible with expected shape [?,16]"),
        (
            "search_by_vector",
            {"vectors": np.ones((1, 15), np.float32)},
            "[1,15] is not compatible with expected shape [?,16]",
        ),
        (
            "serving_default",
            {"vectors": np.ones((1, 16), np.float32)},
            "input tensor alias not found in signature: vectors. Inputs expected to be in the set {ids}.",
        ),
    ],
    ids=["dtype", "rank-ids", "dtype-vectors", "rank-vectors", "dim", "wrong-input-name"],
)
def test_wrong_dtype_rank_dim_are_invalid_argument(raw, signature, inputs, message):
    err = rpc_error(raw.predict, harness.predict_request(signature, inputs))
    assert err.code() == INVALID and message in err.details(), err.details()


def test_metadata_lists_the_signatures(raw):
    from tensorflow_serving.apis import get_model_metadata_pb2

    response = raw.metadata()
    assert response.model_spec.name == harness.MODEL and response.model_spec.version.value == 1
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    defs = signatures.signature_def
    assert set(defs) == {"serving_default", "search_by_vector", "examples"}

    def shape(info):
        return [d.size for d in info.tensor_shape.dim]

    assert (defs["serving_default"].inputs["ids"].dtype, shape(defs["serving_default"].inputs["ids"])) == (
        7,
        [-1],
    )  # DT_STRING
    assert (
        shape(defs["search_by_vector"].inputs["vectors"]) == [-1, 16]
        and defs["search_by_vector"].inputs["vectors"].dtype == 1
    )
    assert shape(defs["serving_default"].outputs["scores"]) == [-1, 10]
    assert rpc_error(raw.metadata, fields=()).code() == INVALID
    assert rpc_error(raw.metadata, model="nope").code() == NOT_FOUND
    assert rpc_error(raw.metadata, version=9).code() == NOT_FOUND


def _count(metrics: str, api: str, status: str) -> int:
    prefix = f':tensorflow:serving:request_count{{API="{api}",model_name="{harness.MODEL}",status="{status}"}} '
    return next((int(line[len(prefix) :]) for line in metrics.splitlines() if line.startswith(prefix)), 0)


def test_prometheus_metrics_with_monitoring_config(items_server, raw):
    path = "/monitoring/prometheus/metrics"
    before = _rest(items_server, path)[1]
    raw.predict(harness.ids_request(["sku-1", "sku-2"]))
    raw.predict(harness.ids_request(["no-such-sku"]))  # answered: found = false
    rpc_error(raw.predict, harness.predict_request(inputs={"ids": np.array([1], np.int64)}))
    code, after = _rest(items_server, path)
    assert code == 200
    assert _count(after, "Predict", "OK") == _count(before, "Predict", "OK") + 2
    assert _count(after, "Predict", "INVALID_ARGUMENT") == _count(before, "Predict", "INVALID_ARGUMENT") + 1
    assert "# TYPE :tensorflow:serving:request_latency histogram" in after
    assert (
        f':tensorflow:serving:request_latency_bucket{{API="Predict",model_name="{harness.MODEL}",le="+Inf"}}' in after
    )
    assert _rest(items_server, "/metrics")[0] == 404
    # TF Serving's batching session counts its Session::Run calls (batching_session.cc wrapped_run_count).
    assert "# TYPE :tensorflow:serving:batching_session:wrapped_run_count counter" in after


def test_metric_labels_from_requests_are_bounded_and_escaped_safe(items_server, raw):
    # Label values come from requests: every unknown model name shares one series, so a client cannot grow
    # the metrics without bound or inject text into the exposition format.
    path = "/monitoring/prometheus/metrics"
    before = _rest(items_server, path)[1].count("\n")
    for i in range(50):
        rpc_error(raw.predict, harness.ids_request(["sku-1"], model=f'evil-{i}"}} 1\n# x'))
    after = _rest(items_server, path)[1]
    assert "evil" not in after
    assert after.count("\n") <= before + 40  # at most one new series (count + 17 buckets + sum + count) per API/status
    assert ':tensorflow:serving:request_count{API="Predict",model_name="unknown",status="NOT_FOUND"}' in after
    sample = re.compile(r'^:tensorflow:serving:[a-z_:]+(\{[A-Za-z_]+="[^"\n]*"(,[A-Za-z_]+="[^"\n]*")*\})? [0-9.e+]+$')
    bad = [line for line in after.splitlines() if line and not line.startswith("# ") and not sample.match(line)]
    assert bad == [], bad[:3]


def test_version_labels(items_server):
    from retrieval_client import ModelNotFoundError, RetrievalClient

    with RetrievalClient(items_server.target, harness.MODEL, version_label="stable") as client:
        assert len(client.search("sku-5")[0].ids) == 10
        assert [(s.version, s.state) for s in client.status()] == [(1, "AVAILABLE")]
    with (
        RetrievalClient(items_server.target, harness.MODEL, version_label="future") as client,
        pytest.raises(ModelNotFoundError, match=r"Specific\(scann_model, 7\)"),
    ):
        client.search("sku-5")
