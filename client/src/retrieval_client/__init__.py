"""Thin gRPC client for the scann-serving retrieval model on TF Serving.

    from retrieval_client import RetrievalClient

    with RetrievalClient("dns:///scann-serving.retrieval.svc.cluster.local:8500") as client:
        client.wait_until_available(timeout_s=60)
        for result in client.search(["42", "7"], k=10):
            print(result.ids, result.scores)

See client/README.md for every argument, the errors and their fixes.

Speaks TF Serving's PredictionService/ModelService over its own wire-compatible
messages: no TensorFlow or tensorflow-serving-api needed.
"""

from ._async_client import AsyncRetrievalClient
from ._client import RetrievalClient
from ._errors import (
    DeadlineExceededError,
    IncompatibleModelError,
    InvalidRequestError,
    ModelNotFoundError,
    ModelNotReadyError,
    ResourceExhaustedError,
    RetrievalError,
    ServerCancelledError,
    ServerOverloadedError,
    ServerUnavailableError,
    ShardUnavailableError,
    TlsHandshakeError,
    WaitTimeoutError,
)
from ._hedging import HedgePolicy
from ._shard_core import Shard, shard_models
from ._sharded import ShardedRetrievalClient
from ._sharded_async import AsyncShardedRetrievalClient
from ._types import (
    Examples,
    ModelMetadata,
    RetryPolicy,
    SearchResult,
    SignatureInfo,
    TensorSpec,
    TlsConfig,
    VersionStatus,
)
from ._version import __version__

__all__ = [
    "AsyncRetrievalClient",
    "AsyncShardedRetrievalClient",
    "DeadlineExceededError",
    "Examples",
    "HedgePolicy",
    "IncompatibleModelError",
    "InvalidRequestError",
    "ModelMetadata",
    "ModelNotFoundError",
    "ModelNotReadyError",
    "ResourceExhaustedError",
    "RetrievalClient",
    "RetrievalError",
    "RetryPolicy",
    "SearchResult",
    "ServerCancelledError",
    "ServerOverloadedError",
    "ServerUnavailableError",
    "Shard",
    "ShardUnavailableError",
    "ShardedRetrievalClient",
    "SignatureInfo",
    "TensorSpec",
    "TlsConfig",
    "TlsHandshakeError",
    "VersionStatus",
    "WaitTimeoutError",
    "__version__",
    "shard_models",
]
