"""Pure functions: Python values -> request messages (responses: _responses.py).

No I/O here; both clients build every request with these functions, so they
cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from ._errors import IncompatibleModelError, InvalidRequestError
from ._tensors import to_tensor_proto
from .protos import get_model_metadata_pb2, get_model_status_pb2, model_pb2, predict_pb2, tensor_pb2

# TF Serving's exact method paths. The messages are ours but wire-identical.
PREDICT = "/tensorflow.serving.PredictionService/Predict"
GET_MODEL_METADATA = "/tensorflow.serving.PredictionService/GetModelMetadata"
GET_MODEL_STATUS = "/tensorflow.serving.ModelService/GetModelStatus"
RESPONSE_TYPES: dict[str, Any] = {
    PREDICT: predict_pb2.PredictResponse,
    GET_MODEL_METADATA: get_model_metadata_pb2.GetModelMetadataResponse,
    GET_MODEL_STATUS: get_model_status_pb2.GetModelStatusResponse,
}

SEARCH_SIGNATURE = "serving_default"
VECTOR_SIGNATURE = "search_by_vector"
EXAMPLES_SIGNATURE = "examples"
ID_DTYPES = ("string", "int64")
# Serving contract v2 (batching-safe): one `found` flag per row; a row of an unknown id holds
# padding ids ("" / -1). Models exported before it have no `found` output and reject unknown
# ids with INVALID_ARGUMENT themselves.
FOUND = "found"
PADDING = {"string": "", "int64": -1}
# `examples` takes example numbers 0..n-1 with n <= MAX_EXAMPLES; asking for all of them and
# keeping the found rows works without knowing n.
EXAMPLES_INDEX = "index"
MAX_EXAMPLES = 64
UNKNOWN_IDS = "unknown query id(s), not in this model version:"
# The server packs the upstream message, so the Any names upstream's type.
SIGNATURE_DEF_MAP_TYPE = "tensorflow.serving.SignatureDefMap"

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_DECIMAL = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True)
class ModelRef:
    """Which model (and optionally which version) every request targets."""

    name: str
    version: int | None = None
    version_label: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("model name must not be empty")
        if self.version is not None and self.version_label is not None:
            raise ValueError("give version or version_label, not both (TF Serving accepts one)")

    def spec(self, signature_name: str = "") -> model_pb2.ModelSpec:
        spec = model_pb2.ModelSpec(name=self.name, signature_name=signature_name)
        if self.version is not None:
            spec.version.value = self.version
        elif self.version_label is not None:
            spec.version_label = self.version_label
        return spec

    def describe(self, version: int | None = None) -> str:
        shown = version if version is not None else self.version
        if shown is not None:
            return f"model {self.name!r} version {shown}"
        if self.version_label is not None:
            return f"model {self.name!r} label {self.version_label!r}"
        return f"model {self.name!r}"


# --- requests ---------------------------------------------------------------


def predict_request(
    ref: ModelRef, signature: str, inputs: dict[str, tensor_pb2.TensorProto]
) -> predict_pb2.PredictRequest:
    """A PredictRequest for one signature of the referenced model."""
    request = predict_pb2.PredictRequest(model_spec=ref.spec(signature))
    for name, tensor in inputs.items():
        request.inputs[name].CopyFrom(tensor)
    return request


def metadata_request(ref: ModelRef) -> get_model_metadata_pb2.GetModelMetadataRequest:
    """GetModelMetadata asking for the signatures (the only field TF Serving has)."""
    return get_model_metadata_pb2.GetModelMetadataRequest(model_spec=ref.spec(), metadata_field=["signature_def"])


def status_request(ref: ModelRef) -> get_model_status_pb2.GetModelStatusRequest:
    """GetModelStatus; without a pinned version the server lists all versions."""
    return get_model_status_pb2.GetModelStatusRequest(model_spec=ref.spec())


def as_id_list(ids: Any) -> list[Any]:
    """Accept one id or a 1-D sequence/array of ids; never split a string."""
    if isinstance(ids, (str, bytes, int, np.generic)):
        return [ids]
    if isinstance(ids, np.ndarray):
        if ids.ndim == 0:
            return [ids.item()]
        if ids.ndim != 1:
            raise ValueError(f"ids must be one id or a 1-D sequence, got an array of shape {list(ids.shape)}")
        return list(ids)
    try:
        return list(ids)
    except TypeError:
        raise TypeError(f"ids must be an id or a sequence of ids, got {type(ids).__name__}") from None


def _id_as_bytes(value: Any) -> bytes:
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"id {value!r} is a bool; pass str, bytes or int ids")
    if isinstance(value, (str, bytes)):
        return value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    if isinstance(value, (int, np.integer)):
        return str(int(value)).encode()
    raise TypeError(f"id {value!r} ({type(value).__name__}) cannot be sent as a string id; pass str, bytes or int")


def _id_as_int(value: Any, model: str) -> int | None:
    """The int64 id, or None for a str/bytes/int that no int64 model can hold."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"id {value!r} is a bool; {model} takes int64 ids")
    if isinstance(value, (int, np.integer)):
        number = int(value)
    elif isinstance(value, (str, bytes)):
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        if not _DECIMAL.fullmatch(text):
            return None
        number = int(text)
    else:
        raise TypeError(f"id {value!r} ({type(value).__name__}) cannot be sent as an int64 id; {model} takes int64 ids")
    return number if _INT64_MIN <= number <= _INT64_MAX else None


