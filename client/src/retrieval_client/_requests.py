"""Pure functions: Python values -> request messages -> results.

No I/O here; both clients build every request and parse every response with
these functions, so they cannot drift apart.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from ._errors import IncompatibleModelError, InvalidRequestError
from ._tensors import decode_strings, dtype_name, from_tensor_proto, to_tensor_proto
from ._types import Examples, ModelMetadata, SearchResult, SignatureInfo, TensorSpec, VersionStatus
from .protos import get_model_metadata_pb2, get_model_status_pb2, model_pb2, predict_pb2, tensor_pb2

# TF Serving's exact method paths. The messages are ours but wire-identical.
PREDICT = "/tensorflow.serving.PredictionService/Predict"
GET_MODEL_METADATA = "/tensorflow.serving.PredictionService/GetModelMetadata"
GET_MODEL_STATUS = "/tensorflow.serving.ModelService/GetModelStatus"
RESPONSE_TYPES: Dict[str, Any] = {
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
    version: Optional[int] = None
    version_label: Optional[str] = None

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

    def describe(self, version: Optional[int] = None) -> str:
        shown = version if version is not None else self.version
        if shown is not None:
            return f"model {self.name!r} version {shown}"
        if self.version_label is not None:
            return f"model {self.name!r} label {self.version_label!r}"
        return f"model {self.name!r}"


# --- requests ---------------------------------------------------------------


def predict_request(
    ref: ModelRef, signature: str, inputs: Dict[str, tensor_pb2.TensorProto]
) -> predict_pb2.PredictRequest:
    """A PredictRequest for one signature of the referenced model."""
    request = predict_pb2.PredictRequest(model_spec=ref.spec(signature))
    for name, tensor in inputs.items():
        request.inputs[name].CopyFrom(tensor)
    return request


def metadata_request(ref: ModelRef) -> get_model_metadata_pb2.GetModelMetadataRequest:
    """GetModelMetadata asking for the signatures (the only field TF Serving has)."""
    return get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=ref.spec(), metadata_field=["signature_def"]
    )


def status_request(ref: ModelRef) -> get_model_status_pb2.GetModelStatusRequest:
    """GetModelStatus; without a pinned version the server lists all versions."""
    return get_model_status_pb2.GetModelStatusRequest(model_spec=ref.spec())


def as_id_list(ids: Any) -> List[Any]:
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


def _id_as_int(value: Any, model: str) -> Optional[int]:
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
    """An id as error messages show it: strings quoted, numbers bare."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return str(int(value))
    return repr(value)


def unknown_ids_error(ids: Sequence[Any], what: str) -> InvalidRequestError:
    """InvalidRequestError naming the caller's unknown ids (the wording the graph used to raise)."""
    return InvalidRequestError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"{UNKNOWN_IDS} {', '.join(show_id(v) for v in ids)} ({what})",
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
            raise ValueError(f"id(s) {', '.join(show_id(v) for v in impossible)} are not int64, which {model} takes")
        return to_tensor_proto(np.array(numbers, dtype=np.int64))
    raise IncompatibleModelError(f"{model} takes ids of dtype {id_dtype}; the client supports {ID_DTYPES}")


def impossible_ids(ids: Sequence[Any], id_dtype: str, model: str) -> List[Any]:
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


def check_k(k: Optional[int]) -> None:
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


# --- responses --------------------------------------------------------------


def response_version(spec: model_pb2.ModelSpec) -> Optional[int]:
    """The version a response says it came from, if it says."""
    return spec.version.value if spec.HasField("version") else None


def _output(response: predict_pb2.PredictResponse, name: str, what: str) -> np.ndarray:
    if name not in response.outputs:
        raise IncompatibleModelError(
            f"{what} returned no output {name!r}; outputs: {sorted(response.outputs)}"
        )
    return from_tensor_proto(response.outputs[name], f"output {name!r} of {what}")


def _ids_out(array: np.ndarray) -> np.ndarray:
    return decode_strings(array) if array.dtype == object else array.astype(np.int64)


