"""The client against the real local server (python -m model_builder serve), string and int64 ids.

Works with models of either serving contract: before v2 the graph rejects unknown ids
itself; with v2 the client reads the per-row `found` flag and raises the same error.
"""

from __future__ import annotations

import asyncio
import json
import re

import numpy as np
import pytest

from retrieval_client import AsyncRetrievalClient, InvalidRequestError, RetrievalClient, RetryPolicy

FAST = RetryPolicy(max_attempts=3, initial_backoff_s=0.05, max_backoff_s=0.2)
UNKNOWN = {"string": "__no-such-id__", "int64": 987654321987}


def client_for(live, **kwargs) -> RetrievalClient:
    return RetrievalClient(live.target, live.model, retry=FAST, timeout_s=15, **kwargs)


def test_known_ids_return_k_distinct_neighbours_best_first(live):
    with client_for(live) as client:
        examples = client.examples()
        top_k = client.metadata().signatures["serving_default"].outputs["scores"].shape[1]
        results = client.search(examples.query_ids[:3])
    assert len(results) == 3
    for result in results:
        assert result.found and len(result.ids) == top_k == len(set(result.ids.tolist()))
        assert np.all(np.diff(result.scores) <= 0), result.scores
        expected_type = str if live.id_dtype == "string" else np.integer
        assert all(isinstance(i, expected_type) for i in result.ids)


def test_results_convert_to_plain_python_and_json(live):
    with client_for(live) as client:
        examples = client.examples()
        [result] = client.search(examples.query_ids[:1])
    pairs = result.tolist()
    plain = str if live.id_dtype == "string" else int
    assert [type(i) for i, _ in pairs] == [plain] * len(result.ids)
    assert all(type(score) is float for _, score in pairs)
    assert [i for i, _ in pairs] == list(result.ids) and [s for _, s in pairs] == result.scores.tolist()
    as_json = json.loads(json.dumps(result.to_dict()))
    assert as_json == {"ids": [i for i, _ in pairs], "scores": [s for _, s in pairs], "found": True}
    columns = json.loads(json.dumps(examples.to_dict()))
    assert columns["query_ids"] == examples.query_ids.tolist()
    assert np.array_equal(np.array(columns["candidate_vectors"], np.float32), examples.candidate_vectors)


def test_ids_convert_to_the_models_dtype(live):
    with client_for(live) as client:
        query = client.examples().query_ids[0]
        as_given = client.search(query)[0]
        other_form = client.search(str(query) if live.id_dtype == "int64" else query.encode())[0]
    assert as_given == other_form


def test_unknown_ids_raise_invalid_request_naming_only_them(live):
    with client_for(live) as client:
        known = client.examples().query_ids[0]
        with pytest.raises(InvalidRequestError) as info:
            client.search([known, UNKNOWN[live.id_dtype]])
    details = info.value.details
    assert "unknown query id(s), not in this model version:" in details
    named = re.findall(r"[\w-]+", details.split("version:", 1)[1].split(" (model ")[0])
    assert named == [str(UNKNOWN[live.id_dtype])], details


def test_a_word_for_an_int_model_is_an_unknown_id_not_a_crash(live_servers):
    live = live_servers["int64"]
    with client_for(live) as client, pytest.raises(InvalidRequestError, match=r"\[no-such-user\]"):
        client.search(["no-such-user"])


def test_a_fallback_model_answers_unknown_ids_with_found_false(live_servers):
    live = live_servers["fallback"]
    with client_for(live) as client:
        known = client.examples().query_ids[0]
        metadata = client.metadata()
        if "found" not in metadata.signatures["serving_default"].outputs:
            pytest.fail(f"{live.model} was exported before the batching-safe contract: no fallback rows to test")
        first, unknown, second = client.search([known, "someone-new", "someone-else"])
    assert first.found and np.isfinite(first.scores).all()
    assert not unknown.found and not second.found
    assert unknown.ids.tolist() == second.ids.tolist() and len(set(unknown.ids.tolist())) == len(unknown.ids)
    assert "" not in unknown.ids.tolist() and np.isneginf(unknown.scores).all()


