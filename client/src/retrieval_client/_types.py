"""Public value types: configuration in, results out. All frozen."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

#: One query id: str, bytes or int (numpy scalars included).
Id = str | bytes | int | np.integer
#: One id or a 1-D batch of them.
Ids = Id | Sequence[Id] | np.ndarray
#: One embedding [dim] or a batch [batch, dim] of numbers.
Vectors = Sequence[float] | Sequence[Sequence[float]] | np.ndarray
#: Query features for search_by_features: a list of dicts (one per query) or a dict of
#: columns (feature name -> one value per query).
FeatureRows = Sequence[Mapping[str, Any]] | Mapping[str, Any]
#: gRPC metadata to send: a mapping or (key, value) pairs; keys lowercase ASCII,
#: values str (bytes for keys ending in "-bin").
Headers = Mapping[str, str | bytes] | Sequence[tuple[str, str | bytes]]


@dataclass(frozen=True)
class TlsConfig:
    """TLS settings; file paths are read when the client is created.

    ca_cert_path: PEM bundle to verify the server; None uses the system roots.
    client_cert_path / client_key_path: PEM pair for mutual TLS (both or none).
    server_name_override: the name to verify in the server certificate when
        it differs from the target host (e.g. a certificate issued for the
        Service name while connecting to a pod IP). Testing aid, not a
        substitute for a correct certificate.
    ca_cert / client_cert / client_key: the same PEM data as bytes (e.g. from a
        secret manager), instead of the matching *_path.
    """

    ca_cert_path: str | None = None
    client_cert_path: str | None = None
    client_key_path: str | None = None
    server_name_override: str | None = None
    ca_cert: bytes | None = None
    client_cert: bytes | None = None
    client_key: bytes | None = None

    def __post_init__(self) -> None:
        for name in ("ca_cert", "client_cert", "client_key"):
            data, path = getattr(self, name), getattr(self, f"{name}_path")
            if data is not None and path is not None:
                raise ValueError(f"TlsConfig: give {name} (PEM bytes) or {name}_path, not both")
            if data is not None and not isinstance(data, bytes):
                raise TypeError(f"TlsConfig.{name} takes PEM bytes, got {type(data).__name__}")
        if self.mutual != (self.client_key_path is not None or self.client_key is not None):
            raise ValueError("TlsConfig: give both a client certificate and its key, or neither")

    @property
    def mutual(self) -> bool:
        """True when a client certificate is configured (mutual TLS)."""
        return self.client_cert_path is not None or self.client_cert is not None


@dataclass(frozen=True)
class RetryPolicy:
    """Retries with exponential backoff, each delay jittered to 50-100 % of its step.

    Retried: UNAVAILABLE (no server, a pod going away, a model loading, TF
    Serving's batch queue full) and CANCELLED by the server (a pod draining);
    every client call is a read, so resending is safe. Not retried: a failed
    TLS handshake and every other code.

    All attempts and the waits between them share the call's one deadline
    (timeout_s): each attempt gets what remains, and no retry starts when less
    remains than the next backoff. max_attempts=1 disables retries.
    """

    max_attempts: int = 4
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    backoff_multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("RetryPolicy.max_attempts must be >= 1 (1 means no retries)")
        if self.initial_backoff_s < 0 or self.max_backoff_s < self.initial_backoff_s:
            raise ValueError("RetryPolicy needs 0 <= initial_backoff_s <= max_backoff_s")
        if self.backoff_multiplier < 1:
            raise ValueError("RetryPolicy.backoff_multiplier must be >= 1")


@dataclass(frozen=True)
class CallSettings:
    """Per-RPC gRPC settings (internal): the client's defaults merged with a call's overrides."""

    headers: tuple[tuple[str, str | bytes], ...] = ()
    wait_for_ready: bool | None = None
    compression: grpc.Compression | None = None


def _frozen(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _arrays_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and bool(np.all(a == b))


@dataclass(frozen=True, eq=False)
class SearchResult:
    """Neighbours of one query, best first.

    ids: shape [k] (fewer when the index yielded fewer than k candidates for
        this query); Python `str` in an object array for string-id models,
        int64 for integer-id models.
    scores: float32 [k], sorted descending (dot product of the normalized
        query and candidate embeddings).
    found: False when the model did not know the query and answered with the
        fallback list it was built with (`build --unknown-ids fallback`: the
        most popular items; their scores are -inf). Models built with the
        default policy make search() raise InvalidRequestError instead.
    missing_shards: from a ShardedRetrievalClient with allow_partial=True, the
        shards ("target model") that did not answer: the result is the merged
        answer of the others (`partial`). Not part of equality.
    version: the model version that answered (PredictResponse.model_spec.version;
        None if the server did not say). From a ShardedRetrievalClient: the one
        version every shard answered from (shard-consistent by construction: each
        shard call is pinned to it). Not part of equality.
    """

    ids: np.ndarray
    scores: np.ndarray
    found: bool = True
    missing_shards: tuple[str, ...] = ()
    version: int | None = None

    @property
    def partial(self) -> bool:
        """True when some shards did not answer (ShardedRetrievalClient, allow_partial=True)."""
        return bool(self.missing_shards)

    def __post_init__(self) -> None:
        _frozen(self.ids)
        _frozen(self.scores)

    def tolist(self) -> list[tuple[str | int, float]]:
        """The neighbours as plain Python (id, score) pairs, best first (ids str or int)."""
        return list(zip(self.ids.tolist(), self.scores.tolist(), strict=True))

    def to_dict(self) -> dict[str, Any]:
        """{"ids": [...], "scores": [...], "found": bool} in plain Python types, for
        json.dumps (fallback rows' -inf scores become -Infinity there, as Python's json writes them)."""
        return {"ids": self.ids.tolist(), "scores": self.scores.tolist(), "found": bool(self.found)}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SearchResult):
            return NotImplemented
        return (
            self.found == other.found
            and _arrays_equal(self.ids, other.ids)
            and _arrays_equal(self.scores, other.scores)
        )

    __hash__ = None  # type: ignore[assignment]  # arrays are not hashable


@dataclass(frozen=True, eq=False)
class Examples:
    """Known ids the model publishes for smoke tests (signature "examples").

    query_ids [n]: ids valid for search(); candidate_ids [n] with their
    candidate_vectors [n, dim] (float32): search_by_vector(candidate_vectors[i])
    is expected to return candidate_ids[i] first.
    """

    query_ids: np.ndarray
    candidate_ids: np.ndarray
    candidate_vectors: np.ndarray

    def __post_init__(self) -> None:
        for array in (self.query_ids, self.candidate_ids, self.candidate_vectors):
            _frozen(array)

    def to_dict(self) -> dict[str, Any]:
        """The three columns as plain Python lists (vectors as lists of floats), for json.dumps."""
        return {
            "query_ids": self.query_ids.tolist(),
            "candidate_ids": self.candidate_ids.tolist(),
            "candidate_vectors": self.candidate_vectors.tolist(),
        }

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Examples):
            return NotImplemented
        return all(
            _arrays_equal(getattr(self, name), getattr(other, name))
            for name in ("query_ids", "candidate_ids", "candidate_vectors")
        )

    __hash__ = None  # type: ignore[assignment]  # arrays are not hashable


@dataclass(frozen=True)
class VersionStatus:
    """One model version as GetModelStatus reports it.

    state: "UNKNOWN", "START", "LOADING", "AVAILABLE", "UNLOADING" or "END".
    error_code: a grpc.StatusCode name, "OK" unless loading/unloading failed.
    """

    version: int
    state: str
    error_code: str = "OK"
    error_message: str = ""


@dataclass(frozen=True)
class TensorSpec:
    """dtype is a TensorFlow dtype name ("string", "int64", "float32", ...);
    shape uses -1 for unknown dimensions and is None for an unknown rank."""

    dtype: str
    shape: list[int] | None


@dataclass(frozen=True)
class SignatureInfo:
    """Inputs and outputs of one signature, keyed by tensor name."""

    inputs: dict[str, TensorSpec] = field(default_factory=dict)
    outputs: dict[str, TensorSpec] = field(default_factory=dict)
    method_name: str = ""


@dataclass(frozen=True)
class ModelMetadata:
    """The model version that answered and its signatures, keyed by name."""

    model: str
    version: int | None
    signatures: dict[str, SignatureInfo]
