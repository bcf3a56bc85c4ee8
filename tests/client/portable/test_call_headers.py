"""Headers (gRPC metadata), interceptors, wait_for_ready and compression, sync and async,
observed where they land: at a real gRPC server and on the wire."""

from __future__ import annotations

import asyncio
import collections

import grpc
import grpc.aio
import numpy as np
import pytest
from grpc_stand_ins import MODEL, counting_proxy

from retrieval_client import AsyncRetrievalClient, RetrievalClient

METHODS = ("GetModelMetadata", "Predict", "GetModelStatus")


def _sync_calls(client: RetrievalClient, **per_call) -> None:
    client.search(["item-1"], **per_call)  # GetModelMetadata, then Predict
    client.status(**per_call)


async def _async_calls(client: AsyncRetrievalClient, **per_call) -> None:
    await client.search(["item-1"], **per_call)
    await client.status(**per_call)


def test_constructor_and_per_call_headers_reach_the_server_sync(recorder):
    with RetrievalClient(recorder.target, MODEL, headers={"authorization": "Bearer t0k3n"}) as client:
        _sync_calls(client, headers=[("x-request-id", "req-42"), ("x-trace-bin", b"\x00\x01")])
        client.status()
    seen = {method: recorder.headers(method) for method in METHODS}
    for method in METHODS:
        first = seen[method][0]
        assert first["authorization"] == "Bearer t0k3n", (method, first)
        assert first["x-request-id"] == "req-42" and first["x-trace-bin"] == b"\x00\x01", (method, first)
        assert first["user-agent"].startswith("retrieval-client/"), first
    last_status = seen["GetModelStatus"][-1]
    assert last_status["authorization"] == "Bearer t0k3n" and "x-request-id" not in last_status


def test_constructor_and_per_call_headers_reach_the_server_async(recorder):
    async def run():
        async with AsyncRetrievalClient(recorder.target, MODEL, headers=[("authorization", "Bearer t0k3n")]) as client:
            await _async_calls(client, headers={"x-request-id": "req-43"})

    asyncio.run(run())
    for method in METHODS:
        first = recorder.headers(method)[0]
        assert (first["authorization"], first["x-request-id"]) == ("Bearer t0k3n", "req-43"), (method, first)


@pytest.mark.parametrize(
    "headers, error",
    [
        ({"Authorization": "x"}, ValueError),  # gRPC keys are lowercase
        ({"grpc-timeout": "1"}, ValueError),  # reserved
        ({"x-bin": "text"}, TypeError),  # -bin keys carry bytes
        ({"x-id": "line\nbreak"}, ValueError),
    ],
)
def test_bad_headers_are_refused_before_sending(recorder, headers, error):
    with pytest.raises(error):
        RetrievalClient(recorder.target, MODEL, headers=headers)
    with RetrievalClient(recorder.target, MODEL) as client, pytest.raises(error):
        client.status(headers=headers)
    assert recorder.calls == []


