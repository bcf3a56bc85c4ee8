"""search_filtered end to end: the local server (TF Serving 2.11's batching imitated, the image's
batching file) serving a model with item attributes, called by retrieval_client.

Concurrent callers with different filters are merged into shared Session::Runs and every
answer must equal that request's answer alone and the exact filtered search in numpy; bad
filters are refused by the client before sending (InvalidRequestError naming the problem), and
a raw request of the wrong width gets INVALID_ARGUMENT from the graph.
"""

from __future__ import annotations

import sys
import threading
import urllib.request

import grpc
import numpy as np
import pytest

import support
from support import harness

sys.path.insert(0, str(support.REPO / "client" / "src"))  # this checkout's client, not an installed one

from retrieval_client import InvalidRequestError, RetrievalClient  # noqa: E402

N, D, K = 1_500, 8, 10
GENRES = ("Action", "Comedy", "Drama", "Horror", "Sci-Fi")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import tensorflow as tf  # noqa: F401

    import model_builder.scann_import  # noqa: F401
    from model_builder.contract import Catalogue
    from model_builder.export import version_store
    from model_builder.export.filters import FilterOptions
    from model_builder.export.serving_graph import RetrievalModule, ServingOptions
    from model_builder.index import config as index_config
    from model_builder.index.attributes import _tables

    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(N, D)).astype(np.float32)
    ids = np.asarray([f"m{i}" for i in range(N)], dtype=object)
    genres = [tuple(rng.choice(GENRES, size=rng.integers(1, 3), replace=False)) for _ in range(N)]
    tables = _tables({"genre": genres}, {"year": rng.integers(1950, 2000, N).astype(np.float32)}, N, "genre", "t")
    resolved = index_config.resolve(index_config.IndexConfig(algorithm="brute_force"), N, D, K)
    searcher, _ = index_config.build_searcher(vectors, resolved, K)
    options = ServingOptions(k=K, attributes=tables, filters=FilterOptions(fetch=300))
    module = RetrievalModule(Catalogue(ids, None, ids, vectors), resolved, searcher, options)
    base = tmp_path_factory.mktemp("filtered-models")
    version_store.save_module(module, module.signatures(), base / "flt" / "1")
    (base / "monitoring.txt").write_text('prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }\n')
    with support.local_server(base, "flt", "--monitoring_config_file", str(base / "monitoring.txt")) as server:
        server.wait_available()
        with RetrievalClient(server.target, "flt", timeout_s=30) as client:
            yield client, server, vectors, ids, tables


def exact(query: int, vectors, ids, tables, allow=None, deny=None, where=None, exclude=(), max_per=0) -> list[str]:
    from model_builder.index.attributes import brute_force_filter

    keep = brute_force_filter(tables, allow, deny, where)
    keep[query] = False
    keep[np.isin(ids, list(exclude))] = False
    out, per_group = [], {}
    for i in np.argsort(-(vectors @ vectors[query]), kind="stable"):
        group = tables.crowd_group[i]
        if keep[i] and not (max_per and per_group.get(group, 0) >= max_per):
            per_group[group] = per_group.get(group, 0) + 1
            out.append(str(ids[i]))
        if len(out) == K:
            break
    return out


