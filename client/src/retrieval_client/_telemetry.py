"""Traces, metrics and retry logs of client calls, with no dependency of their own.

When OpenTelemetry's API (`opentelemetry-api`) is installed, each logical call is one span
("retrieval_client.search", ...) whose children are its attempts (one span per RPC sent, with
its method, attempt number, target and gRPC status), and three instruments record calls by
operation and status code, their duration and the retries. The API is a no-op until the
application installs an SDK (or passes tracer_provider / meter_provider). Without the API,
nothing is recorded. Retries are logged at DEBUG on the "retrieval_client" logger either way.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

from ._errors import RetrievalError
from ._version import __version__

log = logging.getLogger("retrieval_client")

try:  # optional: the client needs only grpcio, protobuf and numpy
    from opentelemetry import metrics as otel_metrics
    from opentelemetry import trace as otel_trace
except ImportError:  # pragma: no cover - exercised in the matrix venvs, which lack it
    otel_metrics = otel_trace = None  # type: ignore[assignment]

SCOPE = "retrieval_client"
ATTEMPT = "retrieval_client.attempt"


class Telemetry:
    """One client's tracer and instruments (no-ops without OpenTelemetry)."""

    def __init__(self, target: str, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        self.target = target
        self._tracer = otel_trace.get_tracer(SCOPE, __version__, tracer_provider) if otel_trace else None
        self._calls = self._duration = self._retries = None
        if otel_metrics is not None:
            meter = otel_metrics.get_meter(SCOPE, __version__, meter_provider)
            self._calls = meter.create_counter(
                "retrieval_client.calls", unit="{call}", description="Logical calls, by operation and status code"
            )
            self._duration = meter.create_histogram(
                "retrieval_client.call.duration", unit="s", description="Logical call duration, retries included"
            )
            self._retries = meter.create_counter(
                "retrieval_client.retries", unit="{retry}", description="Attempts after the first, by method"
            )

    @contextlib.contextmanager
    def call(self, operation: str) -> Iterator[None]:
        """One logical call (metadata fetch, attempts and backoff): the parent span, and its metrics."""
        started = time.monotonic()
        code = "OK"
        span = self._tracer.start_as_current_span(f"{SCOPE}.{operation}") if self._tracer else contextlib.nullcontext()
        try:
            with span:
                yield
        except RetrievalError as exc:
            code = exc.code.name
            raise
        except BaseException:
            code = "CLIENT_ERROR"  # raised before or after the RPCs: bad arguments, an incompatible model
            raise
        finally:
            if self._calls is not None and self._duration is not None:
                self._calls.add(1, {"operation": operation, "code": code})
                self._duration.record(time.monotonic() - started, {"operation": operation})

    @contextlib.contextmanager
    def attempt(self, method: str, number: int) -> Iterator[None]:
        """One RPC sent: a child span of the call's, with the attempt number, target and status."""
        if number > 1 and self._retries is not None:
            self._retries.add(1, {"method": method})
        if self._tracer is None:
            yield
            return
        service, _, name = method.strip("/").partition("/")
        attributes = {
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": name,
            "server.address": self.target,
            ATTEMPT: number,
        }
        with self._tracer.start_as_current_span(
            f"{service}/{name}", kind=otel_trace.SpanKind.CLIENT, attributes=attributes
        ) as span:
            try:
                yield
            except RetrievalError as exc:
                span.set_attribute("rpc.grpc.status_code", exc.code.value[0])
                raise
            span.set_attribute("rpc.grpc.status_code", 0)