def test_k_truncates_and_a_larger_k_is_refused(live):
    with client_for(live) as client:
        query = client.examples().query_ids[0]
        full = client.search(query)[0]
        assert client.search(query, k=2)[0].ids.tolist() == full.ids[:2].tolist()
        with pytest.raises(ValueError, match=f"K={len(full.ids)}"):
            client.search(query, k=len(full.ids) + 1)


def test_a_candidate_vector_finds_its_candidate(live):
    with client_for(live) as client:
        examples = client.examples()
        results = client.search_by_vector(examples.candidate_vectors[:4])
        dim = examples.candidate_vectors.shape[1]
        with pytest.raises(ValueError, match=f"takes {dim}-dimensional"):
            client.search_by_vector(np.zeros(dim + 1))
        with pytest.raises(ValueError, match="NaN"):
            client.search_by_vector(np.full(dim, np.nan))
    for expected, result in zip(examples.candidate_ids[:4].tolist(), results, strict=True):
        assert result.found and expected in result.ids.tolist()


def test_a_batch_above_the_servers_limit_is_split_and_merged_in_order(live_servers):
    # 1500 rows: above max_batch_size 1024 of the server's batching file, which rejects such a
    # request as a whole ("Task size 1500 is larger than maximum input batch size 1024").
    with client_for(live_servers["string"]) as client:
        examples = client.examples()
        rows = np.arange(1500) % len(examples.candidate_ids)
        results = client.search_by_vector(examples.candidate_vectors[rows])
        learnt = client._state.max_batch_rows
        again = client.search_by_vector(examples.candidate_vectors[rows[:1100]])  # split up front now
    assert learnt == 1024, "the limit comes from the server's answer"
    assert len(results) == 1500 and len(again) == 1100
    for row, result in zip(rows.tolist(), results, strict=True):
        assert result.found and examples.candidate_ids[row] in result.ids.tolist()


def test_examples_status_and_metadata_agree(live):
    with client_for(live) as client:
        examples = client.examples()
        metadata = client.metadata()
        [status] = [s for s in client.status() if s.state == "AVAILABLE"]
    assert 0 < len(examples.query_ids) <= 64 and len(examples.candidate_ids) == len(examples.candidate_vectors)
    assert metadata.version == status.version
    assert metadata.signatures["serving_default"].inputs["ids"].dtype == live.id_dtype
    assert examples.candidate_vectors.shape[1] == metadata.signatures["search_by_vector"].inputs["vectors"].shape[1]


def test_async_client_answers_the_same(live):
    with client_for(live) as client:
        examples = client.examples()
        want = client.search(examples.query_ids[:2]) + client.search_by_vector(examples.candidate_vectors[:2])

    async def run():
        async with AsyncRetrievalClient(live.target, live.model, retry=FAST, timeout_s=15) as aclient:
            got_examples = await aclient.examples()
            searches = await asyncio.gather(*(aclient.search(q) for q in examples.query_ids[:2]))
            return got_examples, [r for [r] in searches] + await aclient.search_by_vector(
                examples.candidate_vectors[:2]
            )

    got_examples, got = asyncio.run(run())
    assert got_examples == examples
    for a, b in zip(got, want, strict=True):
        assert a.ids.tolist() == b.ids.tolist()
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-6)


def test_a_new_user_described_by_features_gets_neighbours(live_servers):
    live = live_servers["int64"]  # the demo's MovieLens 100K model, built with user/item features
    rows = [
        {"age": 24, "gender": "M", "occupation": "technician", "zip_code": "85711"},
        {"age": 61, "gender": "F", "occupation": "retired", "zip_code": None},
    ]
    with client_for(live) as client:
        assert "search_by_features" in client.metadata().signatures
        young, retired = client.search_by_features(rows, k=5)
    assert young.found and retired.found and len(young.ids) == len(retired.ids) == 5
    assert young.ids.tolist() != retired.ids.tolist() and np.all(np.diff(young.scores) <= 0)
