"""benchmarks/sharding_scale.py's scoring parts: the chunked exact k-th score and the tie-aware recall
the 4M figures rest on, and the CLI's refusal of bad shard counts. No building or serving here
(tests/model covers `build --shards`)."""

from __future__ import annotations

import numpy as np

from benchmarks import datasets, sharding_scale
from retrieval_client import SearchResult


def test_exact_top_in_chunks_equals_one_full_sort():
    ds = datasets.synthetic(5000, 8, 0, 50)
    full = np.sort(ds.test @ ds.base.T, axis=1)[:, -sharding_scale.K]
    # A chunk smaller than K and one not dividing the rows: the running top-K must survive both.
    for chunk in (7, 999, 5000):
        np.testing.assert_allclose(sharding_scale.exact_top(ds.base, ds.test, chunk), full, rtol=1e-6)


def test_recall_counts_true_neighbours_and_ties_but_not_others():
    ds = datasets.synthetic(2000, 8, 0, 20)
    scores = ds.test @ ds.base.T
    order = np.argsort(-scores, axis=1)
    kth = sharding_scale.exact_top(ds.base, ds.test)

    def results(rows: np.ndarray) -> list[SearchResult]:
        return [
            SearchResult(np.array([f"sku-{r}" for r in row], object), np.zeros(len(row), np.float32)) for row in rows
        ]

    k = sharding_scale.K
    assert sharding_scale.recall(results(order[:, :k]), ds.base, ds.test, kth) == 1.0
    assert sharding_scale.recall(results(order[:, k : 2 * k]), ds.base, ds.test, kth) == 0.0
    half = np.concatenate([order[:, : k // 2], order[:, -(k // 2) :]], axis=1)
    assert sharding_scale.recall(results(half), ds.base, ds.test, kth) == 0.5
    # An exact duplicate of the k-th best row scores the same: a tie counts as a hit.
    base = np.concatenate([ds.base, ds.base[order[:1, k - 1]]])
    tie = order[:1, : k - 1].tolist()[0] + [len(ds.base)]
    assert sharding_scale.recall(results(np.array([tie])), base, ds.test[:1], kth[:1]) == 1.0


def test_cli_refuses_bad_shard_counts(capsys):
    assert sharding_scale.main(["--configs", "0,4"]) == 2
    assert sharding_scale.main(["--configs", "four"]) == 2
    assert "--configs" in capsys.readouterr().err
