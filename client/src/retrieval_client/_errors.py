"""The client's exception hierarchy and the one place gRPC errors are converted.

Callers never see `grpc.RpcError`: both clients pass every failed RPC through
`from_rpc_error`, which picks the subclass from the status code (and, where
one code covers several causes, from TF Serving's wording) and keeps the
server's own message in `details`. Every error carries a `hint` saying how to
fix it; client/README.md's error table lists them, and
tests/client/test_client_errors.py checks that table against this module.
"""

from __future__ import annotations

import re

import grpc


class RetrievalError(Exception):
    """A failed call: the gRPC status `code`, the server's `details` and a `hint`."""

    #: Default advice for this class; an instance may carry a more specific one.
    hint: str | None = None

    def __init__(self, code: grpc.StatusCode, details: str, hint: str | None = None) -> None:
        super().__init__(code, details)
        self.code = code
        self.details = details
        # Raised in place of gRPC's exception (or of nothing): never show a chained context.
        self.__suppress_context__ = True
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.details}"
        return f"{text} ({self.hint})" if self.hint else text

    def __reduce__(self) -> tuple:
        # Subclasses take other __init__ arguments; rebuild without calling it
        # so errors survive pickling (multiprocessing, concurrent.futures).
        return (_rebuild, (type(self), self.code, self.details, self.__dict__.get("hint")))


def _rebuild(cls: type, code: grpc.StatusCode, details: str, hint: str | None = None) -> RetrievalError:
    error = cls.__new__(cls)
    RetrievalError.__init__(error, code, details, hint)
    return error


class InvalidRequestError(RetrievalError):
    """INVALID_ARGUMENT: the request cannot be answered as sent (an unknown id,
    a batch above the server's maximum). Never retried."""


class ModelNotFoundError(RetrievalError):
    """NOT_FOUND: the server has no such model, version or version label."""

    hint = (
        "check the model name, version and version label; TF Serving also answers "
        "NOT_FOUND until the first version has loaded, see wait_until_available()"
    )


class ModelNotReadyError(RetrievalError):
    """FAILED_PRECONDITION (other than a missing signature), or UNAVAILABLE while a model loads."""

    hint = "the model is not serving yet; call wait_until_available() first"


class ServerUnavailableError(RetrievalError):
    """UNAVAILABLE: no server answered within the call's deadline (retried until then)."""

    hint = "check the target address and that the server is running and reachable"


class ServerOverloadedError(ServerUnavailableError):
    """UNAVAILABLE from TF Serving's batcher: its queue was full. Retried with backoff."""

    hint = "the server's batching queue is full: add replicas, or raise timeout_s to wait longer"


class ServerCancelledError(ServerUnavailableError):
    """CANCELLED by the server, e.g. a pod draining for shutdown. Retried (every
    call is a read) while the call's deadline allows."""

    hint = "the server cancelled the call (shutting down or restarting); retry, or check its logs"


class TlsHandshakeError(ServerUnavailableError):
    """The connection failed in the TLS handshake, or the server closed it before
    any gRPC exchange (a server requiring TLS or a client certificate does).
    Not retried: a retry cannot fix the configuration. `hint` names the likely cause."""

    hint = "the TLS handshake failed; check TlsConfig against the server's TLS settings"


class ShardUnavailableError(ServerUnavailableError):
    """A shard of a ShardedRetrievalClient did not answer (down, not serving the model, or past
    the call's deadline). `target` and `model` name the shard; `code` is the shard's own."""

    hint = "check that shard's pods and model, or pass allow_partial=True to answer from the other shards"

    def __init__(self, code: grpc.StatusCode, details: str, target: str = "", model: str = "") -> None:
        super().__init__(code, details)
        self.target = target
        self.model = model


class DeadlineExceededError(RetrievalError):
    """DEADLINE_EXCEEDED: the call (all its attempts and backoff) took longer than timeout_s."""

    hint = "raise timeout_s or send smaller batches"


class WaitTimeoutError(DeadlineExceededError):
    """wait_until_available() gave up; `details` says what it last saw."""

    hint = "the model never became AVAILABLE; check the server's logs"


class ResourceExhaustedError(RetrievalError):
    """RESOURCE_EXHAUSTED: a message above max_message_bytes (client or server)."""

    hint = "send smaller batches, or raise max_message_bytes on client and server"


class IncompatibleModelError(RetrievalError):
    """The model or server does not follow the retrieval contract (signatures
    serving_default, search_by_vector and examples; see the client README)."""

    hint = "point the client at a model exported by model_builder"

    def __init__(self, details: str, hint: str | None = None) -> None:
        super().__init__(grpc.StatusCode.FAILED_PRECONDITION, details, hint)


_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.NOT_FOUND: ModelNotFoundError,
    grpc.StatusCode.FAILED_PRECONDITION: ModelNotReadyError,
    grpc.StatusCode.UNAVAILABLE: ServerUnavailableError,
    grpc.StatusCode.CANCELLED: ServerCancelledError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
}