def _runs(server) -> int:
    """TF Serving's wrapped_run_count: Session::Run calls made for merged batches."""
    from model_builder.serve.batching import RunCounter

    with urllib.request.urlopen(f"{server.rest}/monitoring/prometheus/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return next(int(line.split()[-1]) for line in text.splitlines() if line.startswith(RunCounter.NAME + " "))


FILTERS = [
    {"allow": {"genre": ["Comedy"]}, "where": {"year": (1990, None)}},
    {"deny": {"genre": ["Drama", "Action"]}},
    {"where": {"year": (1977, 1977)}, "allow": {"genre": ["Horror"]}},  # < 1%: the exact path
    {"max_per": 1},
    {"exclude": ["m1", "m2", "m3"], "allow": {"genre": ["Sci-Fi", "Drama"]}, "max_per": 3},
]


def test_filtered_search_equals_exact_filtered_search(served):
    client, _, vectors, ids, tables = served
    for filters in FILTERS:
        results = client.search(["m10", "m700"], **filters)
        for query, result in zip((10, 700), results):
            where = {
                a: (-np.inf if lo is None else lo, np.inf if hi is None else hi)
                for a, (lo, hi) in filters.get("where", {}).items()
            }
            want = exact(query, vectors, ids, tables, **{**filters, "where": where})
            assert list(result.ids) == want, filters
    # No filter: serving_default, unchanged.
    assert list(client.search(["m10"])[0].ids) == exact(10, vectors, ids, tables)


def test_concurrent_requests_with_different_filters_are_answered_as_if_alone(served):
    client, server, *_ = served
    queries = [f"m{i}" for i in range(0, 1_500, 97)]
    alone = {(q, n): client.search([q], **FILTERS[n])[0] for q in queries for n in range(len(FILTERS))}
    errors, mismatches = [], []

    def caller(n: int) -> None:
        try:
            for _ in range(3):
                for q in queries:
                    got, want = client.search([q], **FILTERS[n])[0], alone[(q, n)]
                    # Scores may differ in the last float bits with the merged batch's shape (the
                    # matmul's blocking); ids and order may not.
                    if list(got.ids) != list(want.ids) or not np.allclose(
                        got.scores, want.scores, rtol=1e-5, atol=1e-5
                    ):
                        mismatches.append(f"{q} {n} {list(got.ids)} {list(want.ids)} {got.scores} {want.scores}")
        except Exception as exc:  # noqa: BLE001  (any failure is collateral damage to report)
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(n % len(FILTERS),)) for n in range(10)]
    runs_before = _runs(server)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    requests = 10 * 3 * len(queries)
    # Merged: fewer Session::Runs than requests (else the test proved nothing about batching).
    assert _runs(server) - runs_before < requests
    assert not errors and not mismatches, mismatches[0] if mismatches else errors


@pytest.mark.parametrize(
    "filters, named",
    [
        ({"allow": {"genres": ["Comedy"]}}, "unknown namespace 'genres'"),
        ({"deny": {"genre": ["Comedyy"]}}, "unknown token 'Comedyy'"),
        ({"where": {"yaer": (1990, None)}}, "unknown attribute 'yaer'"),
        ({"allow": {"genre": list(GENRES) * 4}}, "20 tokens"),
        ({"exclude": [f"m{i}" for i in range(65)]}, "65 ids"),
    ],
)
def test_bad_filters_raise_before_sending_naming_the_problem(served, filters, named):
    client, *_ = served
    with pytest.raises(InvalidRequestError, match=named):
        client.search(["m10"], **filters)


def test_a_raw_request_of_the_wrong_width_is_invalid_argument(served):
    _, server, *_ = served
    raw = harness.Raw(server.target)
    try:
        inputs = {
            "ids": np.array([b"m10"], dtype=object),
            "allow": np.array([[b""] * 17], dtype=object),  # the model takes 16
            "deny": np.array([[b""] * 16], dtype=object),
            "exclude": np.array([[b""] * 64], dtype=object),
            "lower": np.full((1, 1), -np.inf, np.float32),
            "upper": np.full((1, 1), np.inf, np.float32),
            "max_per": np.zeros(1, np.int32),
        }
        err = harness.rpc_error(raw.predict, harness.predict_request("search_filtered", inputs, model="flt"))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    finally:
        raw.close()


def _cli(server, *args: str):
    import os
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(support.REPO / "client" / "src")}
    cmd = [sys.executable, "-m", "retrieval_client", "search", "--target", server.target, "--model", "flt", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)


def test_cli_filters(served):
    client, server, vectors, ids, tables = served
    ok = _cli(server, "--id", "m10", "--allow", "genre=Comedy", "--where", "year=1990:", "--max-per", "1", "--json")
    assert ok.returncode == 0, ok.stderr
    import json

    got = json.loads(ok.stdout)["results"][0]["ids"]
    assert got == exact(
        10, vectors, ids, tables, allow={"genre": ["Comedy"]}, where={"year": (1990, np.inf)}, max_per=1
    )
    bad = _cli(server, "--id", "m10", "--allow", "genre=Comdy")
    assert bad.returncode == 2 and "unknown token 'Comdy'" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_search_by_vector_and_the_async_client_take_the_same_filters(served):
    import asyncio

    from retrieval_client import AsyncRetrievalClient

    client, server, vectors, ids, tables = served
    filters = FILTERS[0]
    where = {"year": (1990, np.inf)}
    want = exact(10, vectors, ids, tables, allow=filters["allow"], where=where)
    # A vector has no query item: the item itself is a result when the filter allows it.
    by_vector = list(client.search_by_vector(vectors[10], **filters)[0].ids)
    assert [i for i in by_vector if i != "m10"] == want[: len([i for i in by_vector if i != "m10"])]

    async def run() -> list:
        async with AsyncRetrievalClient(server.target, "flt", timeout_s=30) as aclient:
            return list((await aclient.search(["m10"], **filters))[0].ids)

    assert asyncio.run(run()) == want
