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
    assert (datasets.FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(), (
        f"missing: {datasets.FASHION_HINT} (make datasets)"
    )
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
    curve = [
        {"batch": b, "median_call_ms": ms, "us_per_query": ms * 1000 / b}
        for b, ms in ((1, 0.4), (8, 0.8), (64, 3.2), (256, 12.0))
    ]
    advice = knobs.batching_advice(curve, cores=2, p99_budget_ms=5.0)
    assert advice["max_execution_batch_size"] == 64 and advice["num_batch_threads"] == 2
    assert advice["batch_timeout_micros"] == 400 and advice["merge_gain"] == 8.0
    # The queue holds one request of max_batch_size on an idle server: 16 x 64 = 1024 rows.
    assert advice["max_batch_size"] == 1024 and advice["max_enqueued_batches"] == 16
    # A tighter budget rules out the 3.2 ms batch of 64; 128 batches of 8 hold 1024 rows.
    tight = knobs.batching_advice(curve, cores=2, p99_budget_ms=1.0)
    assert (tight["max_execution_batch_size"], tight["max_enqueued_batches"]) == (8, 128)


def test_targets_report_missed_ones():
    summary = {
        "recall_at_10": 0.96,
        "speedup_vs_exact": 30.0,
        "e2e_p50_ms": 1.2,
        "e2e_p99_ms": 6.0,
        "throughput_ratio_vs_fastapi_faiss": 0.5,
        "first_request_ms": 3.0,
        "steady_p99_ms": 2.0,
    }
    targets = report._targets(summary)
    met = {name.split(" ")[0]: t["met"] for name, t in targets.items()}
    assert met == {
        "recall_at_10": True,
        "speedup_vs_exact": False,
        "e2e_p50_ms": True,
        "e2e_p99_ms": False,
        "throughput_ratio_vs_fastapi_faiss": False,
        "first_request_ms": True,
    }


def _served(recall: float, p50_ms: float, qps: float, **extra) -> dict:
    return {
        "recall_at_10": recall,
        "latency_1": {"p50_ms": p50_ms, "qps": 1000 / p50_ms},
        "throughput_64": {"qps": qps},
        **extra,
    }


def _peer(recall: float, p50_ms: float, batch_recall: float, batch_qps: float) -> dict:
    return {
        **_served(recall, p50_ms, batch_qps / 2),
        "matched": True,
        "params_text": "efSearch=64",
        "batch_matched": {
            "recall_at_10": batch_recall,
            "matched": True,
            "params_text": "efSearch=32",
            "throughput_64": {"qps": batch_qps},
        },
    }


def test_side_by_side_compares_each_served_model_at_its_own_recall():
    served = {
        "tuned": _served(0.96, 0.3, 1000.0, graph={"p50_ms_1": 0.1, "qps_64": 3000.0}),
        "tuned_throughput": _served(0.97, 0.5, 5000.0, graph={"p50_ms_1": 0.2, "qps_64": 2000.0}),
    }
    rows = report.side_by_side(served, {"hnsw": _peer(0.97, 0.6, 0.975, 4000.0)})
    by_mode = {row["mode"]: row for row in rows}
    assert by_mode["per_query"]["served"] == "tuned" and by_mode["per_query"]["speedup"] == 2.0
    assert by_mode["per_query"]["speedup_graph"] == 6.0 and by_mode["per_query"]["served_faster"]
    assert by_mode["batch64"]["served"] == "tuned_throughput" and by_mode["batch64"]["speedup"] == 1.25
    assert by_mode["batch64"]["peer_params"] == "efSearch=32"
    # The verdict follows the C-API figure (what TF Serving pays), here slower than Faiss's batches.
    assert by_mode["batch64"]["speedup_graph"] == 0.5 and not by_mode["batch64"]["served_faster"]
    # Without a throughput build the default one stands in for batches too (runs before issue 15).
    (batch,) = [
        r
        for r in report.side_by_side({"tuned": served["tuned"]}, {"hnsw": _peer(0.97, 0.6, 0.975, 4000.0)})
        if r["mode"] == "batch64"
    ]
    assert batch["served"] == "tuned" and batch["speedup"] == 0.25 and not batch["served_faster"]


def test_chart_shows_both_served_points(tmp_path):
    search = {"chosen": {"family": "tree_ah", "num_leaves": 245}}
    result = {
        "dataset": {"name": "tiny"},
        "machine_cores": 2,
        "served": {
            "tuned": _served(0.96, 0.3, 1000.0, index_search=search),
            "tuned_throughput": _served(0.97, 0.5, 5000.0, index_search=search),
        },
        "faiss": {"hnsw": _peer(0.97, 0.6, 0.975, 4000.0)},
        "curves": {
            "hnsw": [
                {"recall_at_10": 0.9, "single_qps": 900.0, "batch64_qps": 3000.0},
                {"recall_at_10": 0.98, "single_qps": 500.0, "batch64_qps": 2000.0},
            ]
        },
    }
    path = plots.recall_qps_png(result, tmp_path / "chart.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
