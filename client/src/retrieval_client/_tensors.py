"""numpy <-> TensorProto conversion, driven by one dtype table.

Sending: numeric tensors go out as `tensor_content` (raw little-endian bytes,
one copy, no per-element protobuf overhead); strings as `string_val`.
Receiving: TF Serving and other servers answer with either `tensor_content`
or the typed `*_val` fields, so both are accepted, including TensorFlow's
rule that fewer values than elements means "repeat the last value".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .protos import tensor_pb2


@dataclass(frozen=True)
class _Kind:
    enum: tensor_pb2.DataType  # tensorflow.DataType number
    name: str  # tf.DType.name, used in messages and ModelMetadata
    np_dtype: np.dtype  # native-order numpy dtype; object for strings
    field: str  # the typed TensorProto field holding the values


_DT = tensor_pb2.DataType
_KINDS = (
    _Kind(_DT.DT_FLOAT, "float32", np.dtype(np.float32), "float_val"),
    _Kind(_DT.DT_DOUBLE, "float64", np.dtype(np.float64), "double_val"),
    _Kind(_DT.DT_HALF, "float16", np.dtype(np.float16), "half_val"),
    _Kind(_DT.DT_INT8, "int8", np.dtype(np.int8), "int_val"),
    _Kind(_DT.DT_INT16, "int16", np.dtype(np.int16), "int_val"),
    _Kind(_DT.DT_INT32, "int32", np.dtype(np.int32), "int_val"),
    _Kind(_DT.DT_INT64, "int64", np.dtype(np.int64), "int64_val"),
    _Kind(_DT.DT_UINT8, "uint8", np.dtype(np.uint8), "int_val"),
    _Kind(_DT.DT_UINT16, "uint16", np.dtype(np.uint16), "int_val"),
    _Kind(_DT.DT_UINT32, "uint32", np.dtype(np.uint32), "uint32_val"),
    _Kind(_DT.DT_UINT64, "uint64", np.dtype(np.uint64), "uint64_val"),
    _Kind(_DT.DT_BOOL, "bool", np.dtype(np.bool_), "bool_val"),
    _Kind(_DT.DT_STRING, "string", np.dtype(object), "string_val"),
)
_BY_ENUM: dict[int, _Kind] = {int(k.enum): k for k in _KINDS}
_BY_NAME = {k.name: k for k in _KINDS}
# Keyed by (kind, itemsize) so byte order does not matter on lookup.
_BY_NUMPY = {(k.np_dtype.kind, k.np_dtype.itemsize): k for k in _KINDS if k.name != "string"}
_STRING = _BY_NAME["string"]

SUPPORTED_DTYPES = tuple(k.name for k in _KINDS)


def dtype_name(enum: int) -> str:
    """The TensorFlow name ("float32", "string", ...) of a DataType number."""
    kind = _BY_ENUM.get(enum)
    if kind is not None:
        return kind.name
    try:
        return tensor_pb2.DataType.Name(enum)[len("DT_") :].lower()
    except ValueError:
        return f"unknown_dtype_{enum}"


def dtype_enum(name: str) -> tensor_pb2.DataType:
    """The DataType number of a supported dtype name."""
    try:
        return _BY_NAME[name].enum
    except KeyError:
        raise ValueError(f"unsupported dtype {name!r}; supported: {', '.join(SUPPORTED_DTYPES)}") from None


def _encode_string(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        # surrogateescape round-trips ids that came back from the server as
        # undecodable bytes (see decode_strings).
        return value.encode("utf-8", "surrogateescape")
    raise TypeError(f"string tensor element {value!r} ({type(value).__name__}) is neither str nor bytes")


def _looks_like_strings(values: Any) -> bool:
    while isinstance(values, (list, tuple)) and values:
        values = values[0]
    return isinstance(values, (str, bytes, bytearray, np.str_, np.bytes_))


def to_tensor_proto(values: Any, dtype: str | None = None) -> tensor_pb2.TensorProto:
    """Build a TensorProto from an array-like.

    dtype is a TensorFlow dtype name ("float32", "int64", "string", ...); by
    default it follows the numpy dtype. Numbers are cast with numpy's
    "same_kind" rule (float64 -> float32 is fine, float -> int is refused).
    """
    if dtype == "string" or (
        dtype is None
        and (
            (isinstance(values, np.ndarray) and values.dtype.kind in "USO")
            or (not isinstance(values, np.ndarray) and _looks_like_strings(values))
        )
    ):
        array = np.array(values, dtype=object)
        proto = tensor_pb2.TensorProto(dtype=_STRING.enum)
        proto.string_val.extend(_encode_string(v) for v in array.reshape(-1))
    else:
        array = np.asarray(values)
        if array.dtype.kind in "USO":
            raise TypeError(f"cannot send {array.dtype} values as {dtype or 'a numeric tensor'}")
        if dtype is None:
            kind = _BY_NUMPY.get((array.dtype.kind, array.dtype.itemsize))
            if kind is None:
                raise TypeError(f"unsupported numpy dtype {array.dtype}; supported: {', '.join(SUPPORTED_DTYPES)}")
        else:
            kind = _BY_NAME.get(dtype)
            if kind is None:
                raise ValueError(f"unsupported dtype {dtype!r}; supported: {', '.join(SUPPORTED_DTYPES)}")
        try:
            wire = array.astype(kind.np_dtype.newbyteorder("<"), casting="same_kind", copy=False)
        except TypeError as exc:
            raise TypeError(f"cannot convert {array.dtype} values to {kind.name}: {exc}") from None
        proto = tensor_pb2.TensorProto(dtype=kind.enum, tensor_content=np.ascontiguousarray(wire).tobytes())
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    return proto


def _fill(values: np.ndarray, count: int, what: str) -> np.ndarray:
    """Apply TensorFlow's rule for short typed *_val lists."""
    if len(values) == count:
        return values
    if len(values) > count:
        raise ValueError(f"{what} holds {len(values)} values but its shape has {count} elements")
    if len(values) == 0:
        return np.zeros(count, dtype=values.dtype) if values.dtype != object else np.full(count, b"", object)
    pad = np.full(count - len(values), values[-1], dtype=values.dtype)
    return np.concatenate([values, pad])


