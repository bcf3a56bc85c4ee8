"""The batching-safe serving contract (v2) against the upstream-message stand-in: per-row `found`,
padding rows for unknown ids, fallback rows, `examples` by index; and models from before it."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from fake_tfs import FAST_RETRY, FakeModel

from retrieval_client import AsyncRetrievalClient, InvalidRequestError, RetrievalClient

UNKNOWN_WORDING = "unknown query id(s), not in this model version:"


@pytest.mark.parametrize("id_dtype, known, unknown", [("string", "item-3", "nope"), ("int64", 1003, 99)])
@pytest.mark.parametrize("typed_values", [False, True], ids=["tensor_content", "typed_vals"])
def test_unknown_ids_are_named_from_the_found_flag(make_server, id_dtype, known, unknown, typed_values):
    server = make_server(FakeModel(id_dtype=id_dtype, contract=2), typed_values=typed_values)
    with RetrievalClient(server.target, retry=FAST_RETRY) as client:
        [ok] = client.search([known])
        with pytest.raises(InvalidRequestError) as info:
            client.search([known, unknown, known])
    assert ok.found and ok.ids[0] == known
    message = info.value.details
    assert message.startswith(f"{UNKNOWN_WORDING} [{unknown}] (model 'scann_model' version 3)"), message
    assert str(known) not in message.split("(model")[0]
    assert "--unknown-ids fallback" in info.value.hint
    assert server.calls["Predict"] == 2, "the search was answered (every row), the client raised"


def test_fallback_rows_come_back_with_found_false(make_server):
    server = make_server(FakeModel(contract=2, unknown_ids="fallback"))
    with RetrievalClient(server.target, retry=FAST_RETRY) as client:
        known, fallback = client.search(["item-3", "someone-new"], k=3)
    assert known.found and known.ids[0] == "item-3"
    assert not fallback.found
    assert fallback.ids.tolist() == ["item-0", "item-1", "item-2"] and np.all(np.isneginf(fallback.scores))


def test_examples_ask_for_64_indices_and_keep_the_found_rows(make_server):
    server = make_server(FakeModel(contract=2))
    with RetrievalClient(server.target, retry=FAST_RETRY) as client:
        examples = client.examples()
    [(_, request)] = [(m, r) for m, r in server.requests if m == "Predict"]
    sent = request.inputs["index"]
    assert [d.size for d in sent.tensor_shape.dim] == [64]
    assert examples.query_ids.tolist() == [f"item-{i}" for i in range(8)]
    np.testing.assert_array_equal(examples.candidate_vectors, server.model.vectors[:8])


def test_a_model_from_before_the_contract_works_as_before(make_server):
    server = make_server(FakeModel(contract=1))
    with RetrievalClient(server.target, retry=FAST_RETRY) as client:
        assert len(client.examples().query_ids) == 8
        [result] = client.search("item-4")
        with pytest.raises(InvalidRequestError, match="nope"):
            client.search(["item-4", "nope"])
    assert result.found
    examples_request = [r for m, r in server.requests if m == "Predict"][0]
    assert len(examples_request.inputs) == 0, "old examples signature: no input"


def test_async_client_reads_found_the_same_way(make_server):
    server = make_server(FakeModel(contract=2, unknown_ids="fallback"))

    async def run():
        async with AsyncRetrievalClient(server.target, retry=FAST_RETRY) as client:
            return await client.search(["item-1", "new-user"]), await client.examples()

    results, examples = asyncio.run(run())
    assert [r.found for r in results] == [True, False] and len(examples.query_ids) == 8


@pytest.mark.parametrize("id_dtype", ["string", "int64"])
def test_padding_at_the_end_of_a_found_row_is_dropped(make_server, id_dtype):
    # The index yielded fewer than K candidates: the graph pads the row's tail ("" / -1, -inf).
    server = make_server(FakeModel(id_dtype=id_dtype, contract=2, short_tail=2))
    with RetrievalClient(server.target, retry=FAST_RETRY) as client:
        [result] = client.search_by_vector(server.model.vectors[3])
        [by_id] = client.search([server.model.ids[3].decode() if id_dtype == "string" else int(server.model.ids[3])])
    for row in (result, by_id):
        assert row.found and len(row.ids) == len(row.scores) == server.model.k - 2
        assert np.isfinite(row.scores).all()
