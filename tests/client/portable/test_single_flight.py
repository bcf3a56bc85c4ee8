"""One metadata fetch for many concurrent first calls (sync threads and asyncio tasks); k
checked against the cached K before anything is sent."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
from grpc_stand_ins import IDS, MODEL, K

from retrieval_client import AsyncRetrievalClient, RetrievalClient


def test_concurrent_sync_calls_share_one_metadata_fetch(recorder):
    recorder.metadata_delay_s = 0.3  # every caller arrives while the first fetch is in flight
    with RetrievalClient(recorder.target, MODEL) as client, ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: client.search(IDS[i % len(IDS)], k=1)[0].ids[0], range(64)))
    assert results == [IDS[i % len(IDS)] for i in range(64)]
    assert recorder.count("GetModelMetadata") == 1
    assert recorder.count("Predict") == 64


def test_concurrent_async_calls_share_one_metadata_fetch(recorder):
    recorder.metadata_delay_s = 0.3

    async def run():
        async with AsyncRetrievalClient(recorder.target, MODEL) as client:
            return await asyncio.gather(*(client.search(IDS[i % len(IDS)], k=1) for i in range(200)))

    results = asyncio.run(run())
    assert [r.ids[0] for [r] in results] == [IDS[i % len(IDS)] for i in range(200)]
    assert recorder.count("GetModelMetadata") == 1
    assert recorder.count("Predict") == 200


def test_a_failed_shared_fetch_reaches_every_waiter_and_the_next_call_fetches_again(recorder):
    with RetrievalClient(recorder.target, "no-such-model") as client, ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda _: _error_name(lambda: client.search("item-1")), range(8)))
    assert outcomes == ["ModelNotFoundError"] * 8
    assert 1 <= recorder.count("GetModelMetadata") <= 8


def _error_name(call) -> str:
    try:
        call()
    except Exception as exc:
        return type(exc).__name__
    return "ok"


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_k_above_the_models_k_is_refused_before_sending(recorder, use_async):
    def check(search):
        with pytest.raises(ValueError, match=f"k={K + 1} is more than K={K}"):
            search()

    if use_async:

        async def run():
            async with AsyncRetrievalClient(recorder.target, MODEL) as client:
                await client.metadata()
                try:
                    await client.search("item-1", k=K + 1)
                except ValueError as exc:
                    return exc
                return None

        error = asyncio.run(run())
        assert isinstance(error, ValueError) and f"K={K}" in str(error)
    else:
        with RetrievalClient(recorder.target, MODEL) as client:
            client.metadata()
            check(lambda: client.search("item-1", k=K + 1))
            check(lambda: client.search_by_vector([1.0, 0.0, 0.0, 0.0], k=K + 1))
    assert recorder.count("Predict") == 0
    # The cached K may be an older version's: each refused call refreshes the metadata once.
    assert recorder.count("GetModelMetadata") == 1 + (1 if use_async else 2)
