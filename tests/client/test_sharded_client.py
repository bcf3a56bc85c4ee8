"""Issue 21's acceptance: a catalogue built as 3 shards (`build --shards 3`), each served by its own
local server; the sharded client's merged top k equals exact search over the whole catalogue
(brute-force shards), item -> similar items never returns the query item, and a killed shard gives
the error naming it or, opted in, the merged answer of the others flagged as partial.

Real builds, real servers, real gRPC over loopback; nothing of ours is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import numpy as np
import pytest

import support
from model_builder.data.synthetic import clustered_embeddings
from model_builder.sharding import shard_of
from retrieval_client import (
    AsyncShardedRetrievalClient,
    ModelNotReadyError,
    ShardedRetrievalClient,
    ShardUnavailableError,
    shard_models,
)
from support import harness

SHARDS = 3
N, DIM, K = 300, 16, 10
NAME = "shq"


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """The 3 shard models built from one catalogue, each behind its own local server."""
    root = tmp_path_factory.mktemp("sharded")
    ids = np.array([f"sku-{i}" for i in range(N)])
    vectors = clustered_embeddings(N, DIM, seed=5)
    np.savez(root / "items.npz", ids=ids, vectors=vectors)
    out = root / "models"
    args = ["build", "--out", str(out), "--model-name", NAME, "--candidates", str(root / "items.npz")]
    support.run_cli(*args, "--query", "item", "--shards", str(SHARDS), "--verify-queries", "100", check=True)
    with contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(support.local_server(out, f"{NAME}-shard-{i}", log_dir=root)) for i in range(SHARDS)
        ]
        for server in servers:
            server.wait_available(1)
        yield ids, vectors, out, servers


def exact_item_to_item(vectors: np.ndarray, ids: np.ndarray, allowed: np.ndarray) -> list[list[str]]:
    """Exact top K over the allowed candidates for every item, the item itself excluded."""
    scores = vectors @ vectors.T
    np.fill_diagonal(scores, -np.inf)
    scores[:, ~allowed] = -np.inf
    return [ids[np.argsort(-row, kind="stable")[:K]].tolist() for row in scores]


def test_the_build_wrote_one_version_per_shard_and_a_passing_merged_check(sharded):
    ids, _, out, _ = sharded
    manifest = json.loads((out / f"{NAME}.shards-1.json").read_text())
    assert [s["model_name"] for s in manifest["shards"]] == [f"{NAME}-shard-{i}" for i in range(SHARDS)]
    assert sum(s["candidates"] for s in manifest["shards"]) == N
    assert manifest["merged_verification"]["passed"]
    assert manifest["merged_verification"]["recall_at_k"]["serving_default"] == 1.0
    sizes = np.bincount(shard_of(ids, SHARDS), minlength=SHARDS)
    assert [s["candidates"] for s in manifest["shards"]] == sizes.tolist()
    for i in range(SHARDS):
        assert [p.name for p in (out / f"{NAME}-shard-{i}").iterdir() if p.name.isdigit()] == ["1"]


def test_merged_top_k_equals_exact_search_over_the_whole_catalogue(sharded):
    ids, vectors, _, servers = sharded
    expected = exact_item_to_item(vectors, ids, np.ones(N, bool))
    with ShardedRetrievalClient(shard_models(NAME, [s.target for s in servers]), timeout_s=20) as client:
        assert client.wait_until_available(30).version == 1
        got = client.search(ids)
        assert [r.ids.tolist() for r in got] == expected
        assert not any(r.partial for r in got)
        assert all(ids[i] not in r.ids for i, r in enumerate(got)), "an item came back as its own neighbour"
        assert all(np.all(np.diff(r.scores) <= 0) for r in got)
        by_vector = client.search_by_vector(vectors[:50], k=3)
        exact = [ids[np.argsort(-(vectors @ v), kind="stable")[:3]].tolist() for v in vectors[:50]]
        assert [r.ids.tolist() for r in by_vector] == exact
        assert client.pinned_version() == 1
        assert set(client.metadata().signatures) >= {"serving_default", "search_by_vector", "examples"}
        assert len(client.examples().query_ids) > 0


def test_the_async_client_merges_the_same(sharded):
    ids, vectors, _, servers = sharded

    async def run():
        async with AsyncShardedRetrievalClient(shard_models(NAME, [s.target for s in servers]), timeout_s=20) as client:
            return await client.search(ids[:40], k=5)

    expected = [row[:5] for row in exact_item_to_item(vectors, ids, np.ones(N, bool))[:40]]
    assert [r.ids.tolist() for r in asyncio.run(run())] == expected


def available(server) -> set:
    return {v["version"] for v in server.status()["model_version_status"] if v["state"] == "AVAILABLE"}


def test_calls_are_pinned_to_the_highest_version_every_shard_has(sharded):
    # A version 2 (same files) reaches shard 0 first: the local server, like TF Serving's default
    # policy, then serves only 2 there, so no version is on every shard until the others have it.
    ids, vectors, out, servers = sharded
    shards = shard_models(NAME, [s.target for s in servers])
    with ShardedRetrievalClient(shards, timeout_s=10, version_refresh_s=0.0) as client:
        assert client.pinned_version() == 1
        harness.publish_copy(out / f"{NAME}-shard-0" / "1", out / f"{NAME}-shard-0", 2)
        support.wait_for(lambda: available(servers[0]) == {"2"}, 30, "shard 0 serving only version 2")
        with pytest.raises(ModelNotReadyError, match="not AVAILABLE on every shard"):
            client.search(ids[:2])
        for i in (1, 2):
            harness.publish_copy(out / f"{NAME}-shard-{i}" / "1", out / f"{NAME}-shard-{i}", 2)
        assert client.wait_until_available(30).version == 2
        got = client.search(ids[:20])
    assert [r.ids.tolist() for r in got] == exact_item_to_item(vectors, ids, np.ones(N, bool))[:20]


def test_a_killed_shard_is_named_or_left_out_when_partial_answers_are_allowed(sharded):
    # Last in the module: it stops shard 2's server.
    ids, vectors, _, servers = sharded
    shards = shard_models(NAME, [s.target for s in servers])
    with ShardedRetrievalClient(shards, timeout_s=5) as client:
        client.search(ids[:1])  # pinned while every shard is up
        servers[2].stop()
        with pytest.raises(ShardUnavailableError) as caught:
            client.search(ids[:5])
        assert (caught.value.target, caught.value.model) == (servers[2].target, f"{NAME}-shard-2")
        assert servers[2].target in str(caught.value) and f"{NAME}-shard-2" in str(caught.value)
        got = client.search(ids, allow_partial=True)
    others = shard_of(ids, SHARDS) != 2
    assert [r.ids.tolist() for r in got] == exact_item_to_item(vectors, ids, others)
    assert all(r.partial and r.missing_shards == (shards[2].describe(),) for r in got)
    # A new client (nothing pinned yet) pins from the shards that answer.
    with ShardedRetrievalClient(shards, timeout_s=5, allow_partial=True) as fresh:
        assert fresh.search(ids[:3])[0].missing_shards == (shards[2].describe(),)

    async def run_async():
        async with AsyncShardedRetrievalClient(shards, timeout_s=5) as client:
            with pytest.raises(ShardUnavailableError) as caught:
                await client.search(ids[:2])
            assert caught.value.model == f"{NAME}-shard-2"
            return await client.search(ids[:30], allow_partial=True)

    partial = asyncio.run(run_async())
    assert [r.ids.tolist() for r in partial] == exact_item_to_item(vectors, ids, others)[:30]
    assert all(r.partial for r in partial)


def test_the_sync_and_async_sharded_clients_have_the_same_calls():
    import inspect

    def calls(cls):
        return {n: m for n, m in inspect.getmembers(cls, inspect.isfunction) if not n.startswith("_")}

    sync, async_ = calls(ShardedRetrievalClient), calls(AsyncShardedRetrievalClient)
    assert sorted(sync) == sorted(async_)
    assert {"search", "search_by_vector", "search_by_features", "examples", "metadata", "wait_until_available"} <= set(
        sync
    )
    for name, member in sync.items():
        assert inspect.signature(member) == inspect.signature(async_[name]), name
        assert inspect.iscoroutinefunction(async_[name]) and not inspect.iscoroutinefunction(member), name
