"""benchmarks/filtered_peers.py (hnswlib's filtered search as a peer) on a small catalogue with real
hnswlib, and the committed filtered results: every catalogue and selectivity has an hnswlib entry in
summary.json["filtered"] and in the README table. Structure and recall only, no timing asserted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("hnswlib", reason="benchmark packages: pip install -r requirements/bench.txt")

from benchmarks import datasets, filtered, filtered_peers, filtered_report  # noqa: E402

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def _levels(n: int = 10_000):
    ds = datasets.synthetic(n, 16, 0, 30)
    tables = filtered.attribute_tables(n)
    return ds.base, ds.test[:30], filtered.make_levels(ds.base, ds.test[:30], tables)


def test_filtered_call_returns_only_allowed_labels_and_pads_when_too_few_pass():
    base, queries, levels = _levels()
    index, _ = filtered_peers.hnswlib_index(base)
    index.set_ef(64)
    few = np.zeros(len(base), bool)
    few[[3, 500, 7000, 9999]] = True  # 4 allowed items, fewer than k = 10: hnswlib raises, we pad
    rows = filtered_peers.filtered_call(index, few.tolist(), filtered.K)(queries[:1])
    assert rows.shape == (1, filtered.K) and (rows == -1).all()
    wide = levels[1]  # 10 %
    rows = filtered_peers.filtered_call(index, wide.mask.tolist(), filtered.K)(queries[:1])
    assert wide.mask[rows[0]].all()


def test_matched_reaches_each_target_or_says_it_did_not():
    base, queries, levels = _levels()
    targets = {lv.fraction: 0.9 for lv in levels}
    targets[0.001] = 1.01  # out of reach: the whole sweep runs
    out = filtered_peers.hnswlib_matched(base, queries, levels, targets, repeats=1)
    assert set(out["levels"]) == {str(f) for f in filtered.FRACTIONS}
    for fraction in ("0.5", "0.1", "0.01"):
        level = out["levels"][fraction]
        # the cheapest ef reaching the target: the last of the sweep, every earlier one below it
        assert level["matched"] == level["sweep"][-1] and level["matched"]["recall_at_10"] >= 0.9
        assert all(s["recall_at_10"] < 0.9 for s in level["sweep"][:-1])
    tight = out["levels"]["0.001"]
    assert tight["matched"] is None and len(tight["sweep"]) == len(filtered_peers.HNSWLIB_EF)
    assert [s["param"] for s in tight["sweep"]] == list(filtered_peers.HNSWLIB_EF)


def test_committed_results_have_hnswlib_at_every_catalogue_and_selectivity():
    summary = filtered_report.summary_of(RESULTS)
    assert summary and set(summary) == {"synthetic-1Mx64", "wordnet-minilm-20kx384"}
    committed = json.loads((RESULTS / "summary.json").read_text())["filtered"]
    for name, cat in summary.items():
        assert set(cat["levels"]) == {str(f) for f in filtered.FRACTIONS}
        for fraction, row in cat["levels"].items():
            assert {"faiss_ivf", "faiss_hnsw", "hnswlib"} <= set(row), (name, fraction)
            assert committed[name]["levels"][fraction]["hnswlib"] == row["hnswlib"], (name, fraction)
    table = (RESULTS.parent / "README.md").read_text()
    assert filtered_report.markdown(RESULTS) in table
