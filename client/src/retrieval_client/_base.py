"""Construction shared by RetrievalClient and AsyncRetrievalClient.

Both classes inherit this __init__, so their constructors cannot drift.
"""
from __future__ import annotations

import threading
from typing import Any, Optional, Sequence, Tuple

from . import _channel
from ._flows import ClientState
from ._requests import ModelRef
from ._types import RetryPolicy, TlsConfig

DEFAULT_MODEL = "scann_model"
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_WAIT_TIMEOUT_S = 60.0


class _ClientBase:
    def __init__(
        self,
        target: str,
        model: str = DEFAULT_MODEL,
        *,
        version: Optional[int] = None,
        version_label: Optional[str] = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        tls: Optional[TlsConfig] = None,
        retry: Optional[RetryPolicy] = None,
        keepalive_time_ms: int = _channel.DEFAULT_KEEPALIVE_TIME_MS,
        keepalive_timeout_ms: int = _channel.DEFAULT_KEEPALIVE_TIMEOUT_MS,
        keepalive_permit_without_calls: bool = False,
        max_message_bytes: int = _channel.DEFAULT_MAX_MESSAGE_BYTES,
        channel_options: Sequence[Tuple[str, Any]] = (),
    ) -> None:
        """Configure a client; no connection is made until the first call.

        target: "host:port", or "dns:///name.namespace.svc.cluster.local:8500"
            for a Kubernetes headless Service (calls are spread round-robin
            over all resolved pods).
        model: the TF Serving model name (--model_name).
        version / version_label: pin a version (mutually exclusive); by
            default the server's latest AVAILABLE version answers.
        timeout_s: deadline of every RPC attempt unless a call overrides it.
        tls: TlsConfig for TLS / mutual TLS; None means plaintext.
        retry: RetryPolicy for UNAVAILABLE (default: 4 attempts, 0.1-2 s backoff).
        keepalive_*: HTTP/2 keepalive pings that detect dead connections.
        max_message_bytes: send and receive limit (gRPC's default is 4 MiB).
        channel_options: extra gRPC channel arguments, overriding the above.
        """
        self._target = _channel.check_target(target)
        self._state = ClientState(ModelRef(model, version, version_label), timeout_s, retry or RetryPolicy())
        self._options = _channel.channel_options(
            max_message_bytes=max_message_bytes,
            keepalive_time_ms=keepalive_time_ms,
            keepalive_timeout_ms=keepalive_timeout_ms,
            keepalive_permit_without_calls=keepalive_permit_without_calls,
            tls=tls,
            extra=channel_options,
        )
        # Read the PEM files now so a wrong path fails at construction.
        self._credentials = _channel.credentials(tls) if tls is not None else None
        self._closed = False
        self._channel: Any = None  # created on first use, see _callables()
        self._lock = threading.Lock()

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