# An UNAVAILABLE that a server sends while a version loads mentions it; a
# transport failure ("failed to connect to all addresses") does not.
_LOADING = re.compile(r"\b(loading|not (yet )?ready|warm(ing)? ?up)\b", re.IGNORECASE)
# TF Serving answers an unknown signature with FAILED_PRECONDITION (predict_util.cc):
# the model is not ours or not the version expected, not "still loading".
_NO_SIGNATURE = re.compile(r'Serving signature key ".*" not found')
# TensorFlow's batch scheduler, which TF Serving's --enable_batching puts in front of every
# signature (tensorflow/core/kernels/batching_util/shared_batch_scheduler.h, Queue::Schedule):
#   INVALID_ARGUMENT "Task size N is larger than maximum input batch size M": this request
#     alone is above max_batch_size; it can never succeed, so it is not retried.
#   UNAVAILABLE "The batch scheduling queue to which this task was submitted is full": the
#     queue holds max_enqueued_batches batches of other requests. The shipped batching
#     files keep an idle queue's capacity >= max_batch_size, so this is transient
#     overload and a retry after backoff can succeed.
_TASK_TOO_LARGE = re.compile(r"Task size (\d+) is larger than maximum input batch size (\d+)")
_QUEUE_FULL = re.compile(r"batch scheduling queue .*is full", re.IGNORECASE)
# gRPC's words when the TLS handshake fails on our side (BoringSSL via gRPC core).
_TLS_FAILED = re.compile(r"(Ssl|Tls) handshake failed|CERTIFICATE_VERIFY_FAILED|ssl_transport_security", re.IGNORECASE)
# grpcio < 1.6x: "Peer name X is not in peer certificate"; later: "Hostname Verification Check failed".
_NAME_MISMATCH = re.compile(
    r"Peer name .* is not in peer certificate|Hostname Verification Check failed", re.IGNORECASE
)
# The peer accepted TCP and closed it before any HTTP/2 frame: what a TLS server does to a
# client that sends no (or an untrusted) certificate, or that speaks plaintext (measured
# with grpcio 1.60 and 1.85; the server logs PEER_DID_NOT_RETURN_A_CERTIFICATE etc.). A
# plaintext server that is shutting down or restarting does the same, so on a plaintext
# channel it is an UNAVAILABLE like any other (retried), whose hint also names TLS.
_CLOSED_IN_HANDSHAKE = re.compile(
    r"(failed to connect to all addresses|connections to all backends failing).*Socket closed",
    re.IGNORECASE | re.DOTALL,
)

#: How the channel is secured, for hints on connection failures.
PLAINTEXT, TLS, MUTUAL_TLS = "plaintext", "tls", "mutual_tls"
_CLOSED_PLAINTEXT_HINT = (
    "the server closed the connection before any gRPC exchange: it was shutting down or restarting, "
    "or, if this persists, it requires TLS (pass tls=TlsConfig(...)) or the port is not a gRPC port "
    "(TF Serving: 8500 gRPC, 8501 REST)"
)
_CLOSED_HINTS = {
    TLS: (
        "the server closed the connection during the TLS handshake: it probably requires a client "
        "certificate (mutual TLS); set TlsConfig(client_cert_path=..., client_key_path=...)"
    ),
    MUTUAL_TLS: (
        "the server closed the connection during the TLS handshake: it did not accept the client "
        "certificate; use one signed by the CA the server trusts (its custom_ca)"
    ),
}


def _tls_error(details: str, transport: str | None) -> RetrievalError | None:
    if transport == PLAINTEXT:
        # No TLS on this channel: nothing it reports is a TLS failure.
        if _CLOSED_IN_HANDSHAKE.search(details):
            return ServerUnavailableError(grpc.StatusCode.UNAVAILABLE, details, _CLOSED_PLAINTEXT_HINT)
        return None
    if _NAME_MISMATCH.search(details):
        hint = "the server certificate does not name the target host; set TlsConfig(server_name_override=...)"
    elif _TLS_FAILED.search(details):
        hint = "the server certificate did not verify: give the CA that signed it as TlsConfig(ca_cert_path=...)"
    elif transport is not None and _CLOSED_IN_HANDSHAKE.search(details):
        hint = _CLOSED_HINTS[transport]
    else:
        return None
    return TlsHandshakeError(grpc.StatusCode.UNAVAILABLE, details, hint)


def batch_limit(error: RetrievalError) -> int | None:
    """M from the batcher's "Task size N is larger than maximum input batch size M", else None."""
    too_large = _TASK_TOO_LARGE.search(error.details) if error.code == grpc.StatusCode.INVALID_ARGUMENT else None
    return int(too_large.group(2)) if too_large else None


def error_for(code: grpc.StatusCode, details: str, transport: str | None = None) -> RetrievalError:
    """Build the most specific RetrievalError subclass for a status.

    transport: PLAINTEXT, TLS or MUTUAL_TLS when the status comes from our
    channel (it picks the hint for a connection closed in the handshake).
    """
    if code == grpc.StatusCode.FAILED_PRECONDITION and _NO_SIGNATURE.search(details):
        return IncompatibleModelError(details)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        too_large = _TASK_TOO_LARGE.search(details)
        if too_large:
            limit = too_large.group(2)
            return InvalidRequestError(code, details, f"split the request into batches of at most {limit} rows")
    if code == grpc.StatusCode.UNAVAILABLE:
        if _QUEUE_FULL.search(details):
            return ServerOverloadedError(code, details)
        tls = _tls_error(details, transport)
        if tls is not None:
            return tls
        if _LOADING.search(details):
            return ModelNotReadyError(code, details)
    return _BY_CODE.get(code, RetrievalError)(code, details)


def from_rpc_error(error: grpc.RpcError, transport: str | None = None) -> RetrievalError:
    """Convert a raised `grpc.RpcError` (sync or aio) into a RetrievalError.

    The only conversion point: both clients call it and raise the result with
    the gRPC exception dropped from the chain.
    """
    code_fn = getattr(error, "code", None)
    details_fn = getattr(error, "details", None)
    code = code_fn() if callable(code_fn) else None
    details = details_fn() if callable(details_fn) else None
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    converted = error_for(code, details or str(error) or code.name.lower(), transport)
    converted.__cause__ = None
    converted.__suppress_context__ = True
    return converted