def show_id(value: Any) -> str:
    """An id as error messages show it: as text, or as a bytes literal when it is not UTF-8."""
    if isinstance(value, (bytes, np.bytes_)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return repr(bytes(value))
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return str(int(value))
    return str(value)


def unknown_ids_error(ids: Sequence[Any], what: str) -> InvalidRequestError:
    """InvalidRequestError naming the caller's unknown ids, worded as the graph's check used to
    (TensorFlow's Assert printed them as "[a b]")."""
    return InvalidRequestError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"{UNKNOWN_IDS} [{' '.join(show_id(v) for v in ids)}] ({what})",
        "the model was built without these ids; build a new version that has them, "
        "or build with --unknown-ids fallback to get the most popular items instead",
    )


def ids_tensor(ids: Sequence[Any], id_dtype: str, model: str) -> tensor_pb2.TensorProto:
    """Convert ids to the model's id dtype: ints become decimal strings for
    string-id models, decimal strings become int64 for int64-id models.

    A str that is not a decimal integer (or an int outside int64) cannot be an
    id of an int64 model: ValueError, which search() turns into the unknown-id
    InvalidRequestError after checking the metadata is current.
    """
    if id_dtype == "string":
        return to_tensor_proto([_id_as_bytes(v) for v in ids], "string")
    if id_dtype == "int64":
        numbers = [_id_as_int(v, model) for v in ids]
        impossible = [v for v, n in zip(ids, numbers) if n is None]
        if impossible:
            raise ValueError(f"id(s) {', '.join(map(repr, impossible))} are not int64, which {model} takes")
        return to_tensor_proto(np.array(numbers, dtype=np.int64))
    raise IncompatibleModelError(f"{model} takes ids of dtype {id_dtype}; the client supports {ID_DTYPES}")


def impossible_ids(ids: Sequence[Any], id_dtype: str, model: str) -> list[Any]:
    """The ids that cannot exist in a model with this id dtype (see ids_tensor)."""
    if id_dtype != "int64":
        return []
    return [v for v in ids if _id_as_int(v, model) is None]


def vectors_array(vectors: Any) -> np.ndarray:
    """float32 [batch, dim] from one vector or a batch; rejects NaN/inf."""
    array = np.asarray(vectors)
    if array.dtype.kind not in "fiu":
        raise TypeError(f"vectors must be numbers, got {array.dtype}")
    array = array.astype(np.float32)
    if array.ndim == 1:
        array = array.reshape(1, -1)
    if array.ndim != 2:
        raise ValueError(f"vectors must be [dim] or [batch, dim], got shape {list(array.shape)}")
    if not np.isfinite(array).all():
        raise ValueError("vectors contain NaN or infinity")
    return array


def check_k(k: int | None) -> None:
    """k is None (all K) or a positive int."""
    if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
        raise ValueError(f"k must be a positive integer or None (all K), got {k!r}")


def k_too_large(k: int, top_k: int, what: str) -> ValueError:
    """The error for k above the model's K."""
    return ValueError(
        f"k={k} is more than K={top_k}, the number of neighbours {what} returns "
        f"(fixed when the model was built); use k <= {top_k}"
    )


def examples_request(ref: ModelRef, takes_index: bool) -> predict_pb2.PredictRequest:
    """`examples` with index 0..MAX_EXAMPLES-1 (contract v2), or no input (older models)."""
    inputs = {EXAMPLES_INDEX: to_tensor_proto(np.arange(MAX_EXAMPLES, dtype=np.int64))} if takes_index else {}
    return predict_request(ref, EXAMPLES_SIGNATURE, inputs)
