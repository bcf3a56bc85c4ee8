"""Fast checks of the benchmark's pieces that the quick profile does not reach."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from benchmarks import datasets, knobs, plots, report


def test_idx_reader_roundtrip(tmp_path):
    pixels = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 20)
    path = tmp_path / "images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(np.array([2051, 3, 4, 5], dtype=">i4").tobytes() + pixels.tobytes())
    assert np.array_equal(datasets.read_idx_images(path), pixels)


def test_idx_reader_rejects_other_files(tmp_path):
    path = tmp_path / "labels-idx1-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(np.array([2049, 3, 0, 0], dtype=">i4").tobytes())
    with pytest.raises(ValueError, match="IDX3"):
        datasets.read_idx_images(path)


def test_fashion_mnist_is_normalized_and_held_out():
    # `make test` installs the Debian package (make datasets); a missing copy is a failure, not a skip.
    assert (datasets.FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(), f"missing: {datasets.FASHION_HINT} (make datasets)"
    ds = datasets.fashion_mnist(num_validation=100, num_test=50, limit=2000)
    assert ds.base.shape == (2000, 784) and ds.validation.shape == (100, 784) and ds.test.shape == (50, 784)
    assert np.allclose(np.linalg.norm(ds.base, axis=1), 1.0, atol=1e-5)
    assert ds.base.dtype == np.float32


def test_noisy_replication_keeps_originals_and_unit_norm():
    rng = np.random.default_rng(1)
    base = datasets.l2_normalize(rng.normal(size=(7, 8)).astype(np.float32))
    ds = datasets.Dataset("tiny", base, base[:2], base[2:4], "test")
    big = datasets.replicate_with_noise(ds, target=50)
    assert len(big.base) == 56 and np.array_equal(big.base[:7], base)
    assert np.allclose(np.linalg.norm(big.base, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(big.base[7:14], base)


def test_synthetic_queries_are_not_in_the_base():
    ds = datasets.synthetic(2000, 16, 50, 40)
    assert ds.base.shape == (2000, 16) and len(ds.validation) == 50 and len(ds.test) == 40
    assert not (ds.base[:, None, :] == ds.test[None, :, :]).all(axis=2).any()


def test_pareto_frontier():
    points = [(0.9, 100.0), (0.95, 50.0), (0.93, 40.0), (0.99, 10.0), (0.8, 90.0)]
    assert plots.pareto(points) == [(0.9, 100.0), (0.95, 50.0), (0.99, 10.0)]


def test_batching_advice_picks_the_knee_within_the_latency_budget():
    curve = [{"batch": b, "median_call_ms": ms, "us_per_query": ms * 1000 / b}
             for b, ms in ((1, 0.4), (8, 0.8), (64, 3.2), (256, 12.0))]
    advice = knobs.batching_advice(curve, cores=2, p99_budget_ms=5.0)
    assert advice["max_batch_size"] == 64 and advice["num_batch_threads"] == 2
    assert advice["batch_timeout_micros"] == 400 and advice["merge_gain"] == 8.0
    # A tighter budget rules out the 3.2 ms batch of 64.
    assert knobs.batching_advice(curve, cores=2, p99_budget_ms=1.0)["max_batch_size"] == 8


def test_targets_report_missed_ones():
    summary = {"recall_at_10": 0.96, "speedup_vs_exact": 30.0, "e2e_p50_ms": 1.2, "e2e_p99_ms": 6.0,
               "throughput_ratio_vs_fastapi_faiss": 0.5, "first_request_ms": 3.0, "steady_p99_ms": 2.0}
    targets = report._targets(summary)
    met = {name.split(" ")[0]: t["met"] for name, t in targets.items()}
    assert met == {"recall_at_10": True, "speedup_vs_exact": False, "e2e_p50_ms": True, "e2e_p99_ms": False,
                   "throughput_ratio_vs_fastapi_faiss": False, "first_request_ms": True}
