"""Domain errors of the local server, and the one place they become gRPC status codes.

Codes and messages follow TensorFlow Serving's (servables/tensorflow/predict_util.cc,
core/server_core.cc) so a client sees the same thing from both servers.
"""

from __future__ import annotations

import grpc


class ServingError(Exception):
    """Base: `code` is the gRPC status; str(err) is the message sent to the client."""

    code = grpc.StatusCode.INTERNAL


class NotFoundError(ServingError):
    """Unknown model name or version, or no version loaded yet (TF Serving: "Servable not found")."""

    code = grpc.StatusCode.NOT_FOUND


class InvalidInputError(ServingError):
    """The request is malformed: wrong inputs, dtype, shape, unknown id, unknown label."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class FailedPreconditionError(ServingError):
    """The request cannot run in the current state (e.g. tensors that cannot be merged into one batch)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class SignatureNotFoundError(FailedPreconditionError):
    """TF Serving answers an unknown signature key with FAILED_PRECONDITION."""


class ResourceExhaustedError(ServingError):
    """The server is out of a resource (memory, time in the batching queue) for this request."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnavailableError(ServingError):
    """Transient: the batching queue is full (TF's shared_batch_scheduler.h); a retry later may succeed."""

    code = grpc.StatusCode.UNAVAILABLE


class InternalError(ServingError):
    """A server-side failure with a message worth showing (e.g. TF Serving's "Tensor concat operation failed")."""

    code = grpc.StatusCode.INTERNAL


class _TensorFlowError(ServingError):
    """A graph error with TensorFlow's own status code (TF's codes are gRPC's)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def from_tensorflow(err: Exception) -> ServingError:
    """Maps a TensorFlow runtime error of the graph to a ServingError with the graph's message."""
    import tensorflow as tf

    message = clean_message(getattr(err, "message", str(err)))
    if isinstance(err, tf.errors.InvalidArgumentError):
        return InvalidInputError(message)
    codes = {c.value[0]: c for c in grpc.StatusCode}
    return _TensorFlowError(codes.get(getattr(err, "error_code", 13), grpc.StatusCode.INTERNAL), message)


def clean_message(message: str) -> str:
    """A TF error message without its node and stack decorations: the words a user can act on."""
    # Keep the graph's own words, drop TF's node/stack decorations after them.
    keep = []
    for line in message.strip().splitlines():
        if line.strip().startswith(("[[", "Detected at node", "File ", "Graph execution error")) or not line.strip():
            continue
        keep.append(line.strip())
    text = " ".join(keep) or message.strip()
    text = text.replace("<stack traces unavailable>", "").strip()
    return text.split(" [Op:")[0]
