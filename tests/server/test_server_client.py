"""retrieval_client (sync and async) against the real local server, every method; plus the client's own
end-to-end and CLI tests re-run against a real model that mirrors their fake one (tests/client/fake_tfs.py)."""

from __future__ import annotations

import asyncio
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from server import harness

import support
from retrieval_client import (
    AsyncRetrievalClient,
    InvalidRequestError,
    ModelNotFoundError,
    RetrievalClient,
    RetryPolicy,
)

sys.path.insert(0, str(support.REPO / "tests" / "client"))
from fake_tfs import FakeModel

# The client's own tests whose assertions hold for any server serving FakeModel's catalogue
# (the others count calls or script failures, which only the fake can do).
from test_client_cli import (  # noqa: F401
    test_search_table_and_json,
    test_search_vector_status_metadata_examples_wait,
    test_usage_and_rejected_requests_exit_2_with_one_line,
)
from test_client_e2e import (  # noqa: F401
    test_async_errors_are_converted,
    test_closed_client_refuses_calls,
    test_dns_target_with_round_robin_reaches_the_server,
    test_examples_status_metadata,
    test_k_truncates_and_rejects_more_than_k,
    test_search_by_vector_finds_the_candidate_itself,
    test_unknown_model_is_model_not_found_and_unchained,
)

FAST = RetryPolicy(max_attempts=2, initial_backoff_s=0.01, max_backoff_s=0.05)


def _write_fake_catalogue(path):
    model = FakeModel()
    np.savez(path, ids=np.array([i.decode() for i in model.ids]), vectors=model.vectors)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """FakeModel's catalogue (40 x 8, ids item-N, K=5, version 3) built for real and served by the local server.

    Queries are the candidates themselves (--query user with the same file), as in the fake.
    """
    version_dir = harness.shared_build(
        tmp_path_factory,
        "fake-catalogue",
        "--candidates",
        "{fake}",
        "--query-embeddings",
        "{fake}",
        "-k",
        "5",
        "--version",
        "3",
        "--verify-queries",
        "40",
        files={"fake.npz": _write_fake_catalogue},
    )
    logs = tmp_path_factory.mktemp("fake-catalogue-server")
    with support.local_server(version_dir.parent.parent, harness.MODEL, log_dir=logs) as running:
        running.wait_available(3)
        yield SimpleNamespace(target=running.target, model=FakeModel())


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
