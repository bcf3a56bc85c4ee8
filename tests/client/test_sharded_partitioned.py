"""`build --shards 3 --query-side partitioned`: each shard holds its candidates and only the query ids
homed there (crc32 mod 3), so no shard carries the whole query table. Served by three local servers,
the sharded client (query_side="partitioned") asks each id's home shard for its vector, then the
others by vector; the merged top k must equal exact search over the whole catalogue, for item ->
similar items (string ids) and user -> items (int64 ids, imported query embeddings).

Real builds, real servers, real gRPC over loopback; nothing of ours is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import numpy as np
import pytest
import tensorflow as tf

import model_builder.scann_import  # noqa: F401  (registers ScaNN's ops before loading)
import support
from model_builder.data.synthetic import clustered_embeddings
from model_builder.export.version_store import read_build_info
from model_builder.sharding import shard_of
from retrieval_client import (
    AsyncShardedRetrievalClient,
    InvalidRequestError,
    ShardedRetrievalClient,
    ShardUnavailableError,
    shard_models,
)

SHARDS = 3
N, USERS, DIM, K = 300, 120, 16, 10
COLORS = ("red", "green", "blue")


@contextlib.contextmanager
def served(out, name, root):
    with contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(support.local_server(out, f"{name}-shard-{i}", log_dir=root)) for i in range(SHARDS)
        ]
        for server in servers:
            server.wait_available(1)
        yield servers


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    """Item -> similar items, string ids: the 3 partitioned shards behind 3 local servers."""
    root = tmp_path_factory.mktemp("partitioned-items")
    ids = np.array([f"sku-{i}" for i in range(N)])
    vectors = clustered_embeddings(N, DIM, seed=7)
    np.savez(root / "items.npz", ids=ids, vectors=vectors)
    rows = [f"{item},{COLORS[i % 3]},{i % 100}" for i, item in enumerate(ids)]
    (root / "attributes.csv").write_text("item_id,color:categorical,price:numeric\n" + "\n".join(rows) + "\n")
    out = root / "models"
    args = ["build", "--out", str(out), "--model-name", "ptq", "--candidates", str(root / "items.npz")]
    args += ["--item-attributes", str(root / "attributes.csv")]
    args += ["--query", "item", "--shards", str(SHARDS), "--query-side", "partitioned", "--verify-queries", "100"]
    support.run_cli(*args, check=True)
    with served(out, "ptq", root) as servers:
        yield ids, vectors, out, servers


def exact_item_to_item(vectors: np.ndarray, ids: np.ndarray, allowed: np.ndarray) -> list[list[str]]:
    scores = vectors @ vectors.T
    np.fill_diagonal(scores, -np.inf)
    scores[:, ~allowed] = -np.inf
    return [ids[np.argsort(-row, kind="stable")[:K]].tolist() for row in scores]


def client_for(servers, name="ptq", **options) -> ShardedRetrievalClient:
    return ShardedRetrievalClient(
        shard_models(name, [s.target for s in servers]), query_side="partitioned", timeout_s=20, **options
    )


def test_each_shard_holds_only_its_own_query_ids(items):
    ids, _, out, _ = items
    manifest = json.loads((out / "ptq.shards-1.json").read_text())
    assert manifest["query_side"] == "partitioned"
    assert manifest["merged_verification"]["passed"]
    assert manifest["merged_verification"]["recall_at_k"]["serving_default"] == 1.0
    homes = shard_of(ids, SHARDS)
    for i in range(SHARDS):
        model = tf.saved_model.load(str(out / f"ptq-shard-{i}" / "1"))
        mine, theirs = ids[homes == i], ids[homes != i][:20]
        assert model.query_ids.shape[0] == len(mine)
        got = model.signatures["query_vectors"](ids=tf.constant(np.concatenate([mine[:20], theirs]).astype(bytes)))
        assert got["found"].numpy().tolist() == [True] * 20 + [False] * 20
        assert not got["vectors"].numpy()[20:].any()


def test_merged_top_k_equals_exact_search_and_never_the_query_item(items):
    ids, vectors, _, servers = items
    with client_for(servers) as client:
        got = client.search(ids)
    assert [r.ids.tolist() for r in got] == exact_item_to_item(vectors, ids, np.ones(N, bool))
    assert all(ids[i] not in r.ids and not r.partial and r.version == 1 for i, r in enumerate(got))


def test_the_async_client_merges_the_same(items):
    ids, vectors, _, servers = items

    async def run():
        shards = shard_models("ptq", [s.target for s in servers])
        async with AsyncShardedRetrievalClient(shards, query_side="partitioned", timeout_s=20) as client:
            return await client.search(ids[:40], k=5)

    expected = [row[:5] for row in exact_item_to_item(vectors, ids, np.ones(N, bool))[:40]]
    assert [r.ids.tolist() for r in asyncio.run(run())] == expected


def test_filters_apply_on_every_shard_before_the_merge(items):
    ids, vectors, _, servers = items
    red = np.arange(N) % 3 == 0
    cheap = np.arange(N) % 100 <= 50
    with client_for(servers) as client:
        by_id = client.search(ids[:40], allow={"color": ["red"]}, exclude=[ids[0]])
        by_vector = client.search_by_vector(vectors[:20], k=5, where={"price": (None, 50)})
        with pytest.raises(ValueError, match="max_per"):
            client.search(ids[:2], max_per=1)
    allowed = red & (ids != ids[0])
    assert [r.ids.tolist() for r in by_id] == exact_item_to_item(vectors, ids, allowed)[:40]
    exact = [ids[np.argsort(-np.where(cheap, vectors @ v, -np.inf), kind="stable")[:5]].tolist() for v in vectors[:20]]
    assert [r.ids.tolist() for r in by_vector] == exact


def test_unknown_ids_and_a_bad_query_side_are_named(items):
    ids, _, _, servers = items
    with client_for(servers) as client, pytest.raises(InvalidRequestError, match="sku-nope"):
        client.search([ids[0], "sku-nope"])
    # A client left on replicated asks every shard by id: all but the home shard refuse the id.
    shards = shard_models("ptq", [s.target for s in servers])
    with ShardedRetrievalClient(shards, timeout_s=20) as replicated, pytest.raises(InvalidRequestError):
        replicated.search(ids[:3])
    with pytest.raises(ValueError, match="replicated or partitioned"):
        ShardedRetrievalClient(shard_models("ptq", ["localhost:1"]), query_side="sharded")


def test_a_killed_shard_is_named_or_its_home_rows_come_back_empty_and_partial(items):
    # Last in the module for these servers: it stops shard 1.
    ids, vectors, _, servers = items
    homes = shard_of(ids, SHARDS)
    with client_for(servers, allow_partial=False) as client:
        client.search(ids[:1])
        servers[1].stop()
        with pytest.raises(ShardUnavailableError) as caught:
            client.search(ids[:10])
        assert caught.value.model == "ptq-shard-1"
        got = client.search(ids, allow_partial=True)
    expected = exact_item_to_item(vectors, ids, homes != 1)
    for i, result in enumerate(got):
        assert result.partial
        if homes[i] == 1:
            assert not result.found and len(result.ids) == 0
        else:
            assert result.found and result.ids.tolist() == expected[i]


def test_user_queries_are_partitioned_too(tmp_path):
    rng = np.random.default_rng(3)
    item_ids, user_ids = np.arange(1000, 1000 + N, dtype=np.int64), np.arange(USERS, dtype=np.int64) * 7
    items_v, users_v = clustered_embeddings(N, DIM, seed=9), rng.normal(size=(USERS, DIM)).astype(np.float32)
    np.savez(tmp_path / "items.npz", ids=item_ids, vectors=items_v)
    np.savez(tmp_path / "users.npz", ids=user_ids, vectors=users_v)
    out = tmp_path / "models"
    args = ["build", "--out", str(out), "--model-name", "ptu", "--candidates", str(tmp_path / "items.npz")]
    args += ["--query", "user", "--query-embeddings", str(tmp_path / "users.npz"), "--verify-queries", "60"]
    support.run_cli(*args, "--shards", str(SHARDS), "--query-side", "partitioned", check=True)
    homes = shard_of(user_ids, SHARDS)
    for i in range(SHARDS):
        info = read_build_info(out / f"ptu-shard-{i}" / "1")
        assert info["data"]["sharding"]["query_side"] == "partitioned"
        assert tf.saved_model.load(str(out / f"ptu-shard-{i}" / "1")).query_ids.shape[0] == (homes == i).sum()
    expected = [item_ids[np.argsort(-(items_v @ u), kind="stable")[:K]].tolist() for u in users_v]
    with served(out, "ptu", tmp_path) as servers, client_for(servers, "ptu") as client:
        got = client.search(user_ids)
    assert [r.ids.tolist() for r in got] == expected


def test_partitioned_needs_shards_and_refuses_history_exclusion_it_cannot_apply(tmp_path):
    base = ["build", "--out", str(tmp_path), "--dataset", "synthetic", "--query-side", "partitioned"]
    one = support.run_cli(*base)
    assert one.returncode == 2 and "needs --shards 2 or more" in one.stderr
    seen = support.run_cli(*base, "--shards", "2")
    assert seen.returncode == 2 and "--no-exclude-seen" in seen.stderr
    assert len(seen.stderr.strip().splitlines()) == 1
