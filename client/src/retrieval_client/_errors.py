"""The client's exception hierarchy and the one place gRPC errors are converted.

Callers never see `grpc.RpcError`: both clients pass every failed RPC through
`from_rpc_error`, which picks the subclass from the status code and keeps the
server's own message in `details` (TF Serving's messages name the offending
input, e.g. the unknown id).
"""
from __future__ import annotations

import re
from typing import Optional

import grpc


class RetrievalError(Exception):
    """A failed call: the gRPC status `code` and the server's `details`."""

    #: One sentence on how to fix the problem; subclasses override it.
    hint: Optional[str] = None

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, details)
        self.code = code
        self.details = details

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.details}"
        return f"{text} ({self.hint})" if self.hint else text

    def __reduce__(self) -> tuple:
        # Subclasses take other __init__ arguments; rebuild without calling it
        # so errors survive pickling (multiprocessing, concurrent.futures).
        return (_rebuild, (type(self), self.code, self.details))


def _rebuild(cls: type[RetrievalError], code: grpc.StatusCode, details: str) -> RetrievalError:
    error = cls.__new__(cls)
    RetrievalError.__init__(error, code, details)
    return error


class InvalidRequestError(RetrievalError):
    """INVALID_ARGUMENT: the server rejected the request (e.g. an unknown id)."""


class ModelNotFoundError(RetrievalError):
    """NOT_FOUND: the server has no such model, version or signature."""

    hint = (
        "check the model name, version and signature; TF Serving also answers "
        "NOT_FOUND until the first version has loaded, see wait_until_available()"
    )


class ModelNotReadyError(RetrievalError):
    """FAILED_PRECONDITION (other than a missing signature), or UNAVAILABLE while a model loads."""

    hint = "the model is not serving yet; call wait_until_available() first"


class ServerUnavailableError(RetrievalError):
    """UNAVAILABLE: no server answered (after the bounded retries)."""

    hint = "check the target address and that the server is running and reachable"


class DeadlineExceededError(RetrievalError):
    """DEADLINE_EXCEEDED: the call took longer than its timeout_s."""

    hint = "raise timeout_s or send smaller batches"


class WaitTimeoutError(DeadlineExceededError):
    """wait_until_available() gave up; `details` says what it last saw."""

    hint = "the model never became AVAILABLE; check the server's logs"


class ResourceExhaustedError(RetrievalError):
    """RESOURCE_EXHAUSTED: a message too large or the server out of capacity."""

    hint = "send smaller batches, or raise max_message_bytes on client and server"


class IncompatibleModelError(RetrievalError):
    """The model or server does not follow the retrieval contract (signatures
    serving_default, search_by_vector and examples; see the client README)."""

    hint = "point the client at a model exported by model_builder"

    def __init__(self, details: str) -> None:
        super().__init__(grpc.StatusCode.FAILED_PRECONDITION, details)


_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.NOT_FOUND: ModelNotFoundError,
    grpc.StatusCode.FAILED_PRECONDITION: ModelNotReadyError,
    grpc.StatusCode.UNAVAILABLE: ServerUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
}

# An UNAVAILABLE that a server sends while a version loads mentions it; a
# transport failure ("failed to connect to all addresses") does not.
_LOADING = re.compile(r"\b(loading|not (yet )?ready|warm(ing)? ?up)\b", re.IGNORECASE)


# TF Serving answers an unknown signature with FAILED_PRECONDITION (predict_util.cc):
# the model is not ours or not the version expected, not "still loading".
_NO_SIGNATURE = re.compile(r'Serving signature key ".*" not found')


def error_for(code: grpc.StatusCode, details: str) -> RetrievalError:
    """Build the most specific RetrievalError subclass for a status."""
    if code == grpc.StatusCode.FAILED_PRECONDITION and _NO_SIGNATURE.search(details):
        return IncompatibleModelError(details)
    if code == grpc.StatusCode.UNAVAILABLE and _LOADING.search(details):
        return ModelNotReadyError(code, details)
    return _BY_CODE.get(code, RetrievalError)(code, details)


def from_rpc_error(error: grpc.RpcError) -> RetrievalError:
    """Convert a raised `grpc.RpcError` (sync or aio) into a RetrievalError.

    The only conversion point: both clients call it and raise the result with
    the gRPC exception dropped from the chain (`from None`).
    """
    code_fn = getattr(error, "code", None)
    details_fn = getattr(error, "details", None)
    code = code_fn() if callable(code_fn) else None
    details = details_fn() if callable(details_fn) else None
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    converted = error_for(code, details or str(error) or code.name.lower())
    converted.__cause__ = None
    converted.__suppress_context__ = True
    return converted
