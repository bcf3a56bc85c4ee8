"""Construction shared by RetrievalClient and AsyncRetrievalClient.

Both classes inherit this __init__ and the per-call settings merge, so their
constructors and defaults cannot drift.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import grpc

from . import _channel
from ._errors import MUTUAL_TLS, PLAINTEXT, TLS
from ._flows import ClientState
from ._requests import ModelRef
from ._types import CallSettings, Headers, RetryPolicy, TlsConfig

DEFAULT_MODEL = "scann_model"
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_WAIT_TIMEOUT_S = 60.0


def _headers(headers: Headers | None) -> tuple[tuple[str, Any], ...]:
    """Validate gRPC metadata early, with a message naming the bad entry."""
    if headers is None:
        return ()
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    checked = []
    for pair in pairs:
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise TypeError(f"headers must be a mapping or (key, value) pairs, got {pair!r}")
        key, value = pair
        if not isinstance(key, str) or not key or key != key.lower() or not key.isascii() or key.startswith("grpc-"):
            raise ValueError(f"header key {key!r} must be lowercase ASCII and not start with 'grpc-'")
        if key.endswith("-bin"):
            if not isinstance(value, bytes):
                raise TypeError(f"header {key!r} ends in '-bin', so its value must be bytes")
        elif not isinstance(value, str) or not value.isascii() or not value.isprintable():
            raise ValueError(f"header {key!r} needs a printable ASCII str value (use a '-bin' key for bytes)")
        checked.append((key, value))
    return tuple(checked)


def _compression(value: grpc.Compression | None) -> grpc.Compression | None:
    if value is not None and not isinstance(value, grpc.Compression):
        raise TypeError(f"compression must be a grpc.Compression (e.g. grpc.Compression.Gzip) or None, got {value!r}")
    return value


class _ClientBase:
    #: Interceptor base classes this client's channel accepts (set by each subclass).
    _INTERCEPTOR_TYPES: tuple[type, ...] = ()

    def __init__(
        self,
        target: str,
        model: str = DEFAULT_MODEL,
        *,
        version: int | None = None,
        version_label: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        tls: TlsConfig | None = None,
        retry: RetryPolicy | None = None,
        headers: Headers | None = None,
        interceptors: Sequence[Any] = (),
        wait_for_ready: bool = False,
        compression: grpc.Compression | None = None,
        keepalive_time_ms: int = _channel.DEFAULT_KEEPALIVE_TIME_MS,
        keepalive_timeout_ms: int = _channel.DEFAULT_KEEPALIVE_TIMEOUT_MS,
        keepalive_permit_without_calls: bool = False,
        max_reconnect_backoff_ms: int = _channel.DEFAULT_MAX_RECONNECT_BACKOFF_MS,
        max_message_bytes: int = _channel.DEFAULT_MAX_MESSAGE_BYTES,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        """Configure a client; no connection is made until the first call.

        target: "host:port", or "dns:///name.namespace.svc.cluster.local:8500"
            for a Kubernetes headless Service (calls are spread round-robin
            over all resolved pods).
        model: the TF Serving model name (--model_name).
        version / version_label: pin a version (mutually exclusive); by
            default the server's latest AVAILABLE version answers.
        timeout_s: the deadline of each call unless the call overrides it; it
            covers the metadata fetch, every attempt and the backoff between.
        tls: TlsConfig for TLS / mutual TLS; None means plaintext.
        retry: RetryPolicy for UNAVAILABLE and server CANCELLED (default: up
            to 4 attempts, 0.1-2 s backoff, all within timeout_s).
        headers: gRPC metadata sent with every call (e.g. {"authorization":
            "Bearer ..."}); a call's own headers= are sent after these.
        interceptors: gRPC client interceptors, outermost first: grpc.*ClientInterceptor
            for RetrievalClient, grpc.aio.*ClientInterceptor for AsyncRetrievalClient.
        wait_for_ready: True makes calls wait (within their deadline) for a
            connection instead of failing fast with UNAVAILABLE.
        compression: grpc.Compression for requests (e.g. grpc.Compression.Gzip).
        keepalive_*: HTTP/2 keepalive pings that detect dead connections.
        max_reconnect_backoff_ms: longest wait between reconnection attempts
            (gRPC's default is 120 s; 2 s serves again within ~2 s of the server's return).
        max_message_bytes: send and receive limit (gRPC's default is 4 MiB).
        channel_options: extra gRPC channel arguments, overriding the above.
        """
        self._target = _channel.check_target(target)
        self._state = ClientState(ModelRef(model, version, version_label), timeout_s, retry or RetryPolicy())
        self._defaults = CallSettings(_headers(headers), bool(wait_for_ready), _compression(compression))
        self._interceptors = tuple(interceptors)
        for interceptor in self._interceptors:
            if not isinstance(interceptor, self._INTERCEPTOR_TYPES):
                names = " or ".join(f"{t.__module__}.{t.__qualname__}" for t in self._INTERCEPTOR_TYPES)
                raise TypeError(
                    f"{type(self).__name__} takes interceptors of type {names}, got {type(interceptor).__name__}"
                )
        self._options = _channel.channel_options(
            max_message_bytes=max_message_bytes,
            keepalive_time_ms=keepalive_time_ms,
            keepalive_timeout_ms=keepalive_timeout_ms,
            keepalive_permit_without_calls=keepalive_permit_without_calls,
            max_reconnect_backoff_ms=max_reconnect_backoff_ms,
            tls=tls,
            extra=channel_options,
        )
        # Read the PEM files now so a wrong path fails at construction.
        self._credentials = _channel.credentials(tls) if tls is not None else None
        self._transport = PLAINTEXT if tls is None else (MUTUAL_TLS if tls.client_cert_path else TLS)
        self._closed = False
        self._channel: Any = None  # created on first use, see _callables()
        self._lock = threading.Lock()
        # Single-flight: calls marked shared (the metadata fetch) in flight, by request.
        self._inflight: dict = {}

    @property
    def target(self) -> str:
        """The gRPC target this client connects to."""
        return self._target

    @property
    def model(self) -> str:
        """The model name every request carries."""
        return self._state.ref.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._target!r}, {self._state.ref.describe()})"

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} for {self._target!r} is closed; create a new client")

    def _settings(
        self, headers: Headers | None, wait_for_ready: bool | None, compression: grpc.Compression | None
    ) -> CallSettings:
        """The client's defaults with one call's overrides."""
        defaults = self._defaults
        return CallSettings(
            headers=defaults.headers + _headers(headers),
            wait_for_ready=defaults.wait_for_ready if wait_for_ready is None else bool(wait_for_ready),
            compression=defaults.compression if compression is None else _compression(compression),
        )

    @staticmethod
    def _call_kwargs(settings: CallSettings, timeout_s: float) -> dict:
        """Keyword arguments of one gRPC multicallable call (sync and aio take the same)."""
        kwargs: dict = {"timeout": timeout_s, "wait_for_ready": settings.wait_for_ready}
        if settings.headers:
            kwargs["metadata"] = settings.headers
        if settings.compression is not None:
            kwargs["compression"] = settings.compression
        return kwargs
