"""Every bad input gets the right status and an actionable message, over raw gRPC and through the client;
the same server process keeps serving after each one.

Messages from the serving graph (unknown id, empty/oversized batch, NaN) are
the graph's own, so TF Serving returns the same; the local server adds TF
Serving's request-level checks (signature, dtype, shape, model spec).
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from tensorflow.core.framework import tensor_pb2, types_pb2

from retrieval_client import (
    InvalidRequestError,
    ModelNotFoundError,
    ResourceExhaustedError,
    RetrievalClient,
    RetryPolicy,
)
from server import harness
from server.harness import assert_still_serving
from server.harness import predict_request as req

IA, NF, FP = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION
ONE_ID = {"ids": np.array([b"sku-1"], dtype=object)}
VEC = np.ones((1, harness.DIM), np.float32)


def _ids(n: int) -> dict:
    return {"ids": np.array([f"sku-{i % harness.NUM_ITEMS}".encode() for i in range(n)], dtype=object)}


def _declared(dtype: int, dims: list[int], **values) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=dtype, **values)
    for size in dims:
        proto.tensor_shape.dim.add(size=size)
    return proto


def _filtered(request, alias: str):
    request.output_filter.append(alias)
    return request


# (case id, request, code, fragment of the message the user sees)
RAW_CASES = [
    ("unknown-id", req(inputs={"ids": np.array([b"sku-1", b"no-such-sku"], dtype=object)}), IA,
     "unknown query id(s), not in this model version:] [no-such-sku]"),
    ("unknown-id-not-utf8", req(inputs={"ids": np.array([b"\xff\xfe-sku"], dtype=object)}), IA,
     "unknown query id(s), not in this model version: b'\\xff\\xfe-sku'"),
    ("empty-batch-ids", req(inputs={"ids": np.array([], dtype=object)}), IA, "empty batch: send at least one id"),
    ("empty-batch-vectors", req("search_by_vector", {"vectors": np.zeros((0, harness.DIM), np.float32)}), IA,
     "empty batch: send at least one vector"),
    ("batch-above-max-ids", req(inputs=_ids(1025)), IA, "batch too large: at most 1024 ids per request, got] [1025]"),
    ("batch-above-max-vectors", req("search_by_vector", {"vectors": np.ones((1025, harness.DIM), np.float32)}), IA,
     "batch too large: at most 1024 vectors per request"),
    ("wrong-dtype-ids", req(inputs={"ids": np.array([1], np.int64)}), IA, "to be string but int64 is provided"),
    ("wrong-dtype-vectors", req("search_by_vector", {"vectors": VEC.astype(np.float64)}), IA, "to be float32 but float64"),
    ("wrong-rank-ids", req(inputs={"ids": np.array([[b"sku-1"]], dtype=object)}), IA, "must have shape [-1]"),
    ("wrong-rank-vectors", req("search_by_vector", {"vectors": np.ones(harness.DIM, np.float32)}), IA,
     "must have shape [-1, 16] (-1: any size), got [16]"),
    ("wrong-dim", req("search_by_vector", {"vectors": np.ones((2, 8), np.float32)}), IA, "got [2, 8]"),
    ("nan", req("search_by_vector", {"vectors": np.full((1, harness.DIM), np.nan, np.float32)}), IA,
     "'vectors' contain NaN or Inf"),
    ("inf", req("search_by_vector", {"vectors": np.concatenate([VEC, np.full((1, harness.DIM), np.inf, np.float32)])}), IA,
     "'vectors' contain NaN or Inf"),
    ("missing-input", req(), IA, "Missing but required: {ids}"),
    ("extra-input", req(inputs={**ONE_ID, "x": np.ones(1, np.float32)}), IA, "Sent extra: {x}"),
    ("unknown-output-filter", _filtered(req(inputs=ONE_ID), "nope"), IA, "output tensor alias not found in signature: nope"),
    ("declared-shape-too-large", req(inputs={"ids": _declared(types_pb2.DT_STRING, [2**40], string_val=[b"sku-1"])}), IA,
     "tensor parsing error: ids: shape [1099511627776] declares"),
    ("negative-dim", req(inputs={"ids": _declared(types_pb2.DT_STRING, [-3])}), IA, "tensor parsing error: ids: negative"),
    ("resource-dtype", req(inputs={"ids": _declared(types_pb2.DT_RESOURCE, [1])}), IA, "dtype resource cannot be sent"),
    ("bytes-not-matching-shape", req("search_by_vector", {"vectors": _declared(types_pb2.DT_FLOAT, [1, 16], tensor_content=b"abc")}),
     IA, "tensor parsing error: vectors"),
    ("unknown-signature", req("nope", ONE_ID), FP, 'Serving signature key "nope" not found.'),
    ("unknown-model", req(inputs=ONE_ID, model="nope"), NF, "Servable not found for request: Latest(nope)"),
    ("unknown-version", req(inputs=ONE_ID, version=42), NF, "Servable not found for request: Specific(scann_model, 42)"),
    ("unknown-label", req(inputs=ONE_ID, label="canary"), IA, "Unrecognized servable version label: canary"),
]


@pytest.mark.parametrize(("request_", "code", "message"), [c[1:] for c in RAW_CASES], ids=[c[0] for c in RAW_CASES])
def test_bad_request_over_raw_grpc(bad_input_server, raw, request_, code, message):
    err = harness.rpc_error(raw.predict, request_)
    assert err.code() == code and message in err.details(), (err.code(), err.details())
    assert_still_serving(bad_input_server, raw)


def test_malformed_request_bytes_are_internal_like_tf_serving(bad_input_server, raw):
    # gRPC itself rejects bytes that do not parse as a PredictRequest, before any servicer code:
    # INTERNAL in grpc-python as in TF Serving's C++ gRPC (GenericDeserialize), with no details to act on.
    for payload in (b"\xff\xff\xff\xff garbage", req(inputs=ONE_ID).SerializeToString()[:-3]):
        err = harness.rpc_error(raw.raw, harness.PREDICT, payload)
        assert err.code() == grpc.StatusCode.INTERNAL, (err.code(), err.details())
    for method in (harness.STATUS, harness.METADATA):
        assert harness.rpc_error(raw.raw, method, b"\x0a\xff").code() == grpc.StatusCode.INTERNAL
    # TF Serving's Classify/Regress/MultiInference are not offered by the local server.
    assert harness.rpc_error(raw.raw, "/tensorflow.serving.PredictionService/Classify", b"").code() == grpc.StatusCode.UNIMPLEMENTED
    assert_still_serving(bad_input_server, raw)


def test_request_above_the_max_message_size_is_resource_exhausted(bad_input_server, raw):
    big = req("search_by_vector", {"vectors": _declared(types_pb2.DT_FLOAT, [1, harness.DIM], tensor_content=b"\0" * (65 << 20))})
    err = harness.rpc_error(raw.predict, big)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "Received message larger than max" in err.details(), err.details()
    assert_still_serving(bad_input_server, raw)


def test_metadata_without_the_signature_def_field(bad_input_server, raw):
    err = harness.rpc_error(raw.metadata, fields=())
    assert err.code() == IA and "signature_def" in err.details()
    assert_still_serving(bad_input_server, raw)


FAST = RetryPolicy(max_attempts=2, initial_backoff_s=0.01, max_backoff_s=0.05)
# Through the client: (case id, client kwargs, call, exception, message fragment). Errors of the
# client's own checks (ValueError/TypeError) are raised before anything is sent.
CLIENT_CASES = [
    ("unknown-id", {}, lambda c: c.search(["sku-1", "no-such-sku"]), InvalidRequestError, "[no-such-sku]"),
    ("unknown-id-not-utf8", {}, lambda c: c.search([b"\xff-sku"]), InvalidRequestError, "b'\\xff-sku'"),
    ("batch-above-max", {}, lambda c: c.search([f"sku-{i}" for i in range(1025)]), InvalidRequestError,
     "at most 1024 ids per request"),
    ("batch-above-max-vectors", {}, lambda c: c.search_by_vector(np.ones((1025, harness.DIM))), InvalidRequestError,
     "at most 1024 vectors per request"),
    ("wrong-dtype", {}, lambda c: c.search([True]), TypeError, "is a bool"),
    ("wrong-rank", {}, lambda c: c.search_by_vector(np.ones((1, 2, harness.DIM))), ValueError, "[batch, dim]"),
    ("wrong-dim", {}, lambda c: c.search_by_vector(np.ones((1, 8))), ValueError, "takes 16-dimensional"),
    ("nan", {}, lambda c: c.search_by_vector(np.full(harness.DIM, np.nan)), ValueError, "NaN"),
    ("unknown-model", {"model": "nope"}, lambda c: c.search("sku-1"), ModelNotFoundError, "Latest(nope)"),
    ("unknown-version", {"version": 42}, lambda c: c.search("sku-1"), ModelNotFoundError, "Specific(scann_model, 42)"),
    ("unknown-label", {"version_label": "canary"}, lambda c: c.search("sku-1"), InvalidRequestError,
     "Unrecognized servable version label: canary"),
    ("above-max-message-size", {"max_message_bytes": 128 << 20}, lambda c: c.search(["x" * (65 << 20)]),
     ResourceExhaustedError, "larger than max"),
]


@pytest.mark.parametrize(("kwargs", "call", "exception", "message"), [c[1:] for c in CLIENT_CASES],
                         ids=[c[0] for c in CLIENT_CASES])
def test_bad_request_through_the_client(bad_input_server, raw, kwargs, call, exception, message):
    with RetrievalClient(bad_input_server.target, **{"model": harness.MODEL, "retry": FAST, **kwargs}) as client:
        with pytest.raises(exception) as info:
            call(client)
    assert message in str(info.value), str(info.value)
    assert_still_serving(bad_input_server, raw)


def test_empty_batch_through_the_client_sends_nothing(bad_input_server):
    with RetrievalClient(bad_input_server.target, harness.MODEL) as client:
        assert client.search([]) == [] and client.search_by_vector(np.zeros((0, harness.DIM))) == []
