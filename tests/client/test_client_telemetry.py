"""Observability with OpenTelemetry's SDK (in-memory exporter and metric reader), against a real
gRPC server: one span per logical call with one child per attempt (attempt number, status,
target), OpenTelemetry's own gRPC interceptors plugged in as they come (sync and aio), metrics
for calls, errors by code, latency and retries, and retries logged at DEBUG."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from fake_tfs import FAST_RETRY
from opentelemetry.instrumentation.grpc import aio_client_interceptors, client_interceptor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from retrieval_client import AsyncRetrievalClient, InvalidRequestError, RetrievalClient

STATUS = "tensorflow.serving.ModelService/GetModelStatus"


@pytest.fixture
def otel():
    exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    meter_provider = MeterProvider(metric_readers=[reader])
    yield exporter, reader, {"tracer_provider": tracer_provider, "meter_provider": meter_provider}
    tracer_provider.shutdown()
    meter_provider.shutdown()


def _tree(spans) -> dict:
    """{call span: [its children, oldest first]} for the client's own call spans."""
    by_id = {span.context.span_id: span for span in spans}
    calls = [s for s in spans if s.name.startswith("retrieval_client.")]
    return {
        call: sorted(
            (s for s in spans if s.parent is not None and s.parent.span_id == call.context.span_id),
            key=lambda s: s.start_time,
        )
        for call in calls
        if call.parent is None or call.parent.span_id not in by_id
    }


def _points(reader) -> dict:
    found = {}
    for resource in reader.get_metrics_data().resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found[metric.name] = [(dict(p.attributes), p) for p in metric.data.data_points]
    return found


def test_one_span_per_call_with_a_child_per_attempt_and_metrics(server, otel, caplog):
    exporter, reader, providers = otel
    server.fail_next("GetModelStatus", 2, grpc.StatusCode.UNAVAILABLE, "pod going away")
    with caplog.at_level(logging.DEBUG, logger="retrieval_client"):
        with RetrievalClient(server.target, retry=FAST_RETRY, **providers) as client:
            assert client.status()[0].state == "AVAILABLE"
            with pytest.raises(InvalidRequestError):
                client.search(["no-such-id"])
    tree = _tree(exporter.get_finished_spans())
    [status_call] = [c for c in tree if c.name == "retrieval_client.status"]
    attempts = tree[status_call]
    assert [a.name for a in attempts] == [STATUS] * 3
    assert [a.attributes["retrieval_client.attempt"] for a in attempts] == [1, 2, 3]
    assert [a.attributes["rpc.grpc.status_code"] for a in attempts] == [14, 14, 0]  # UNAVAILABLE twice, then OK
    assert {a.attributes["server.address"] for a in attempts} == {server.target}
    [search_call] = [c for c in tree if c.name == "retrieval_client.search"]
    assert not search_call.status.is_ok, "the failed call's span says so"
    retries = [r for r in caplog.records if r.levelno == logging.DEBUG and "retrying" in r.getMessage()]
    assert len(retries) == 2 and "UNAVAILABLE" in retries[0].getMessage()
    points = _points(reader)
    calls = {(a["operation"], a["code"]): p.value for a, p in points["retrieval_client.calls"]}
    assert calls[("status", "OK")] == 1 and calls[("search", "INVALID_ARGUMENT")] == 1
    [(attributes, retried)] = points["retrieval_client.retries"]
    assert retried.value == 2 and attributes == {"method": "/" + STATUS}
    assert {a["operation"] for a, _ in points["retrieval_client.call.duration"]} >= {"status", "search"}


def test_opentelemetrys_sync_interceptor_plugs_in_and_nests_under_each_attempt(server, otel):
    exporter, _, providers = otel
    interceptor = client_interceptor(tracer_provider=providers["tracer_provider"])
    server.fail_next("GetModelStatus", 1, grpc.StatusCode.UNAVAILABLE, "pod going away")
    with RetrievalClient(server.target, retry=FAST_RETRY, interceptors=[interceptor], **providers) as client:
        assert client.status()[0].state == "AVAILABLE"
    spans = exporter.get_finished_spans()
    [call] = _tree(spans)
    attempts = _tree(spans)[call]
    assert len(attempts) == 2
    for attempt in attempts:
        [grpc_span] = [s for s in spans if s.parent is not None and s.parent.span_id == attempt.context.span_id]
        assert grpc_span.name == f"/{STATUS}"  # OpenTelemetry's own span for the RPC
        assert grpc_span.attributes["rpc.grpc.status_code"] == attempt.attributes["rpc.grpc.status_code"]


def test_opentelemetrys_aio_interceptors_plug_in(server, otel):
    exporter, _, providers = otel

    async def run() -> None:
        interceptors = aio_client_interceptors(tracer_provider=providers["tracer_provider"])
        async with AsyncRetrievalClient(server.target, interceptors=interceptors, **providers) as client:
            await client.status()

    asyncio.run(run())
    spans = exporter.get_finished_spans()
    [call] = _tree(spans)
    [attempt] = _tree(spans)[call]
    assert [s.name for s in spans if s.parent is not None and s.parent.span_id == attempt.context.span_id] == [
        f"/{STATUS}"
    ]


def test_interceptors_are_taken_by_shape(server):
    seen = []

    class Recorder:  # grpc's method, without grpc's base class
        def intercept_unary_unary(self, continuation, client_call_details, request):
            seen.append(client_call_details.method)
            return continuation(client_call_details, request)

    with RetrievalClient(server.target, interceptors=[Recorder()]) as client:
        client.status()
    assert seen == [f"/{STATUS}"]
    with pytest.raises(TypeError, match="intercept_unary_unary"):
        RetrievalClient(server.target, interceptors=[object()])
    with pytest.raises(TypeError, match="async intercept_unary_unary"):
        AsyncRetrievalClient(server.target, interceptors=[object()])
