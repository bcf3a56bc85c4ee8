"""The whole client API against a real gRPC server speaking upstream TF Serving messages."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from fake_tfs import FAST_RETRY, FakeModel

from retrieval_client import (
    AsyncRetrievalClient,
    InvalidRequestError,
    ModelNotFoundError,
    RetrievalClient,
    SearchResult,
    ServerUnavailableError,
    TlsConfig,
    WaitTimeoutError,
)


def client_for(server, **kwargs) -> RetrievalClient:
    return RetrievalClient(server.target, retry=FAST_RETRY, **kwargs)


def expected(model: FakeModel, keys) -> list:
    ids, scores = model.nearest(model.vectors[[model.row[k] for k in keys]])
    return list(zip(ids, scores, strict=True))


@pytest.mark.parametrize("typed_values", [False, True], ids=["tensor_content", "typed_vals"])
def test_search_string_ids_returns_exact_neighbours(make_server, typed_values):
    server = make_server(typed_values=typed_values)
    with client_for(server) as client:
        results = client.search(["item-3", "item-7"])
    want = expected(server.model, [b"item-3", b"item-7"])
    assert len(results) == 2
    for result, (ids, scores) in zip(results, want, strict=True):
        assert result.ids.tolist() == [i.decode() for i in ids]
        assert all(type(i) is str for i in result.ids)
        assert result.scores.dtype == np.float32
        np.testing.assert_allclose(result.scores, scores, rtol=1e-6)
        assert list(result.scores) == sorted(result.scores, reverse=True)
    assert server.calls["GetModelMetadata"] == 1


def test_metadata_is_fetched_once(server):
    with client_for(server) as client:
        for _ in range(3):
            client.search("item-1")
    assert server.calls == {"GetModelMetadata": 1, "Predict": 3}


def test_int_ids_are_converted_for_each_model_dtype(make_server):
    string_server = make_server()
    with client_for(string_server) as client:
        # int -> "7" is not a known string id: the server names it.
        with pytest.raises(InvalidRequestError, match="'7'"):
            client.search(7)
    int_server = make_server(FakeModel(id_dtype="int64"))
    with client_for(int_server) as client:
        by_int = client.search([1003, np.int32(1004)])
        by_str = client.search(["1003", b"1004"])
        assert by_int == by_str
        assert by_int[0].ids.dtype == np.int64
        assert by_int[0].ids.tolist() == expected(int_server.model, [1003])[0][0].tolist()
        predicts = int_server.calls["Predict"]
        # No int64 model can hold "abc": the unknown-id error, after one metadata refresh
        # (a newer version might take strings), without sending the search.
        with pytest.raises(InvalidRequestError, match=r"unknown query id\(s\), not in this model version: \[abc\]"):
            client.search(["abc", 1003])
        with pytest.raises(TypeError, match="bool"):
            client.search([True])
        assert int_server.calls["Predict"] == predicts, "a bad id must fail before any Predict"
        assert int_server.calls["GetModelMetadata"] == 2


def test_k_truncates_and_rejects_more_than_k(any_server):
    with client_for(any_server) as client:
        full = client.search("item-2")[0]
        top2 = client.search("item-2", k=2)[0]
        assert top2 == SearchResult(full.ids[:2], full.scores[:2])
        with pytest.raises(ValueError, match=r"K=5"):
            client.search("item-2", k=6)
        with pytest.raises(ValueError, match="positive integer"):
            client.search("item-2", k=0)


def test_search_by_vector_finds_the_candidate_itself(any_server):
    model = any_server.model
    with client_for(any_server) as client:
        batch = client.search_by_vector(model.vectors[:4], k=1)
        single = client.search_by_vector(model.vectors[5].astype(np.float64))
        with pytest.raises(ValueError, match="dimension 3.*8-dimensional"):
            client.search_by_vector([0.1, 0.2, 0.3])
        with pytest.raises(ValueError, match="NaN"):
            client.search_by_vector([np.nan] * 8)
    assert [r.ids[0] for r in batch] == ["item-0", "item-1", "item-2", "item-3"]
    assert single[0].ids[0] == "item-5" and len(single[0].ids) == 5


def test_examples_status_metadata(any_server):
    with client_for(any_server) as client:
        examples = client.examples()
        statuses = client.status()
        metadata = client.metadata()
    assert examples.query_ids.tolist()[:2] == ["item-0", "item-1"]
    np.testing.assert_array_equal(examples.candidate_vectors, any_server.model.vectors[:8])
    assert [(s.version, s.state, s.error_code) for s in statuses] == [(3, "AVAILABLE", "OK")]
    assert metadata.model == "scann_model" and metadata.version == 3
    serving = metadata.signatures["serving_default"]
    assert (serving.inputs["ids"].dtype, serving.inputs["ids"].shape) == ("string", [-1])
    assert (serving.outputs["scores"].dtype, serving.outputs["scores"].shape) == ("float32", [-1, 5])
    vectors = metadata.signatures["search_by_vector"].inputs["vectors"]
    assert (vectors.dtype, vectors.shape) == ("float32", [-1, 8])


def test_new_model_version_with_other_id_dtype_refreshes_metadata_once(server):
    with client_for(server) as client:
        client.search("item-1")
        server.model = FakeModel(id_dtype="int64", version=4)
        result = client.search("1002")[0]
        assert result.ids.dtype == np.int64
        assert server.calls == {"GetModelMetadata": 2, "Predict": 3}
        # A genuine bad id does not trigger another refresh.
        with pytest.raises(InvalidRequestError, match="99"):
            client.search(99)
        assert server.calls["GetModelMetadata"] == 2


def test_version_and_label_reach_the_server(server):
    with client_for(server, version=3) as client:
        client.search("item-1")
    with client_for(server, version_label="stable") as client:
        client.status()
    specs = [request.model_spec for _, request in server.requests]
    assert specs[-2].version.value == 3 and specs[-2].signature_name == "serving_default"
    assert specs[-1].version_label == "stable" and not specs[-1].HasField("version")
    with client_for(server, version=9) as client, pytest.raises(ModelNotFoundError, match="Specific"):
        client.status()
    with pytest.raises(ValueError, match="not both"):
        RetrievalClient(server.target, version=1, version_label="stable")


def test_unknown_model_is_model_not_found_and_unchained(any_server):
    with client_for(any_server, model="other_model") as client, pytest.raises(ModelNotFoundError) as info:
        client.metadata()
    error = info.value
    assert error.code == grpc.StatusCode.NOT_FOUND and "other_model" in error.details
    assert error.__cause__ is None and error.__suppress_context__
    assert "wait_until_available" in str(error)


def test_wait_until_available_polls_through_loading(server):
    server.status_script = [
        [(4, "START", 0, "")],
        [(4, "LOADING", 0, "")],
        [(3, "AVAILABLE", 0, ""), (4, "AVAILABLE", 0, "")],
    ]
    with client_for(server) as client:
        status = client.wait_until_available(timeout_s=10)
    assert (status.version, status.state) == (4, "AVAILABLE")
    assert server.calls["GetModelStatus"] == 3


def test_wait_until_available_times_out_naming_the_last_state(server):
    server.status_script = [[(4, "END", 3, "Failed to load: bad op")]]
    with client_for(server) as client, pytest.raises(WaitTimeoutError) as info:
        client.wait_until_available(timeout_s=1.5)  # long enough for a status answer on a busy machine
    message = str(info.value)
    assert "version 4 END" in message and "INVALID_ARGUMENT: Failed to load: bad op" in message
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_closed_client_refuses_calls(any_server):
    client = client_for(any_server)
    client.close()
    client.close()
    with pytest.raises(RuntimeError, match="closed"):
        client.status()


def test_async_client_returns_the_same_as_sync(make_server):
    server = make_server(FakeModel(id_dtype="int64"))

    async def run():
        async with AsyncRetrievalClient(server.target, retry=FAST_RETRY) as client:
            return (
                await client.search([1001, 1002], k=3),
                await client.search_by_vector(server.model.vectors[:2]),
                await client.examples(),
                await client.status(),
                await client.metadata(),
                await client.wait_until_available(timeout_s=5),
            )

    async_results = asyncio.run(run())
    with client_for(server) as client:
        sync_results = (
            client.search([1001, 1002], k=3),
            client.search_by_vector(server.model.vectors[:2]),
            client.examples(),
            client.status(),
            client.metadata(),
            client.wait_until_available(timeout_s=5),
        )
    assert async_results == sync_results


def test_async_errors_are_converted(any_server):
    async def run():
        async with AsyncRetrievalClient(any_server.target, retry=FAST_RETRY) as client:
            await client.search("__missing__")

    with pytest.raises(InvalidRequestError, match="__missing__") as info:
        asyncio.run(run())
    assert info.value.__suppress_context__


def test_tls_with_server_name_override_and_client_certificates(make_server, tls_files):
    credentials = grpc.ssl_server_credentials(
        [(tls_files["server_key"].read_bytes(), tls_files["server_pem"].read_bytes())],
        root_certificates=tls_files["ca_pem"].read_bytes(),
        require_client_auth=True,
    )
    server = make_server(server_credentials=credentials)
    tls = TlsConfig(
        ca_cert_path=str(tls_files["ca_pem"]),
        client_cert_path=str(tls_files["client_pem"]),
        client_key_path=str(tls_files["client_key"]),
        server_name_override="retrieval.test",
    )
    with client_for(server, tls=tls) as client:
        assert client.status()[0].state == "AVAILABLE"
    # The certificate names retrieval.test, not 127.0.0.1: without the override the handshake fails.
    no_override = TlsConfig(str(tls_files["ca_pem"]), str(tls_files["client_pem"]), str(tls_files["client_key"]))
    with client_for(server, tls=no_override, timeout_s=2) as client, pytest.raises(ServerUnavailableError):
        client.status()
    with pytest.raises(ValueError, match="cannot read the TLS CA certificate"):
        RetrievalClient(server.target, tls=TlsConfig("/nonexistent/ca.pem"))
    with pytest.raises(ValueError, match="both"):
        TlsConfig(client_cert_path="x.pem")


def test_dns_target_with_round_robin_reaches_the_server(any_server):
    with RetrievalClient(f"dns:///localhost:{any_server.target.rsplit(':', 1)[1]}", retry=FAST_RETRY) as client:
        assert client.search("item-9")[0].ids[0] == "item-9"


def test_one_sync_client_shared_by_threads(server):
    from concurrent.futures import ThreadPoolExecutor

    keys = [f"item-{i}" for i in range(16)]
    with client_for(server) as client, ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda key: client.search(key, k=1)[0].ids[0], keys * 4))
    assert results == keys * 4
    assert server.calls["GetModelMetadata"] <= 8, "metadata is fetched once, not per call"


def test_ids_that_only_fit_a_newer_version_trigger_one_refresh(make_server):
    server = make_server(FakeModel(id_dtype="int64"))
    with client_for(server) as client:
        client.search(1001)
        server.model = FakeModel(id_dtype="string", version=4)
        assert client.search("item-2")[0].ids[0] == "item-2"
        assert server.calls == {"GetModelMetadata": 2, "Predict": 2}
        with pytest.raises(InvalidRequestError, match="'nope'"):
            client.search("nope")
