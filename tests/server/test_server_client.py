"""retrieval_client (sync and async) against the real local server, every method.

The client's own end-to-end and CLI tests whose assertions hold for any server run against
a real model mirroring their fake one too (tests/client/conftest.py: any_server)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from retrieval_client import (
    AsyncRetrievalClient,
    InvalidRequestError,
    ModelNotFoundError,
    RetrievalClient,
    RetryPolicy,
)
from support import harness

FAST = RetryPolicy(max_attempts=2, initial_backoff_s=0.01, max_backoff_s=0.05)


def test_every_method_sync_and_async_agree(items_server):
    vectors = np.random.default_rng(0).normal(size=(3, harness.DIM)).astype(np.float32)

    with RetrievalClient(items_server.target, harness.MODEL, retry=FAST) as client:
        sync = (
            client.search(["sku-1", "sku-2"]),
            client.search("sku-3", k=4),
            client.search_by_vector(vectors),
            client.search_by_vector(vectors[0], k=2),
            client.examples(),
            client.status(),
            client.metadata(),
            client.wait_until_available(timeout_s=10),
        )

    async def run():
        async with AsyncRetrievalClient(items_server.target, harness.MODEL, retry=FAST) as aclient:
            return (
                await aclient.search(["sku-1", "sku-2"]),
                await aclient.search("sku-3", k=4),
                await aclient.search_by_vector(vectors),
                await aclient.search_by_vector(vectors[0], k=2),
                await aclient.examples(),
                await aclient.status(),
                await aclient.metadata(),
                await aclient.wait_until_available(timeout_s=10),
            )

    assert asyncio.run(run()) == sync
    pair, [top4], by_vector, [top2], examples, statuses, metadata, available = sync
    assert [len(r.ids) for r in pair] == [10, 10] and "sku-1" not in pair[0].ids.tolist()  # item -> other items
    assert len(top4.ids) == 4 and all(isinstance(i, str) for i in top4.ids)
    assert len(by_vector) == 3 and len(top2.ids) == 2
    for result in [*pair, *by_vector]:
        assert (np.diff(result.scores) <= 0).all()
    assert len(examples.query_ids) == 8 and examples.candidate_vectors.shape == (8, harness.DIM)
    with RetrievalClient(items_server.target, harness.MODEL) as client:
        [nearest] = client.search_by_vector(examples.candidate_vectors[0], k=1)
    assert nearest.ids[0] == examples.candidate_ids[0]
    assert [(s.version, s.state, s.error_code) for s in statuses] == [(1, "AVAILABLE", "OK")]
    assert (available.version, available.state) == (1, "AVAILABLE")
    assert metadata.version == 1 and set(metadata.signatures) == {"serving_default", "search_by_vector", "examples"}


def test_client_errors_sync_and_async(items_server):
    def sync_errors():
        found = []
        with RetrievalClient(items_server.target, harness.MODEL, retry=FAST) as client:
            for call in (lambda: client.search(["sku-1", "nope-42"]), lambda: client.search("sku-1", k=11)):
                try:
                    call()
                except Exception as err:
                    found.append(err)
        with RetrievalClient(items_server.target, "other", retry=FAST) as client:
            try:
                client.status()
            except Exception as err:
                found.append(err)
        return found

    async def async_errors():
        found = []
        async with AsyncRetrievalClient(items_server.target, harness.MODEL, retry=FAST) as client:
            for call in (lambda: client.search(["sku-1", "nope-42"]), lambda: client.search("sku-1", k=11)):
                try:
                    await call()
                except Exception as err:
                    found.append(err)
        async with AsyncRetrievalClient(items_server.target, "other", retry=FAST) as client:
            try:
                await client.status()
            except Exception as err:
                found.append(err)
        return found

    for errors in (sync_errors(), asyncio.run(async_errors())):
        unknown, too_many, missing = errors
        assert (
            isinstance(unknown, InvalidRequestError) and "nope-42" in unknown.details and "sku-1" not in unknown.details
        )
        assert isinstance(too_many, ValueError) and "K=10" in str(too_many)
        assert isinstance(missing, ModelNotFoundError) and "other" in missing.details


def test_pinned_version_through_the_client(items_server):
    with RetrievalClient(items_server.target, harness.MODEL, version=1, retry=FAST) as client:
        assert len(client.search("sku-9")[0].ids) == 10
    with (
        RetrievalClient(items_server.target, harness.MODEL, version=2, retry=FAST) as client,
        pytest.raises(ModelNotFoundError, match=r"Specific\(scann_model, 2\)"),
    ):
        client.search("sku-9")
