"""Construction shared by RetrievalClient and AsyncRetrievalClient.

Both classes inherit this __init__ and the per-call settings merge, so their
constructors and defaults cannot drift.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

import grpc

from . import _channel
from ._errors import MUTUAL_TLS, PLAINTEXT, TLS, DeadlineExceededError
from ._flows import ClientState, Rpc
from ._hedging import HedgePolicy, Latencies
from ._requests import RESPONSE_TYPES, ModelRef
from ._telemetry import Telemetry
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
    #: Wraps one interceptor for this client's kind of channel, or raises TypeError (per subclass).
    _adapt_interceptor: Callable[[Any], Any]

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
        tracer_provider: Any = None,
        meter_provider: Any = None,
        credentials: grpc.ChannelCredentials | None = None,
        token_provider: Callable[[], str] | None = None,
        hedging: HedgePolicy | None = None,
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
        interceptors: gRPC client interceptors, outermost first; they see each attempt.
            RetrievalClient: objects with grpc's intercept_unary_unary (subclasses
            of grpc.UnaryUnaryClientInterceptor or not) or OpenTelemetry's
            intercept_unary (opentelemetry.instrumentation.grpc.client_interceptor());
            AsyncRetrievalClient: an async intercept_unary_unary (grpc.aio interceptors,
            opentelemetry.instrumentation.grpc.aio_client_interceptors()).
        wait_for_ready: True makes calls wait (within their deadline) for a
            connection instead of failing fast with UNAVAILABLE.
        compression: grpc.Compression for requests (e.g. grpc.Compression.Gzip).
        keepalive_*: HTTP/2 keepalive pings that detect dead connections.
        max_reconnect_backoff_ms: longest wait between reconnection attempts
            (gRPC's default is 120 s; 1 s serves again within ~1 s of the server's return).
        max_message_bytes: send and receive limit (gRPC's default is 4 MiB).
        channel_options: extra gRPC channel arguments, overriding the above.
        tracer_provider / meter_provider: OpenTelemetry providers for the client's
            spans (one per call, a child per attempt) and metrics; None: the global
            ones. Used only when opentelemetry-api is installed (see _telemetry).
        credentials: a grpc.ChannelCredentials to connect with instead of tls=
            (e.g. grpc.ssl_channel_credentials(...), or a composite with call
            credentials); TLS hints are given as for tls=TlsConfig().
        token_provider: called before every attempt for a token sent as
            "authorization: Bearer <token>", so refreshed tokens (workload
            identity, AWS/GCP) are picked up; plaintext channels too.
        hedging: HedgePolicy() sends a copy of an attempt that has not answered
            within a delay derived from observed latency (round robin: to another
            pod); the first answer wins. None (default): no copies.
        """
        self._target = _channel.check_target(target)
        self._state = ClientState(ModelRef(model, version, version_label), timeout_s, retry or RetryPolicy())
        self._defaults = CallSettings(_headers(headers), bool(wait_for_ready), _compression(compression))
        self._interceptors = tuple(self._adapt_interceptor(interceptor) for interceptor in interceptors)
        self._telemetry = Telemetry(self._target, tracer_provider, meter_provider)
        self._options = _channel.channel_options(
            max_message_bytes=max_message_bytes,
            keepalive_time_ms=keepalive_time_ms,
            keepalive_timeout_ms=keepalive_timeout_ms,
            keepalive_permit_without_calls=keepalive_permit_without_calls,
            max_reconnect_backoff_ms=max_reconnect_backoff_ms,
            tls=tls,
            extra=channel_options,
        )
        if credentials is not None and tls is not None:
            raise ValueError("give tls= or credentials=, not both (credentials= replaces the TlsConfig)")
        if credentials is not None and not isinstance(credentials, grpc.ChannelCredentials):
            raise TypeError(f"credentials must be a grpc.ChannelCredentials, got {type(credentials).__name__}")
        if token_provider is not None and not callable(token_provider):
            raise TypeError("token_provider must be a callable returning the token (str)")
        # Read the PEM files now so a wrong path fails at construction.
        self._credentials = _channel.credentials(tls) if tls is not None else credentials
        self._transport = (
            (MUTUAL_TLS if tls.mutual else TLS) if tls is not None else (TLS if credentials is not None else PLAINTEXT)
        )
        self._token_provider = token_provider
        if hedging is not None and not isinstance(hedging, HedgePolicy):
            raise TypeError(f"hedging must be a HedgePolicy or None, got {type(hedging).__name__}")
        self._latencies = Latencies(hedging) if hedging is not None else None
        self._closed = False
        self._channel: Any = None  # RetrievalClient's, created on first use, see _callables()
        # AsyncRetrievalClient's: a channel and its callables per event loop.
        self._loop_channels: dict[Any, tuple[Any, dict[str, Callable[..., Any]]]] = {}
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

    def _call_kwargs(self, settings: CallSettings, timeout_s: float) -> dict:
        """Keyword arguments of one gRPC multicallable call (sync and aio take the same)."""
        kwargs: dict = {"timeout": timeout_s, "wait_for_ready": settings.wait_for_ready}
        headers = settings.headers
        if self._token_provider is not None:
            token = self._token_provider()
            if not isinstance(token, str) or not token:
                raise TypeError(f"token_provider must return a non-empty str, got {token!r}")
            headers = (*headers, *_headers({"authorization": f"Bearer {token}"}))
        if headers:
            kwargs["metadata"] = headers
        if settings.compression is not None:
            kwargs["compression"] = settings.compression
        return kwargs

    def _open_channel(self, grpc_module: ModuleType, **kwargs: Any) -> Any:
        """A new channel from `grpc_module` (grpc or grpc.aio) with this client's target,
        credentials and options; kwargs go to the channel constructor (aio: interceptors)."""
        if self._credentials is None:
            return grpc_module.insecure_channel(self._target, options=self._options, **kwargs)
        return grpc_module.secure_channel(self._target, self._credentials, options=self._options, **kwargs)

    @staticmethod
    def _bind(channel: Any) -> dict[str, Callable[..., Any]]:
        """One unary-unary callable per TF Serving method the client uses."""
        return {
            method: channel.unary_unary(
                method,
                request_serializer=lambda message: message.SerializeToString(),
                response_deserializer=response_type.FromString,
            )
            for method, response_type in RESPONSE_TYPES.items()
        }

    @staticmethod
    def _flight_key(action: Rpc) -> tuple[Any, ...]:
        """Identical shared calls (same method, request and settings) answer each other."""
        return (action.method, action.request.SerializeToString(deterministic=True), action.settings)

    @staticmethod
    def _flight_timeout() -> DeadlineExceededError:
        """The error of a call whose deadline passed while it waited for a shared call."""
        return DeadlineExceededError(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "Deadline Exceeded (waiting for the metadata another call is fetching)",
        )
