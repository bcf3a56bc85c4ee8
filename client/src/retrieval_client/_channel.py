"""Channel settings shared by the sync and async clients.

Defaults are chosen for TF Serving behind a Kubernetes headless Service:
`dns:///name.namespace.svc.cluster.local:8500` resolves to every pod IP and
round_robin spreads calls over all of them (a ClusterIP Service would pin
each connection to one pod). The server's `grpc.max_connection_age_ms`
makes clients re-resolve, so pods added by the HPA get traffic.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from ._types import TlsConfig
from ._version import __version__

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# TF Serving keeps gRPC's server default of one ping per 5 minutes while
# calls are in flight (and one per 2 hours on idle connections), answering
# more with GOAWAY "too_many_pings". 60 s pings only go out during calls
# unless keepalive_permit_without_calls is set, which then needs matching
# server flags (--grpc_channel_arguments=grpc.keepalive_permit_without_calls=1,...).
DEFAULT_KEEPALIVE_TIME_MS = 60_000
DEFAULT_KEEPALIVE_TIMEOUT_MS = 20_000
# Reconnection after an outage. gRPC's defaults back off from 1 s by x1.6 up to 120 s, so
# a client that saw a 40 s outage kept failing for ~26 s after the server was back
# (measured). Capped at 1 s, a channel tries again every <= 1.2 s (+-20 % jitter): it serves
# within ~1 s of the server's return, at the cost of one TCP connect per second per client
# while the server is down. A lower start (250 ms) rides out quick pod restarts.
DEFAULT_INITIAL_RECONNECT_BACKOFF_MS = 250
DEFAULT_MAX_RECONNECT_BACKOFF_MS = 1_000
# Kubernetes gives restarted pods new IPs: a dns:/// target must re-resolve to find them.
# gRPC re-resolves on connection failures, at most once per this interval (default 30 s).
DEFAULT_DNS_MIN_RESOLUTION_INTERVAL_MS = 5_000

_SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


def check_target(target: str) -> str:
    """Reject URL-style targets gRPC would misread."""
    if not target or not isinstance(target, str):
        raise ValueError("target must be 'host:port' or 'dns:///name:port'")
    if target.startswith(("http://", "https://", "grpc://")):
        raise ValueError(
            f"target {target!r} is a URL; use 'host:port' or 'dns:///host:port' "
            "(TLS is chosen with tls=TlsConfig(...), not by the scheme)"
        )
    return target


def channel_options(
    *,
    max_message_bytes: int,
    keepalive_time_ms: int,
    keepalive_timeout_ms: int,
    keepalive_permit_without_calls: bool,
    tls: TlsConfig | None,
    max_reconnect_backoff_ms: int = DEFAULT_MAX_RECONNECT_BACKOFF_MS,
    extra: Sequence[tuple[str, Any]] = (),
) -> list[tuple[str, Any]]:
    """gRPC channel arguments; `extra` entries override the defaults."""
    if max_reconnect_backoff_ms < 1:
        raise ValueError(f"max_reconnect_backoff_ms must be >= 1, got {max_reconnect_backoff_ms!r}")
    initial = min(DEFAULT_INITIAL_RECONNECT_BACKOFF_MS, int(max_reconnect_backoff_ms))
    options = {
        # Both spellings: the legacy argument wins over a resolver-provided
        # service config, the service config is the documented way.
        "grpc.lb_policy_name": "round_robin",
        "grpc.service_config": _SERVICE_CONFIG,
        "grpc.keepalive_time_ms": int(keepalive_time_ms),
        "grpc.keepalive_timeout_ms": int(keepalive_timeout_ms),
        "grpc.keepalive_permit_without_calls": int(bool(keepalive_permit_without_calls)),
        "grpc.max_send_message_length": int(max_message_bytes),
        "grpc.max_receive_message_length": int(max_message_bytes),
        "grpc.primary_user_agent": f"retrieval-client/{__version__}",
        "grpc.initial_reconnect_backoff_ms": initial,
        "grpc.max_reconnect_backoff_ms": int(max_reconnect_backoff_ms),
        "grpc.dns_min_time_between_resolutions_ms": DEFAULT_DNS_MIN_RESOLUTION_INTERVAL_MS,
    }
    if tls is not None and tls.server_name_override:
        options["grpc.ssl_target_name_override"] = tls.server_name_override
    options.update(dict(extra))
    return list(options.items())


def _read(path: str | None, what: str, data: bytes | None = None) -> bytes | None:
    if path is None:
        return data
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the TLS {what} {path!r}: {exc.strerror or exc}") from None


def credentials(tls: TlsConfig) -> grpc.ChannelCredentials:
    """SSL credentials from the PEM files named in `tls`, or its PEM bytes."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca_cert_path, "CA certificate", tls.ca_cert),
        private_key=_read(tls.client_key_path, "client key", tls.client_key),
        certificate_chain=_read(tls.client_cert_path, "client certificate", tls.client_cert),
    )


class ReconnectWatch:
    """Keeps a blocking (grpc.Channel) channel polled while it reconnects.

    gRPC's core notices a connection attempt's result only while some thread polls the
    channel. Blocking calls that fail fast (UNAVAILABLE) stop polling at once, so after an
    outage the channel saw the server's return only at gRPC's backup poll, every 5 s
    (GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS, process-wide), or never where that poller
    is broken (grpcio 1.68-1.70: grpc/grpc#38290, fixed by grpc/grpc#39894). A connectivity
    subscription makes a grpc thread poll the channel (every 0.2 s, grpc/_channel.py
    `_poll_connectivity`) until it is READY again; then the watch ends. grpc.aio channels
    are polled by their own poller and need none.
    """

    def __init__(self, channel: grpc.Channel) -> None:
        self._channel = channel
        self._lock = threading.Lock()
        self._watching = False

    def start(self) -> None:
        """Watch until READY (no-op while a watch runs)."""
        with self._lock:
            if self._watching:
                return
            self._watching = True
        self._channel.subscribe(self._seen, try_to_connect=True)

    def stop(self) -> None:
        """End a running watch before the channel closes; waits (<= 0.5 s) for gRPC's polling
        thread to notice, which otherwise may poll the closed channel and print a traceback
        ("Channel closed!", grpc/_channel.py `_poll_connectivity`)."""
        with self._lock:
            watching, self._watching = self._watching, False
        if watching:
            self._channel.unsubscribe(self._seen)
        # The thread outlives a finished watch by up to one 0.2 s poll.
        state = getattr(self._channel, "_connectivity_state", None)  # grpc internals: checked, not required
        give_up = time.monotonic() + 0.5
        while getattr(state, "polling", False) and time.monotonic() < give_up:
            time.sleep(0.01)

    def _seen(self, state: grpc.ChannelConnectivity) -> None:
        if state not in (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.SHUTDOWN):
            return
        with self._lock:
            self._watching = False
        # One subscription ends per READY delivered to it; a start() racing with this one has its
        # own subscription, which gets its own READY.
        self._channel.unsubscribe(self._seen)
