"""Property: whatever bytes arrive, the server answers with a status in time and keeps serving.

Random PredictRequests (any dtype, shape, content, model spec, output filter)
and byte-level mutations of valid requests are sent raw over gRPC. Every call
must come back within its deadline with either a response or one of the
statuses a client can act on; INTERNAL only for bytes that are not a
PredictRequest (gRPC's and TF Serving's code for those). Deterministic
(derandomized) and bounded, so it runs the same in CI every time.
"""

from __future__ import annotations

import grpc
import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2

from support import harness

DEADLINE_S = 20.0
EXPECTED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
DTYPES = [v.number for v in types_pb2.DataType.DESCRIPTOR.values] + [999, -1]
SETTINGS = settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)

small = st.integers(min_value=-2, max_value=1100)
dims = st.lists(st.one_of(small, st.sampled_from([0, 1, 16, 1024, 1025, 2**31, 2**62])), max_size=4)
strings = st.one_of(st.sampled_from([b"sku-1", b"sku-1999", b"", b"\xff\xfe"]), st.binary(max_size=40))
floats = st.floats(allow_nan=True, allow_infinity=True, width=32)


@st.composite
def tensors(draw) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=draw(st.sampled_from(DTYPES)))
    if draw(st.booleans()):
        proto.tensor_shape.unknown_rank = True
    for size in draw(dims):
        proto.tensor_shape.dim.add(size=size)
    content = draw(st.sampled_from(["none", "string", "float", "int64", "int", "bytes", "half", "bool"]))
    if content == "string":
        proto.string_val.extend(draw(st.lists(strings, max_size=40)))
    elif content == "float":
        proto.float_val.extend(draw(st.lists(floats, max_size=64)))
    elif content == "int64":
        proto.int64_val.extend(draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=20)))
    elif content == "int":
        proto.int_val.extend(draw(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=20)))
    elif content == "bytes":
        proto.tensor_content = draw(st.binary(max_size=256))
    elif content == "half":
        proto.half_val.extend(draw(st.lists(st.integers(0, 2**16 - 1), max_size=20)))
    elif content == "bool":
        proto.bool_val.extend(draw(st.lists(st.booleans(), max_size=20)))
    return proto


@st.composite
def requests(draw) -> bytes:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = draw(
        st.one_of(
            st.just(harness.MODEL),
            st.just(harness.MODEL),
            st.just(harness.MODEL),
            st.sampled_from(["", "other"]),
            st.text(max_size=20),
        )
    )
    request.model_spec.signature_name = draw(
        st.sampled_from(["", "serving_default", "search_by_vector", "examples", "x"])
    )
    version = draw(st.one_of(st.none(), st.none(), st.none(), st.sampled_from([0, 1, 2, -1, 2**62])))
    if version is not None:
        request.model_spec.version.value = version
    elif draw(st.booleans()):
        request.model_spec.version_label = draw(st.sampled_from(["stable", "nope", ""]))
    for name in draw(st.lists(st.sampled_from(["ids", "vectors", "x", ""]), max_size=3, unique=True)):
        request.inputs[name].CopyFrom(draw(tensors()))
    request.output_filter.extend(draw(st.lists(st.sampled_from(["ids", "scores", "query_ids", "nope"]), max_size=3)))
    return request.SerializeToString()


@st.composite
def typed(draw) -> bytes:
    """Requests with the right model and input name and dtype, random batch contents and shapes: these reach the graph."""
    if draw(st.booleans()):
        ids = draw(
            st.lists(st.one_of(st.sampled_from([f"sku-{i}".encode() for i in (0, 1, 1999)]), strings), max_size=1030)
        )
        proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=ids)
        proto.tensor_shape.dim.add(size=draw(st.sampled_from([len(ids), len(ids), 0, 1, len(ids) + 1])))
        return harness.predict_request("serving_default", {"ids": proto}).SerializeToString()
    rows = draw(st.sampled_from([0, 1, 2, 1024, 1025]))
    cols = draw(st.sampled_from([harness.DIM, harness.DIM, harness.DIM, 15, 17, 0]))
    values = draw(st.lists(floats, min_size=0, max_size=4))
    array = np.resize(np.asarray(values or [0.5], np.float32), rows * cols).reshape(rows, cols)
    return harness.predict_request("search_by_vector", {"vectors": array}).SerializeToString()


@st.composite
def mutated(draw) -> bytes:
    """A valid search request with bytes flipped, inserted, deleted or cut off."""
    data = bytearray(
        draw(
            st.sampled_from(
                [
                    harness.ids_request(["sku-1", "sku-2"]).SerializeToString(),
                    harness.predict_request(
                        "search_by_vector", {"vectors": np.ones((2, harness.DIM), np.float32)}
                    ).SerializeToString(),
                ]
            )
        )
    )
    for _ in range(draw(st.integers(1, 6))):
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        action = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if action == "flip" and data:
            data[position] ^= draw(st.integers(1, 255))
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete" and data:
            del data[position]
        elif action == "truncate":
            del data[position:]
    return bytes(data)


def _check(raw: harness.Raw, payload: bytes) -> None:
    try:
        reply = raw.raw(harness.PREDICT, payload, timeout=DEADLINE_S)
    except grpc.RpcError as err:
        code, details = err.code(), err.details() or ""
        event(code.name)
        if code == grpc.StatusCode.INTERNAL:
            assert details.startswith("Failed to parse the request"), details  # never "internal error in Predict"
        else:
            assert code in EXPECTED, (code, details)
            assert details, f"{code} without a message"
    else:
        event("OK")
        predict_pb2.PredictResponse.FromString(reply)  # a well-formed answer


@SETTINGS
@given(payload=st.one_of(requests(), typed(), mutated()))
def test_random_and_mutated_requests_always_get_a_status(bad_input_server, raw, payload):
    _check(raw, payload)
    assert bad_input_server.proc.poll() is None, bad_input_server.log()[-3000:]


def test_server_still_serves_after_the_fuzzing(bad_input_server, raw):
    harness.assert_still_serving(bad_input_server, raw)
