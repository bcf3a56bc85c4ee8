"""Target-only smoke suite: is the server at --target serving a working retrieval model?

Uses nothing but retrieval_client, so it runs against the local development
server, a container or a Kubernetes Service alike:

    pytest tests/smoke --target 127.0.0.1:8500 --model scann_model
"""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pytest

from retrieval_client import AsyncRetrievalClient, InvalidRequestError

SIGNATURES = ("serving_default", "search_by_vector", "examples")


def test_a_version_is_available(smoke_client):
    statuses = smoke_client.status()
    assert any(s.state == "AVAILABLE" for s in statuses), f"no AVAILABLE version: {statuses}"


def test_metadata_lists_the_retrieval_signatures(metadata):
    missing = set(SIGNATURES) - set(metadata.signatures)
    assert not missing, f"signatures missing: {sorted(missing)}; has {sorted(metadata.signatures)}"
    ids = metadata.signatures["serving_default"].inputs["ids"]
    assert ids.dtype in ("string", "int64") and ids.shape == [-1], ids
    vectors = metadata.signatures["search_by_vector"].inputs["vectors"]
    assert vectors.dtype == "float32" and vectors.shape is not None and len(vectors.shape) == 2, vectors
    assert vectors.shape[0] == -1 and vectors.shape[1] > 0, vectors
    shapes = set()
    for name in ("serving_default", "search_by_vector"):
        outputs = metadata.signatures[name].outputs
        assert outputs["ids"].dtype == ids.dtype, (name, outputs["ids"])
        assert outputs["scores"].dtype == "float32", (name, outputs["scores"])
        assert outputs["ids"].shape == outputs["scores"].shape, (name, outputs)
        scores_shape = outputs["scores"].shape
        assert scores_shape is not None and scores_shape[0] == -1 and scores_shape[1] > 0, (name, scores_shape)
        shapes.add(tuple(scores_shape))
    assert len(shapes) == 1, f"both searches must return the same K: {shapes}"
    # Serving contract v2 (batching-safe): a per-row `found`, and examples taken by index.
    for name in ("serving_default", "search_by_vector"):
        found = metadata.signatures[name].outputs["found"]
        assert found.dtype == "bool" and found.shape == [-1], (name, found)
    examples = metadata.signatures["examples"]
    assert {"query_ids", "candidate_ids", "candidate_vectors", "found"} <= set(examples.outputs)
    assert examples.inputs["index"].dtype == "int64" and examples.inputs["index"].shape == [-1], examples.inputs


def test_examples_publish_known_ids(examples, metadata, id_dtype):
    dim = metadata.signatures["search_by_vector"].inputs["vectors"].shape[1]
    assert len(examples.query_ids) > 0 and len(examples.candidate_ids) > 0
    assert examples.candidate_vectors.shape == (len(examples.candidate_ids), dim)
    if id_dtype == "string":
        assert all(isinstance(i, str) for i in [*examples.query_ids, *examples.candidate_ids])
    else:
        assert examples.query_ids.dtype == np.int64 and examples.candidate_ids.dtype == np.int64


def test_known_query_returns_k_distinct_ids_best_first(smoke_client, examples, top_k):
    [result] = smoke_client.search(examples.query_ids[0])
    assert len(result.ids) == top_k
    assert len(set(result.ids.tolist())) == top_k, f"duplicate ids: {result.ids}"
    assert np.isfinite(result.scores).all()
    assert (result.scores[:-1] >= result.scores[1:]).all(), f"scores not descending: {result.scores}"


def test_candidate_vector_finds_its_candidate_first(smoke_client, examples):
    results = smoke_client.search_by_vector(examples.candidate_vectors)
    for expected, vector, result in zip(
        examples.candidate_ids.tolist(), examples.candidate_vectors, results, strict=True
    ):
        if result.ids[0] == expected:
            continue
        # Only a tie (another candidate with the same embedding) may come first.
        assert expected in result.ids.tolist(), f"{expected!r} not found by its own vector: {result.ids}"
        own = result.scores[result.ids.tolist().index(expected)]
        assert np.isclose(own, result.scores[0], atol=1e-5), f"{expected!r} ranked below {result.ids[0]!r}"
        assert np.isclose(float(np.dot(vector, vector)), own, atol=1e-3)


def test_unknown_id_is_reported_not_found(smoke_client, examples, id_dtype):
    unknown = f"__smoke_unknown__-{uuid.uuid4().hex}" if id_dtype == "string" else -(2**62) - uuid.uuid4().int % 10**9
    try:
        results = smoke_client.search([examples.query_ids[0], unknown])
    except InvalidRequestError as err:  # a model built with --unknown-ids error (the default)
        assert str(unknown) in err.details, err.details
    else:  # --unknown-ids fallback: the fallback list, marked not found
        assert [r.found for r in results] == [True, False], results


def test_batch_of_64(smoke_client, examples, top_k):
    n = len(examples.query_ids)
    ids = [examples.query_ids[i % n] for i in range(64)]
    results = smoke_client.search(ids)
    assert len(results) == 64
    for i, result in enumerate(results):
        assert result.ids.shape == (top_k,)
        assert result.ids.tolist() == results[i % n].ids.tolist()
        np.testing.assert_allclose(result.scores, results[i % n].scores, rtol=1e-5, atol=1e-6)


def test_k_truncates_and_larger_k_is_refused(smoke_client, examples, top_k):
    query = examples.query_ids[0]
    [full] = smoke_client.search(query)
    [top1] = smoke_client.search(query, k=1)
    assert top1.ids.tolist() == full.ids[:1].tolist()
    with pytest.raises(ValueError, match=f"K={top_k}"):
        smoke_client.search(query, k=top_k + 1)


def test_async_client_returns_the_same(smoke_client, smoke_target, smoke_model, examples):
    queries = examples.query_ids[:3]
    vectors = examples.candidate_vectors[:3]

    async def run():
        async with AsyncRetrievalClient(smoke_target, smoke_model, timeout_s=15.0) as client:
            return await client.search(queries), await client.search_by_vector(vectors), await client.examples()

    async_ids, async_vectors, async_examples = asyncio.run(run())
    assert async_examples == examples
    sync_results = smoke_client.search(queries) + smoke_client.search_by_vector(vectors)
    for got, want in zip(async_ids + async_vectors, sync_results, strict=True):
        assert got.ids.tolist() == want.ids.tolist()
        np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5, atol=1e-6)
