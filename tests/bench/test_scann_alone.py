"""benchmarks/scann_alone.py's parts on a small catalogue: ann-benchmarks' builder call and ours, the sweep,
and the per-target pick. Structure and recall only, no timing asserted."""

from __future__ import annotations

import numpy as np

from benchmarks import datasets, scann_alone


def _small():
    ds = datasets.synthetic(3000, 16, 10, 100)
    exact = ds.test @ ds.base.T
    kth = np.sort(exact, axis=1)[:, -scann_alone.K]
    return ds.base, ds.test, kth


def test_both_builders_search_the_catalogue_and_the_sweep_reports_each_point():
    base, test, kth = _small()
    ours = {
        "distance": "dot_product",
        "num_leaves": 40,
        "num_leaves_to_search": 10,
        "training_sample_size": 3000,
        "anisotropic_quantization_threshold": 0.2,
        "dimensions_per_block": 2,
        "residual_quantization": True,
        "hash_type": "lut16",
        "reorder_num_neighbors": 100,
    }
    for searcher in (scann_alone.build_ours(base, ours), scann_alone.build_annb(base, (40, 0.2, 2, "dot_product"))):
        curve = scann_alone.sweep_scann(searcher, [(2, 20), (40, 200)], test, kth, base, test[:5])
        assert [(p["leaves"], p["reorder"]) for p in curve] == [(2, 20), (40, 200)]
        # Every leaf searched and a deep reorder: exact up to float rounding.
        assert curve[1]["recall"] >= 0.99 and 0 <= curve[0]["recall"] <= curve[1]["recall"]


def test_cheapest_takes_the_lowest_p50_that_reaches_the_target():
    curve = [{"recall": 0.91, "p50_us": 50}, {"recall": 0.96, "p50_us": 90}, {"recall": 0.97, "p50_us": 80}]
    assert scann_alone.cheapest(curve, 0.95) == {"recall": 0.97, "p50_us": 80}
    assert scann_alone.cheapest(curve, 0.99) is None
