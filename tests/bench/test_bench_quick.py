"""`python -m benchmarks run --profile quick` end to end: real builds, real servers, real Faiss.

Asserts the structure of what a run writes (JSON keys, PNG, report), never timings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import report

for module in ("faiss", "fastapi", "uvicorn", "matplotlib", "psutil"):
    pytest.importorskip(module, reason="benchmark packages: pip install -r requirements/bench.txt")

REPO = Path(__file__).resolve().parents[2]
SUMMARY_KEYS = (
    "recall_at_10",
    "speedup_vs_exact",
    "e2e_p50_ms",
    "e2e_p99_ms",
    "throughput_ratio_vs_fastapi_faiss",
    "first_request_ms",
    "steady_p99_ms",
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _snapshot(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*")} if folder.exists() else {}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One quick run into a temporary --out; returns (out folder, process)."""
    root = tmp_path_factory.mktemp("bench")
    committed = _snapshot(REPO / "benchmarks" / "results")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "run",
            "--profile",
            "quick",
            "--out",
            str(root / "out"),
            "--work",
            str(root / "work"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert proc.returncode == 0, f"quick profile failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert _snapshot(REPO / "benchmarks" / "results") == committed, (
        "the quick profile must not touch benchmarks/results"
    )
    return root / "out", proc


@pytest.mark.slow
def test_summary_has_the_issue_keys(quick_run):
    out, _ = quick_run
    summary = json.loads((out / "summary.json").read_text())
    for key in SUMMARY_KEYS:
        assert isinstance(summary[key], (int, float)) and summary[key] > 0, key
    assert 0.0 < summary["recall_at_10"] <= 1.0
    assert summary["machine"]["cores"] >= 1 and summary["machine"]["load_average"]
    assert summary["versions"]["tensorflow"] and summary["versions"]["faiss-cpu"] and summary["versions"]["scann"]
    assert summary["profile"] == "quick"
    assert all({"measured", "met"} <= set(t) for t in summary["targets"].values())


@pytest.mark.slow
def test_dataset_results_cover_every_configuration(quick_run):
    out, _ = quick_run
    results = {
        p.stem: json.loads(p.read_text())
        for p in out.glob("*.json")
        if p.name not in ("summary.json", "serving.json", "scheduler_cxx.json")
    }
    assert len(results) == 2 and any(name.startswith("wordnet-minilm-") for name in results), sorted(results)
    for name, result in results.items():
        configs = ("exact", "rule_of_thumb", "tuned", "tuned_throughput")
        assert set(result["served"]) >= set(configs), name
        for config in configs:
            served = result["served"][config]
            assert served["ok"] and 0.0 <= served["recall_at_10"] <= 1.0
            for key in ("savedmodel_mb", "rss_serving_mb", "build_wall_s"):
                assert served[key] > 0, (name, config, key)
            assert served["latency_1"]["p50_ms"] > 0 and served["throughput_64"]["qps"] > 0
        assert result["served"]["exact"]["recall_at_10"] == 1.0
        for config, objective in (("tuned", "latency"), ("tuned_throughput", "throughput")):
            search = result["served"][config]["index_search"]
            assert search["objective"] == objective and search["frontier"] and search["chosen"]["recall"] > 0
        assert set(result["faiss"]) == {"hnsw", "ivfpq"}
        for peer in result["faiss"].values():
            assert peer["sweep"] and peer["build_s"] > 0 and peer["params"]
            assert peer["batch_matched"]["throughput_64"]["qps"] > 0 and peer["batch_matched"]["params_text"]
        modes = {(row["mode"], row["peer"]) for row in report.side_by_side(result["served"], result["faiss"])}
        assert modes == {(m, k) for m in ("per_query", "batch64") for k in ("hnsw", "ivfpq")}
        assert "machine" in result and "versions" in result
        if result["headline"]:
            assert result["served"]["tuned"]["scann_sweep"] and result["served"]["tuned"]["batch_curve"]


@pytest.mark.slow
def test_serving_results_and_artifacts(quick_run):
    out, proc = quick_run
    serving = json.loads((out / "serving.json").read_text())
    assert len(serving["threads"]["settings"]) >= 2 and serving["threads"]["chosen"]
    assert set(serving["e2e"]["fastapi_faiss"]) == {"hnsw", "ivfpq"}
    assert serving["e2e"]["ours"]["concurrent"]["clients"] == 8
    assert {"warmup_on", "warmup_off"} == set(serving["cold_start"])
    assert serving["batching"]["max_batch_size"] >= 1
    pngs = list(out.glob("recall_qps_*.png"))
    assert len(pngs) == 2 and all(p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 10_000 for p in pngs)
    text = (out / "report.md").read_text()
    assert "## Targets" in text and "FastAPI + Faiss" in text
    assert "## Served model vs Faiss at equal recall" in text and "## Index search" in text
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["served_vs_faiss"]) == 2 and all(len(rows) == 4 for rows in summary["served_vs_faiss"].values())
    assert "[bench " in proc.stdout  # progress lines
    # The scheduler table: the local server's quick grid always; the C++ one only with a harness binary.
    scheduler = summary["scheduler_cxx"]
    assert scheduler["measured"] and scheduler["local"]["available"] and "peers" not in scheduler
    harness = os.environ.get("TFS_BATCHING_HARNESS")
    assert scheduler["cxx"]["available"] == bool(harness and os.access(harness, os.X_OK)), scheduler["cxx"]
