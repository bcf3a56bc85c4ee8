"""numpy <-> TensorProto: every dtype, shape and the empty case, checked against TensorFlow's own codec."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tensorflow.core.framework import tensor_pb2 as tf_tensor_pb2

from retrieval_client._tensors import (
    SUPPORTED_DTYPES,
    decode_strings,
    dtype_enum,
    dtype_name,
    from_tensor_proto,
    to_tensor_proto,
)
from retrieval_client.protos import tensor_pb2

SHAPES = [(), (0,), (3,), (2, 3), (0, 4), (2, 1, 2)]
NUMERIC = [d for d in SUPPORTED_DTYPES if d != "string"]


def sample(dtype: str, shape) -> np.ndarray:
    count = int(np.prod(shape))
    if dtype == "string":
        values = [f"id-{i}-é".encode() for i in range(count)]
        return np.array(values, dtype=object).reshape(shape)
    if dtype == "bool":
        return (np.arange(count) % 2 == 0).reshape(shape)
    values = np.arange(count) * 3 - (0 if dtype.startswith("uint") else 2)
    return (values / (2 if dtype.startswith("float") else 1)).astype(dtype).reshape(shape)


def to_tf(proto) -> tf_tensor_pb2.TensorProto:
    return tf_tensor_pb2.TensorProto.FromString(proto.SerializeToString())


def from_tf(proto) -> tensor_pb2.TensorProto:
    return tensor_pb2.TensorProto.FromString(proto.SerializeToString())


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", SUPPORTED_DTYPES)
def test_roundtrip_and_tensorflow_agree(dtype, shape):
    array = sample(dtype, shape)
    ours = to_tensor_proto(array)
    assert dtype_name(ours.dtype) == dtype
    assert [d.size for d in ours.tensor_shape.dim] == list(shape)
    if dtype != "string":
        assert not any(getattr(ours, f) for f in ("float_val", "int_val", "int64_val", "bool_val", "half_val")), (
            "numeric tensors are sent as tensor_content"
        )
    back = from_tensor_proto(ours)
    assert back.shape == array.shape and back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)
    # TensorFlow reads what we send ...
    np.testing.assert_array_equal(tf.make_ndarray(to_tf(ours)), array)
    # ... and we read what TensorFlow sends (tensor_content or *_val, its choice).
    theirs = from_tensor_proto(from_tf(tf.make_tensor_proto(array, dtype=tf.as_dtype(dtype))))
    assert theirs.shape == array.shape
    np.testing.assert_array_equal(theirs, array)


@pytest.mark.parametrize("dtype", NUMERIC)
def test_typed_value_fields_are_accepted(dtype):
    array = sample(dtype, (2, 3))
    proto = tensor_pb2.TensorProto(dtype=dtype_enum(dtype))
    proto.tensor_shape.dim.add(size=2)
    proto.tensor_shape.dim.add(size=3)
    if dtype == "float16":
        proto.half_val.extend(array.reshape(-1).view(np.uint16).tolist())
    else:
        field = {
            "float32": "float_val",
            "float64": "double_val",
            "int64": "int64_val",
            "bool": "bool_val",
            "uint32": "uint32_val",
            "uint64": "uint64_val",
        }.get(dtype, "int_val")
        getattr(proto, field).extend(array.reshape(-1).tolist())
    np.testing.assert_array_equal(from_tensor_proto(proto), array)
    np.testing.assert_array_equal(tf.make_ndarray(to_tf(proto)), array)


def test_short_value_lists_repeat_the_last_value_like_tensorflow():
    proto = tensor_pb2.TensorProto(dtype=tensor_pb2.DT_FLOAT, float_val=[1.0, 2.5])
    proto.tensor_shape.dim.add(size=4)
    np.testing.assert_array_equal(from_tensor_proto(proto), [1.0, 2.5, 2.5, 2.5])
    np.testing.assert_array_equal(tf.make_ndarray(to_tf(proto)), [1.0, 2.5, 2.5, 2.5])
    empty = tensor_pb2.TensorProto(dtype=tensor_pb2.DT_STRING)
    empty.tensor_shape.dim.add(size=2)
    assert from_tensor_proto(empty).tolist() == [b"", b""]


def test_malformed_tensors_are_rejected_with_the_reason():
    proto = tensor_pb2.TensorProto(dtype=tensor_pb2.DT_INT64, tensor_content=b"\0" * 8)
    proto.tensor_shape.dim.add(size=2)
    with pytest.raises(ValueError, match="holds 1 values, shape \\[2\\] needs 2"):
        from_tensor_proto(proto)
    too_many = tensor_pb2.TensorProto(dtype=tensor_pb2.DT_INT32, int_val=[1, 2, 3])
    too_many.tensor_shape.dim.add(size=2)
    with pytest.raises(ValueError, match="3 values but its shape has 2"):
        from_tensor_proto(too_many)
    with pytest.raises(TypeError, match="complex64"):
        from_tensor_proto(tensor_pb2.TensorProto(dtype=tensor_pb2.DT_COMPLEX64))
    unknown = tensor_pb2.TensorProto(dtype=tensor_pb2.DT_FLOAT)
    unknown.tensor_shape.dim.add(size=-1)
    with pytest.raises(ValueError, match="unknown shape"):
        from_tensor_proto(unknown)


def test_sending_converts_or_refuses_clearly():
    assert dtype_name(to_tensor_proto(["a", "b"]).dtype) == "string"
    assert to_tensor_proto(["a", b"b"]).string_val == [b"a", b"b"]
    assert dtype_name(to_tensor_proto([1.5, 2.0], "float32").dtype) == "float32"
    with pytest.raises(TypeError, match="float64 values to int64"):
        to_tensor_proto([1.5], "int64")
    with pytest.raises(TypeError, match="neither str nor bytes"):
        to_tensor_proto([1, 2], "string")
    with pytest.raises(TypeError, match="unsupported numpy dtype complex128"):
        to_tensor_proto(np.array([1j]))
    with pytest.raises(ValueError, match="supported: float32"):
        to_tensor_proto([1], "float8")
    big_endian = np.array([1, 2], dtype=">i8")
    np.testing.assert_array_equal(from_tensor_proto(to_tensor_proto(big_endian)), [1, 2])


def test_undecodable_string_ids_survive_a_round_trip():
    raw = np.array([b"\xff\xfeid", "é".encode()], dtype=object)
    text = decode_strings(raw)
    assert text[1] == "é"
    assert to_tensor_proto(text).string_val == list(raw)


NUMERIC_ARRAYS = hnp.arrays(
    st.sampled_from([np.float32, np.int64, np.int32, np.float64]), hnp.array_shapes(min_dims=0, max_dims=3, min_side=0)
)


@settings(max_examples=60, deadline=None)
@given(NUMERIC_ARRAYS)
def test_any_numeric_array_survives_tensorflow(array):
    ours = to_tensor_proto(array)
    np.testing.assert_array_equal(tf.make_ndarray(to_tf(ours)), array)
    np.testing.assert_array_equal(from_tensor_proto(from_tf(tf.make_tensor_proto(array))), array)
