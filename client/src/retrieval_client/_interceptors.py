"""Client interceptors by shape, not by base class.

gRPC's channels take only subclasses of its interceptor classes; tracing libraries ship
objects of their own shape. OpenTelemetry's sync interceptor
(`opentelemetry.instrumentation.grpc.client_interceptor()`) has
`intercept_unary(request, metadata, client_info, invoker)` (its grpcext module); other
objects have grpc's `intercept_unary_unary(continuation, client_call_details, request)`
without inheriting. Each is wrapped in the subclass the channel needs; the client makes only
unary-unary calls, so that is the one method adapted.
"""

from __future__ import annotations

import inspect
from collections import namedtuple
from typing import Any

import grpc
import grpc.aio

_SYNC_TYPES = (
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
)
_SHAPES = "intercept_unary_unary(continuation, client_call_details, request) or intercept_unary(...)"


class _CallDetails(
    namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")),
    grpc.ClientCallDetails,
):
    pass


class _UnaryClientInfo(namedtuple("_UnaryClientInfo", ("full_method", "timeout"))):
    """What an invoker-style interceptor is told about the call."""


class _GrpcShaped(grpc.UnaryUnaryClientInterceptor):
    """An object with grpc's method that does not inherit grpc's class."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return self.inner.intercept_unary_unary(continuation, client_call_details, request)


class _InvokerShaped(grpc.UnaryUnaryClientInterceptor):
    """intercept_unary(request, metadata, client_info, invoker) -> response (OpenTelemetry's grpcext)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        outcome: list[Any] = []

        def invoker(request: Any, metadata: Any) -> Any:
            details = _CallDetails(
                client_call_details.method,
                client_call_details.timeout,
                metadata,
                client_call_details.credentials,
                client_call_details.wait_for_ready,
                client_call_details.compression,
            )
            outcome.append(continuation(details, request))
            return outcome[-1].result()  # the response, or the call's grpc.RpcError raised

        info = _UnaryClientInfo(client_call_details.method, client_call_details.timeout)
        try:
            self.inner.intercept_unary(request, client_call_details.metadata, info, invoker)
        except grpc.RpcError:
            if not outcome:
                raise
        if not outcome:
            raise RuntimeError(f"interceptor {type(self.inner).__name__} answered without calling its invoker")
        return outcome[-1]  # a grpc Call and Future: the channel reads the response (or error) from it


class _AioGrpcShaped(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await self.inner.intercept_unary_unary(continuation, client_call_details, request)


def _method(interceptor: Any, name: str, is_async: bool) -> bool:
    method = getattr(interceptor, name, None)
    return callable(method) and inspect.iscoroutinefunction(method) == is_async


def for_sync_channel(interceptor: Any) -> Any:
    """A grpc.*ClientInterceptor for grpc.intercept_channel; TypeError naming the shapes taken."""
    if isinstance(interceptor, _SYNC_TYPES):
        return interceptor
    if _method(interceptor, "intercept_unary_unary", is_async=False):
        return _GrpcShaped(interceptor)
    if _method(interceptor, "intercept_unary", is_async=False):
        return _InvokerShaped(interceptor)
    raise TypeError(
        f"RetrievalClient takes interceptors with {_SHAPES} (e.g. grpc.UnaryUnaryClientInterceptor; "
        f"async ones go to AsyncRetrievalClient), got {type(interceptor).__name__}"
    )


def for_aio_channel(interceptor: Any) -> Any:
    """A grpc.aio.ClientInterceptor for grpc.aio channels; TypeError naming the shape taken."""
    if isinstance(interceptor, grpc.aio.ClientInterceptor):
        return interceptor
    if _method(interceptor, "intercept_unary_unary", is_async=True):
        return _AioGrpcShaped(interceptor)
    raise TypeError(
        "AsyncRetrievalClient takes interceptors with an async intercept_unary_unary(continuation, "
        f"client_call_details, request) (e.g. grpc.aio.UnaryUnaryClientInterceptor), got {type(interceptor).__name__}"
    )