@dataclass(frozen=True)
class Neighbours:
    """A parsed search response: [batch, K] ids and scores and the per-row `found` flag."""

    ids: np.ndarray
    scores: np.ndarray
    found: np.ndarray  # bool [batch]; all True for models without a `found` output
    version: Optional[int]

    def unknown_rows(self, id_dtype: Optional[str]) -> List[int]:
        """Rows not found whose ids are all padding: the query id is unknown to the model."""
        if id_dtype not in PADDING:
            return [int(i) for i in np.flatnonzero(~self.found)]
        pad = PADDING[id_dtype]
        return [int(i) for i in np.flatnonzero(~self.found) if all(v == pad for v in self.ids[i].tolist())]

    def results(self, k: Optional[int]) -> List[SearchResult]:
        """One SearchResult per row, truncated to k."""
        ids = self.ids[:, :k]
        scores = self.scores[:, :k]
        return [
            SearchResult(ids=ids[i].copy(), scores=scores[i].copy(), found=bool(self.found[i]))
            for i in range(ids.shape[0])
        ]


def parse_neighbours(response: predict_pb2.PredictResponse, k: Optional[int], batch: int, what: str) -> Neighbours:
    """ids/scores [batch, K] (+ found [batch]) -> Neighbours; k checked against K."""
    ids = _output(response, "ids", what)
    scores = _output(response, "scores", what)
    if ids.ndim != 2 or ids.shape != scores.shape or ids.shape[0] != batch:
        raise IncompatibleModelError(
            f"{what} returned ids {list(ids.shape)} and scores {list(scores.shape)}; "
            f"expected both [{batch}, K]"
        )
    if FOUND in response.outputs:
        found = _output(response, FOUND, what)
        if found.shape != (batch,) or found.dtype != np.bool_:
            raise IncompatibleModelError(f"{what} returned {FOUND!r} {found.dtype} {list(found.shape)}; expected bool [{batch}]")
    else:
        found = np.ones(batch, dtype=bool)
    if k is not None and k > ids.shape[1]:
        raise k_too_large(k, ids.shape[1], what)
    return Neighbours(_ids_out(ids), scores.astype(np.float32), found, response_version(response.model_spec))


def parse_examples(response: predict_pb2.PredictResponse, what: str) -> Examples:
    """The examples signature's outputs; rows with found=False (index >= n) are dropped."""
    query_ids = _output(response, "query_ids", what)
    candidate_ids = _output(response, "candidate_ids", what)
    vectors = _output(response, "candidate_vectors", what).astype(np.float32)
    if vectors.ndim != 2 or candidate_ids.shape != (vectors.shape[0],) or query_ids.ndim != 1:
        raise IncompatibleModelError(
            f"{what} returned query_ids {list(query_ids.shape)}, candidate_ids "
            f"{list(candidate_ids.shape)}, candidate_vectors {list(vectors.shape)}; "
            "expected [n], [m] and [m, dim]"
        )
    if FOUND in response.outputs:
        found = _output(response, FOUND, what)
        if found.dtype != np.bool_ or found.shape != query_ids.shape or found.shape != candidate_ids.shape:
            raise IncompatibleModelError(
                f"{what} returned {FOUND!r} {found.dtype} {list(found.shape)}; expected bool [{query_ids.shape[0]}]"
            )
        query_ids, candidate_ids, vectors = query_ids[found], candidate_ids[found], vectors[found]
    return Examples(_ids_out(query_ids), _ids_out(candidate_ids), vectors)


def _tensor_spec(info: Any) -> TensorSpec:
    if not info.HasField("tensor_shape") or info.tensor_shape.unknown_rank:
        return TensorSpec(dtype_name(info.dtype), None)
    return TensorSpec(dtype_name(info.dtype), [d.size for d in info.tensor_shape.dim])