class _Details(
    collections.namedtuple(
        "_Details", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,
):
    pass


class SyncTracing(grpc.UnaryUnaryClientInterceptor):
    """Adds a trace header and records what each call carried."""

    def __init__(self) -> None:
        self.seen = []

    def intercept_unary_unary(self, continuation, details, request):
        self.seen.append((details.method, details.timeout, details.wait_for_ready))
        metadata = list(details.metadata or ()) + [("x-trace-id", "sync-trace")]
        return continuation(
            _Details(
                details.method,
                details.timeout,
                metadata,
                details.credentials,
                details.wait_for_ready,
                details.compression,
            ),
            request,
        )


class AsyncTracing(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self) -> None:
        self.seen = []

    async def intercept_unary_unary(self, continuation, details, request):
        self.seen.append((details.method, details.timeout, details.wait_for_ready))
        metadata = grpc.aio.Metadata(*(tuple(details.metadata or ()) + (("x-trace-id", "async-trace"),)))
        return await continuation(details._replace(metadata=metadata), request)


def test_interceptors_see_every_call_and_can_add_headers(recorder):
    sync = SyncTracing()
    with RetrievalClient(recorder.target, MODEL, interceptors=[sync], headers={"x-app": "a"}) as client:
        _sync_calls(client, timeout_s=3.0, wait_for_ready=True)
    aio = AsyncTracing()

    async def run():
        async with AsyncRetrievalClient(recorder.target, MODEL, interceptors=[aio]) as client:
            await _async_calls(client, timeout_s=3.0, wait_for_ready=True)

    asyncio.run(run())
    for interceptor in (sync, aio):
        methods = [(m.decode() if isinstance(m, bytes) else m).rpartition("/")[2] for m, _, _ in interceptor.seen]
        assert methods == list(METHODS)
        assert all(0 < timeout <= 3.0 and ready is True for _, timeout, ready in interceptor.seen), interceptor.seen
    traces = [h["x-trace-id"] for m in METHODS for h in recorder.headers(m)]
    assert sorted(set(traces)) == ["async-trace", "sync-trace"] and len(traces) == 6
    assert recorder.headers("Predict")[0]["x-app"] == "a"


def test_interceptors_of_the_wrong_kind_are_refused(recorder):
    with pytest.raises(TypeError, match="grpc.aio"):
        AsyncRetrievalClient(recorder.target, MODEL, interceptors=[SyncTracing()])
    with pytest.raises(TypeError, match="UnaryUnaryClientInterceptor"):
        RetrievalClient(recorder.target, MODEL, interceptors=[object()])


def _bytes_sent(recorder, compression_default, compression_call, use_async: bool) -> int:
    """Bytes the client sent for one search of 2000 identical ids through a counting proxy."""
    ids = ["item-1"] * 2000  # compresses ~100x
    with counting_proxy(recorder.target) as (target, counts):
        if use_async:

            async def run():
                async with AsyncRetrievalClient(target, MODEL, compression=compression_default) as client:
                    await client.metadata()
                    before = counts["sent"]
                    results = await client.search(ids, compression=compression_call)
                    return before, results

            before, results = asyncio.run(run())
        else:
            with RetrievalClient(target, MODEL, compression=compression_default) as client:
                client.metadata()
                before = counts["sent"]
                results = client.search(ids, compression=compression_call)
        assert len(results) == 2000 and np.all([r.ids[0] == "item-1" for r in results])
        return counts["sent"] - before


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_compression_on_the_constructor_and_per_call_shrinks_what_is_sent(recorder, use_async):
    plain = _bytes_sent(recorder, None, None, use_async)
    by_default = _bytes_sent(recorder, grpc.Compression.Gzip, None, use_async)
    per_call = _bytes_sent(recorder, None, grpc.Compression.Gzip, use_async)
    overridden = _bytes_sent(recorder, grpc.Compression.Gzip, grpc.Compression.NoCompression, use_async)
    print(
        f"bytes sent for 2000 ids: plain {plain}, gzip by default {by_default}, gzip per call {per_call}, "
        f"default overridden {overridden}"
    )
    assert by_default < plain / 5 and per_call < plain / 5
    assert overridden > plain / 2


def test_a_token_provider_is_asked_before_every_call(recorder):
    tokens = iter(["t1", "t2", "t3"])
    with RetrievalClient(recorder.target, MODEL, token_provider=lambda: next(tokens)) as client:
        client.status()
        client.status()
    assert [h["authorization"] for h in recorder.headers("GetModelStatus")] == ["Bearer t1", "Bearer t2"]


def test_the_cli_sends_headers(recorder, capsys):
    from retrieval_client._cli import main

    argv = ["status", "--target", recorder.target, "--model", MODEL, "--json"]
    assert main([*argv, "--header", "authorization=Bearer abc", "--header", "x-tenant=7"]) == 0
    [sent] = recorder.headers("GetModelStatus")
    assert (sent["authorization"], sent["x-tenant"]) == ("Bearer abc", "7")
    capsys.readouterr()
    assert main([*argv, "--header", "no-equals-sign"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().out  # --json: the error is one JSON line
