"""Channel settings shared by the sync and async clients.

Defaults are chosen for TF Serving behind a Kubernetes headless Service:
`dns:///name.namespace.svc.cluster.local:8500` resolves to every pod IP and
round_robin spreads calls over all of them (a ClusterIP Service would pin
each connection to one pod). The server's `grpc.max_connection_age_ms`
makes clients re-resolve, so pods added by the HPA get traffic.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

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
    tls: Optional[TlsConfig],
    extra: Sequence[Tuple[str, Any]] = (),
) -> List[Tuple[str, Any]]:
    """gRPC channel arguments; `extra` entries override the defaults."""
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
    }
    if tls is not None and tls.server_name_override:
        options["grpc.ssl_target_name_override"] = tls.server_name_override
    options.update(dict(extra))
    return list(options.items())


def _read(path: Optional[str], what: str) -> Optional[bytes]:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the TLS {what} {path!r}: {exc.strerror or exc}") from None


def credentials(tls: TlsConfig) -> grpc.ChannelCredentials:
    """SSL credentials from the PEM files named in `tls`."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca_cert_path, "CA certificate"),
        private_key=_read(tls.client_key_path, "client key"),
        certificate_chain=_read(tls.client_cert_path, "client certificate"),
    )