def from_tensor_proto(proto: tensor_pb2.TensorProto, what: str = "tensor") -> np.ndarray:
    """Convert a TensorProto into a new, writable numpy array.

    Strings come back as an object array of `bytes`; `what` names the tensor
    in error messages.
    """
    kind = _BY_ENUM.get(proto.dtype)
    if kind is None:
        raise TypeError(f"{what} has dtype {dtype_name(proto.dtype)}, which the client cannot decode")
    if proto.tensor_shape.unknown_rank:
        raise ValueError(f"{what} has an unknown rank")
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    if any(size < 0 for size in shape):
        raise ValueError(f"{what} has a partially unknown shape {list(shape)}")
    count = math.prod(shape)

    if kind is _STRING:
        if proto.tensor_content:
            raise ValueError(f"{what}: DT_STRING in tensor_content is TensorFlow-internal; use string_val")
        flat = np.empty(len(proto.string_val), dtype=object)
        flat[:] = list(proto.string_val)
    elif proto.tensor_content:
        flat = np.frombuffer(proto.tensor_content, dtype=kind.np_dtype.newbyteorder("<"))
        if flat.size != count:
            raise ValueError(f"{what}: tensor_content holds {flat.size} values, shape {list(shape)} needs {count}")
        return flat.astype(kind.np_dtype).reshape(shape)
    elif kind.field == "half_val":
        # half_val carries the IEEE half bit patterns widened to int32.
        flat = np.asarray(proto.half_val, dtype=np.int32).astype(np.uint16).view(np.float16)
    else:
        flat = np.asarray(getattr(proto, kind.field), dtype=kind.np_dtype)
    return _fill(flat, count, what).reshape(shape)


def decode_strings(array: np.ndarray) -> np.ndarray:
    """bytes -> str (UTF-8) in a new object array of the same shape.

    Undecodable bytes become lone surrogates instead of failing, and encode
    back to the same bytes, so any id the server returns can be sent again.
    """
    out = np.empty(array.shape, dtype=object)
    flat = out.reshape(-1)
    for i, value in enumerate(array.reshape(-1)):
        flat[i] = value.decode("utf-8", "surrogateescape")
    return out
