"""Pure functions: response messages -> results, and the facts the client caches.

No I/O here; both clients parse every response with these functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from ._errors import IncompatibleModelError
from ._features import FEATURES_SIGNATURE
from ._requests import (
    EXAMPLES_INDEX,
    EXAMPLES_SIGNATURE,
    FOUND,
    ID_DTYPES,
    PADDING,
    SEARCH_SIGNATURE,
    SIGNATURE_DEF_MAP_TYPE,
    VECTOR_SIGNATURE,
    ModelRef,
    k_too_large,
)
from ._tensors import decode_strings, dtype_name, from_tensor_proto
from ._types import Examples, ModelMetadata, SearchResult, SignatureInfo, TensorSpec, VersionStatus
from .protos import get_model_metadata_pb2, get_model_status_pb2, model_pb2, predict_pb2


def response_version(spec: model_pb2.ModelSpec) -> int | None:
    """The version a response says it came from, if it says."""
    return spec.version.value if spec.HasField("version") else None


def _output(response: predict_pb2.PredictResponse, name: str, what: str) -> np.ndarray:
    if name not in response.outputs:
        raise IncompatibleModelError(f"{what} returned no output {name!r}; outputs: {sorted(response.outputs)}")
    return from_tensor_proto(response.outputs[name], f"output {name!r} of {what}")


output_array = _output


def _ids_out(array: np.ndarray) -> np.ndarray:
    return decode_strings(array) if array.dtype == object else array.astype(np.int64)


@dataclass(frozen=True)
class Neighbours:
    """A parsed search response: [batch, K] ids and scores and the per-row `found` flag."""

    ids: np.ndarray
    scores: np.ndarray
    found: np.ndarray  # bool [batch]; all True for models without a `found` output
    version: int | None

    def unknown_rows(self, id_dtype: str | None) -> list[int]:
        """Rows not found whose ids are all padding: the query id is unknown to the model."""
        if id_dtype not in PADDING:
            return [int(i) for i in np.flatnonzero(~self.found)]
        pad = PADDING[id_dtype]
        return [int(i) for i in np.flatnonzero(~self.found) if all(v == pad for v in self.ids[i].tolist())]

    def results(self, k: int | None) -> list[SearchResult]:
        """One SearchResult per row, truncated to k.

        A found row's trailing padding entries (score -inf: the index yielded fewer than K
        candidates for that query) are dropped, so such a result holds fewer than k ids. Fallback
        rows (found=False) keep their ids: all their scores are -inf by the contract.
        """
        results = []
        for i in range(self.ids.shape[0]):
            ids, scores = self.ids[i, :k], self.scores[i, :k]
            if self.found[i]:
                real = scores > -np.inf
                ids, scores = ids[real], scores[real]
            results.append(
                SearchResult(ids=ids.copy(), scores=scores.copy(), found=bool(self.found[i]), version=self.version)
            )
        return results


def parse_neighbours(response: predict_pb2.PredictResponse, k: int | None, batch: int, what: str) -> Neighbours:
    """ids/scores [batch, K] (+ found [batch]) -> Neighbours; k checked against K."""
    ids = _output(response, "ids", what)
    scores = _output(response, "scores", what)
    if ids.ndim != 2 or ids.shape != scores.shape or ids.shape[0] != batch:
        raise IncompatibleModelError(
            f"{what} returned ids {list(ids.shape)} and scores {list(scores.shape)}; expected both [{batch}, K]"
        )
    if FOUND in response.outputs:
        found = _output(response, FOUND, what)
        if found.shape != (batch,) or found.dtype != np.bool_:
            raise IncompatibleModelError(
                f"{what} returned {FOUND!r} {found.dtype} {list(found.shape)}; expected bool [{batch}]"
            )
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
        raise IncompatibleModelError(
            f"metadata 'signature_def' of {what} is not a valid SignatureDefMap: {exc}"
        ) from None
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


def parse_status(response: get_model_status_pb2.GetModelStatusResponse) -> list[VersionStatus]:
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

    version: int | None
    id_dtype: str | None  # serving_default input "ids", if present
    dim: int | None  # search_by_vector input "vectors" [-1, dim], if known
    k: int | None = None  # serving_default output "scores" [-1, K], if known
    vector_k: int | None = None  # the same for search_by_vector
    examples_take_index: bool = False  # examples has the contract-v2 input "index"
    # search_by_features inputs (name, spec), sorted by name; None when the model has no such signature.
    features: tuple[tuple[str, TensorSpec], ...] | None = None
    features_k: int | None = None  # search_by_features output "scores" [-1, K], if known
    # search_filtered (models built with --item-attributes); None when the model has none.
    filtered: SignatureInfo | None = None

    @classmethod
    def from_metadata(cls, metadata: ModelMetadata) -> Contract:
        """Read the id dtype, vector dimension, K and the examples input out of the signatures."""
        search = metadata.signatures.get(SEARCH_SIGNATURE, SignatureInfo())
        by_vector = metadata.signatures.get(VECTOR_SIGNATURE, SignatureInfo())
        examples = metadata.signatures.get(EXAMPLES_SIGNATURE, SignatureInfo())
        by_features = metadata.signatures.get(FEATURES_SIGNATURE)
        ids = search.inputs.get("ids")
        return cls(
            version=metadata.version,
            id_dtype=ids.dtype if ids is not None else None,
            dim=_known_dim(by_vector.inputs.get("vectors")),
            k=_known_dim(search.outputs.get("scores")),
            vector_k=_known_dim(by_vector.outputs.get("scores")),
            examples_take_index=EXAMPLES_INDEX in examples.inputs,
            features=tuple(sorted(by_features.inputs.items())) if by_features is not None else None,
            features_k=_known_dim(by_features.outputs.get("scores")) if by_features is not None else None,
            filtered=metadata.signatures.get("search_filtered"),
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


def _known_dim(spec: TensorSpec | None) -> int | None:
    """The second dimension of a [-1, n] tensor, when the metadata states it."""
    if spec is None or spec.shape is None or len(spec.shape) != 2 or spec.shape[1] <= 0:
        return None
    return spec.shape[1]