def parse_metadata(response: Any, ref: ModelRef) -> ModelMetadata:
    """Unpack the Any under "signature_def" (checking its type) into ModelMetadata."""
    what = ref.describe(response_version(response.model_spec))
    if "signature_def" not in response.metadata:
        raise IncompatibleModelError(f"metadata of {what} has no 'signature_def'; keys: {sorted(response.metadata)}")
    packed = response.metadata["signature_def"]
    type_name = packed.type_url.rpartition("/")[2]
    if type_name != SIGNATURE_DEF_MAP_TYPE:
        raise IncompatibleModelError(
            f"metadata 'signature_def' of {what} holds {type_name!r}, expected {SIGNATURE_DEF_MAP_TYPE!r}"
        )
    try:
        signature_map = get_model_metadata_pb2.SignatureDefMap.FromString(packed.value)
    except DecodeError as exc:
        raise IncompatibleModelError(f"metadata 'signature_def' of {what} is not a valid SignatureDefMap: {exc}") from None
    signatures = {
        name: SignatureInfo(
            inputs={k: _tensor_spec(v) for k, v in sorted(sig.inputs.items())},
            outputs={k: _tensor_spec(v) for k, v in sorted(sig.outputs.items())},
            method_name=sig.method_name,
        )
        for name, sig in sorted(signature_map.signature_def.items())
    }
    return ModelMetadata(
        model=response.model_spec.name or ref.name,
        version=response_version(response.model_spec),
        signatures=signatures,
    )


def _enum_name(enum_type: Any, number: int, prefix: str) -> str:
    try:
        return enum_type.Name(number)
    except ValueError:
        return f"{prefix}{number}"


def parse_status(response: get_model_status_pb2.GetModelStatusResponse) -> List[VersionStatus]:
    """Every version the server reports, oldest first."""
    state_enum = get_model_status_pb2.ModelVersionStatus.State
    return sorted(
        (
            VersionStatus(
                version=s.version,
                state=_enum_name(state_enum, s.state, "STATE_"),
                error_code=_enum_name(get_model_status_pb2.ErrorCode, s.status.error_code, "CODE_"),
                error_message=s.status.error_message,
            )
            for s in response.model_version_status
        ),
        key=lambda s: s.version,
    )


# --- what the client needs from the metadata ---------------------------------


@dataclass(frozen=True)
class Contract:
    """The facts the client caches from ModelMetadata (refreshed on mismatch)."""

    version: Optional[int]
    id_dtype: Optional[str]  # serving_default input "ids", if present
    dim: Optional[int]  # search_by_vector input "vectors" [-1, dim], if known
    k: Optional[int] = None  # serving_default output "scores" [-1, K], if known
    vector_k: Optional[int] = None  # the same for search_by_vector
    examples_take_index: bool = False  # examples has the contract-v2 input "index"

    @classmethod
    def from_metadata(cls, metadata: ModelMetadata) -> "Contract":
        """Read the id dtype, vector dimension, K and the examples input out of the signatures."""
        search = metadata.signatures.get(SEARCH_SIGNATURE, SignatureInfo())
        by_vector = metadata.signatures.get(VECTOR_SIGNATURE, SignatureInfo())
        examples = metadata.signatures.get(EXAMPLES_SIGNATURE, SignatureInfo())
        ids = search.inputs.get("ids")
        return cls(
            version=metadata.version,
            id_dtype=ids.dtype if ids is not None else None,
            dim=_known_dim(by_vector.inputs.get("vectors")),
            k=_known_dim(search.outputs.get("scores")),
            vector_k=_known_dim(by_vector.outputs.get("scores")),
            examples_take_index=EXAMPLES_INDEX in examples.inputs,
        )

    def require_id_dtype(self, ref: ModelRef) -> str:
        """The id dtype, or an error saying the model has no usable ids input."""
        if self.id_dtype is None:
            raise IncompatibleModelError(
                f"{ref.describe(self.version)} has no signature {SEARCH_SIGNATURE!r} with an input 'ids'"
            )
        if self.id_dtype not in ID_DTYPES:
            raise IncompatibleModelError(
                f"{ref.describe(self.version)} takes ids of dtype {self.id_dtype}; the client supports {ID_DTYPES}"
            )
        return self.id_dtype


def _known_dim(spec: Optional[TensorSpec]) -> Optional[int]:
    """The second dimension of a [-1, n] tensor, when the metadata states it."""
    if spec is None or spec.shape is None or len(spec.shape) != 2 or spec.shape[1] <= 0:
        return None
    return spec.shape[1]
