"""Every bad input gets the right status and an actionable message, over raw gRPC and through the client;
the same server process keeps serving after each one.

The server runs with batching on and the image's batching file, as production does. What is
checked where follows TF Serving 2.11 (predict_util.cc): the request level (signature, input
aliases, tensor parsing, output filter), then the batcher (no input / scalar / unequal batch
sizes, task above max_batch_size, full queue), then the session (dtype) and the graph (shape).
A row that cannot be answered (unknown id, NaN/Inf) is not an error at all: found = false.
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
from support import harness
from support.harness import assert_still_serving
from support.harness import predict_request as req

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
    ("batch-above-max-ids", req(inputs=_ids(1025)), IA, "Task size 1025 is larger than maximum input batch size 1024"),
    (
        "batch-above-max-vectors",
        req("search_by_vector", {"vectors": np.ones((1025, harness.DIM), np.float32)}),
        IA,
        "Task size 1025 is larger than maximum input batch size 1024",
    ),
    (
        "wrong-dtype-ids",
        req(inputs={"ids": np.array([1], np.int64)}),
        IA,
        "Expects arg[0] to be string but int64 is provided",
    ),
    (
        "wrong-dtype-vectors",
        req("search_by_vector", {"vectors": VEC.astype(np.float64)}),
        IA,
        "Expects arg[0] to be float but double is provided",
    ),
    (
        "wrong-rank-ids",
        req(inputs={"ids": np.array([[b"sku-1"]], dtype=object)}),
        IA,
        "[1,1] is not compatible with expected shape [?]",
    ),
    (
        "scalar-ids",
        req(inputs={"ids": np.array(b"sku-1", dtype=object)}),
        IA,
        "Batching Run() input tensors must have at least one dimension",
    ),
    # A [16] vector is 16 rows to the batcher: split into execution batches of 8 (as TF Serving's harness showed).
    (
        "wrong-rank-vectors",
        req("search_by_vector", {"vectors": np.ones(harness.DIM, np.float32)}),
        IA,
        "[8] is not compatible with expected shape [?,16]",
    ),
    (
        "wrong-dim",
        req("search_by_vector", {"vectors": np.ones((2, 8), np.float32)}),
        IA,
        "[2,8] is not compatible with expected shape [?,16]",
    ),
    ("missing-input", req(), IA, "Missing but required: {ids}"),
    ("extra-input", req(inputs={**ONE_ID, "x": np.ones(1, np.float32)}), IA, "Sent extra: {x}"),
    (
        "wrong-input-name",
        req(inputs={"x": np.ones(1, np.float32)}),
        IA,
        "input tensor alias not found in signature: x. Inputs expected to be in the set {ids}.",
    ),
    (
        "unknown-output-filter",
        _filtered(req(inputs=ONE_ID), "nope"),
        IA,
        "output tensor alias not found in signature: nope",
    ),
    (
        "duplicate-output-filter",
        _filtered(_filtered(req(inputs=ONE_ID), "ids"), "ids"),
        IA,
        "duplicate output tensor alias: ids",
    ),
    (
        "declared-shape-too-large",
        req(inputs={"ids": _declared(types_pb2.DT_STRING, [2**40], string_val=[b"sku-1"])}),
        IA,
        "tensor parsing error: ids: shape [1099511627776] declares",
    ),
    (
        "negative-dim",
        req(inputs={"ids": _declared(types_pb2.DT_STRING, [-3])}),
        IA,
        "tensor parsing error: ids: negative",
    ),
    ("resource-dtype", req(inputs={"ids": _declared(types_pb2.DT_RESOURCE, [1])}), IA, "dtype resource cannot be sent"),
    (
        "bytes-not-matching-shape",
        req("search_by_vector", {"vectors": _declared(types_pb2.DT_FLOAT, [1, 16], tensor_content=b"abc")}),
        IA,
        "tensor parsing error: vectors",
    ),
    ("unknown-signature", req("nope", ONE_ID), FP, 'Serving signature key "nope" not found.'),
    ("unknown-model", req(inputs=ONE_ID, model="nope"), NF, "Servable not found for request: Latest(nope)"),
    (
        "unknown-version",
        req(inputs=ONE_ID, version=42),
        NF,
        "Servable not found for request: Specific(scann_model, 42)",
    ),
    ("unknown-label", req(inputs=ONE_ID, label="canary"), IA, "Unrecognized servable version label: canary"),
]

NAN_ROW = np.full((1, harness.DIM), np.nan, np.float32)
# Requests that are answered, with rows that could not be: (case id, request, expected `found`).
UNANSWERED_ROW_CASES = [
    ("unknown-id", req(inputs={"ids": np.array([b"sku-1", b"no-such-sku"], dtype=object)}), [True, False]),
    ("unknown-id-not-utf8", req(inputs={"ids": np.array([b"\xff\xfe-sku"], dtype=object)}), [False]),
    ("empty-batch-ids", req(inputs={"ids": np.array([], dtype=object)}), []),
    ("empty-batch-vectors", req("search_by_vector", {"vectors": np.zeros((0, harness.DIM), np.float32)}), []),
    ("nan", req("search_by_vector", {"vectors": np.concatenate([NAN_ROW, VEC])}), [False, True]),
    (
        "inf",
        req("search_by_vector", {"vectors": np.concatenate([VEC, np.full((1, harness.DIM), -np.inf, np.float32)])}),
        [True, False],
    ),
]


@pytest.mark.parametrize(
    ("request_", "found"), [c[1:] for c in UNANSWERED_ROW_CASES], ids=[c[0] for c in UNANSWERED_ROW_CASES]
)
def test_rows_that_cannot_be_answered_are_found_false_not_errors(bad_input_server, raw, request_, found):
    out = harness.outputs(raw.predict(request_))
    assert out["found"].tolist() == found
    assert out["ids"].shape == (len(found), 10) and out["scores"].shape == (len(found), 10)
    missing = ~out["found"]
    assert (out["ids"][missing] == b"").all() and np.isneginf(out["scores"][missing]).all()
    assert (out["ids"][~missing] != b"").all() and np.isfinite(out["scores"][~missing]).all()
    assert_still_serving(bad_input_server, raw)


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
    assert (
        harness.rpc_error(raw.raw, "/tensorflow.serving.PredictionService/Classify", b"").code()
        == grpc.StatusCode.UNIMPLEMENTED
    )
    assert_still_serving(bad_input_server, raw)


def test_request_above_64_mib_is_accepted_like_tf_serving_2_11(bad_input_server, raw):
    # TF Serving 2.11 receives up to 2 GiB - 1 (model_servers/server.cc SetMaxMessageSize(kint32max)),
    # and so does the local server by default: the request reaches the servicer, which rejects it.
    big = req(
        "search_by_vector",
        {"vectors": _declared(types_pb2.DT_FLOAT, [1, harness.DIM], tensor_content=b"\0" * (65 << 20))},
    )
    err = harness.rpc_error(raw.predict, big)
    assert err.code() == IA, (err.code(), err.details())
    assert_still_serving(bad_input_server, raw)


def test_metadata_without_the_signature_def_field(bad_input_server, raw):
    err = harness.rpc_error(raw.metadata, fields=())
    assert err.code() == IA and "signature_def" in err.details()
    assert_still_serving(bad_input_server, raw)


FAST = RetryPolicy(max_attempts=2, initial_backoff_s=0.01, max_backoff_s=0.05)
# Through the client: (case id, client kwargs, call, exception, message fragment). Errors of the
# client's own checks (ValueError/TypeError) are raised before anything is sent.
CLIENT_CASES = [
    (
        "unknown-id",
        {},
        lambda c: c.search(["sku-1", "no-such-sku"]),
        InvalidRequestError,
        "unknown query id(s), not in this model version",
    ),
    ("unknown-id-not-utf8", {}, lambda c: c.search([b"\xff-sku"]), InvalidRequestError, "unknown query id(s)"),
    # A batch above max_batch_size is no error for the client: it splits it (tests/server/test_server_batching.py).
    ("wrong-dtype", {}, lambda c: c.search([True]), TypeError, "is a bool"),
    ("wrong-rank", {}, lambda c: c.search_by_vector(np.ones((1, 2, harness.DIM))), ValueError, "[batch, dim]"),
    ("wrong-dim", {}, lambda c: c.search_by_vector(np.ones((1, 8))), ValueError, "takes 16-dimensional"),
    ("nan", {}, lambda c: c.search_by_vector(np.full(harness.DIM, np.nan)), ValueError, "NaN"),
    ("unknown-model", {"model": "nope"}, lambda c: c.search("sku-1"), ModelNotFoundError, "Latest(nope)"),
    ("unknown-version", {"version": 42}, lambda c: c.search("sku-1"), ModelNotFoundError, "Specific(scann_model, 42)"),
    (
        "unknown-label",
        {"version_label": "canary"},
        lambda c: c.search("sku-1"),
        InvalidRequestError,
        "Unrecognized servable version label: canary",
    ),
    # The client's own send limit (64 MiB) refuses it: TF Serving 2.11 would take up to 2 GiB.
    (
        "above-max-message-size",
        {},
        lambda c: c.search(["x" * (65 << 20)]),
        ResourceExhaustedError,
        "Sent message larger than max",
    ),
]


@pytest.mark.parametrize(
    ("kwargs", "call", "exception", "message"), [c[1:] for c in CLIENT_CASES], ids=[c[0] for c in CLIENT_CASES]
)
def test_bad_request_through_the_client(bad_input_server, raw, kwargs, call, exception, message):
    with RetrievalClient(bad_input_server.target, **{"model": harness.MODEL, "retry": FAST, **kwargs}) as client:
        with pytest.raises(exception) as info:
            call(client)
    assert message in str(info.value), str(info.value)
    assert_still_serving(bad_input_server, raw)


def test_the_client_names_only_its_own_unknown_ids(bad_input_server):
    with RetrievalClient(bad_input_server.target, harness.MODEL, retry=FAST) as client:
        with pytest.raises(InvalidRequestError) as info:
            client.search(["sku-3", "no-such-sku-a", "sku-4", "no-such-sku-b"])
    assert "no-such-sku-a" in str(info.value) and "no-such-sku-b" in str(info.value)
    assert "sku-3" not in str(info.value).replace("no-such-sku", "")


def test_empty_batch_through_the_client_sends_nothing(bad_input_server):
    with RetrievalClient(bad_input_server.target, harness.MODEL) as client:
        assert client.search([]) == [] and client.search_by_vector(np.zeros((0, harness.DIM))) == []
