"""The scheduler benchmark (benchmarks/scheduler_cxx.py): its quick grid run for real on the local server's
scheduler, without the TF Serving 2.11 harness (CI cannot build it), and its table / goal arithmetic.

Structure only: no timing is asserted."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tensorflow.core.protobuf import saved_model_pb2

from benchmarks import scheduler_cxx
from benchmarks.scheduler_grid import PLAIN, QUICK, Setting, goal_check, table

REPO = Path(__file__).resolve().parents[2]


def _signature(version_dir: Path):
    model = saved_model_pb2.SavedModel.FromString((version_dir / "saved_model.pb").read_bytes())
    return model.meta_graphs[0].signature_def["search_by_vector"]


def _test_npz(version_dir: Path, path: Path) -> Path:
    dim = _signature(version_dir).inputs["vectors"].tensor_shape.dim[1].size
    vectors = np.random.default_rng(0).normal(size=(20, dim)).astype(np.float32)
    np.savez(path, vectors=vectors, kth=np.zeros(20, np.float32))
    return path


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != scheduler_cxx.HARNESS_ENV}
    env.update(PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.scheduler_cxx", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


@pytest.fixture(scope="module")
def quick_scheduler_run(synthetic_model, tmp_path_factory):
    """The quick grid on a real model, no harness: (process, results JSON)."""
    root = tmp_path_factory.mktemp("scheduler")
    test = _test_npz(synthetic_model, root / "test.npz")
    out = root / "scheduler_cxx.json"
    proc = _run("--version-dir", str(synthetic_model), "--test", str(test), "--grid", "quick", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc, json.loads(out.read_text())


def test_without_a_harness_it_says_so_and_measures_the_local_scheduler(quick_scheduler_run):
    proc, result = quick_scheduler_run
    assert scheduler_cxx.NOT_AVAILABLE in proc.stdout
    assert result["cxx"] == {"available": False, "message": scheduler_cxx.NOT_AVAILABLE}
    rows = result["local"]["rows"]
    assert list(rows) == [PLAIN, *(s.name for s in QUICK.settings)]
    for name, cells in rows.items():
        assert sorted(cells, key=int) == [str(c) for c in QUICK.callers], name
        for c, v in cells.items():
            # Every call answered (a failed call would be a wrong model or a broken scheduler).
            assert v["failed"] == 0 and v["runs"] == QUICK.runs and v["qps"] > 0 and v["p50_us"] > 0, (name, c, v)
            assert v["qps_range"][0] <= v["qps"] <= v["qps_range"][1]
    assert set(result["local"]["goal"]) == {s.name for s in QUICK.settings}
    assert result["local"]["table_md"].splitlines()[2].startswith(f"| {PLAIN} |")
    assert result["commit"] and result["load_average_start"] and result["load_average_end"]


def test_summary_key_reports_the_missing_harness_and_the_local_table(quick_scheduler_run, tmp_path):
    _, result = quick_scheduler_run
    path = tmp_path / "scheduler_cxx.json"
    path.write_text(json.dumps(result))
    summary = scheduler_cxx.summary_of(path)
    assert summary["measured"] and summary["cxx"] == {"available": False, "message": scheduler_cxx.NOT_AVAILABLE}
    assert summary["local"]["rows"] == result["local"]["rows"] and "peers" not in summary
    assert summary["shipped_setting"] == scheduler_cxx.shipped_setting().name
    assert scheduler_cxx.summary_of(tmp_path / "absent.json")["measured"] is False


def test_a_harness_path_that_is_not_a_program_is_refused_in_one_line(synthetic_model, tmp_path):
    proc = _run(
        "--version-dir", str(synthetic_model), "--test", str(tmp_path / "t.npz"), "--harness", str(tmp_path / "nope")
    )
    assert (
        proc.returncode == 2 and proc.stderr.strip() == f"error: --harness {tmp_path / 'nope'}: not an executable file"
    )


def test_runs_file_feeds_and_fetches_the_signature_by_tensor_name(synthetic_model, tmp_path):
    sig = _signature(synthetic_model)
    queries = np.ones((3, sig.inputs["vectors"].tensor_shape.dim[1].size), np.float32)
    raw = scheduler_cxx.write_runs(synthetic_model, queries, tmp_path / "r.runs", count=4).read_bytes()

    def u32(at: int) -> tuple[int, int]:
        return struct.unpack_from("<I", raw, at)[0], at + 4

    def string(at: int) -> tuple[bytes, int]:
        n, at = u32(at)
        return raw[at : at + n], at + n

    count, at = u32(0)
    assert count == 4
    for j in range(count):
        label, at = string(at)
        n_in, at = u32(at)
        name, at = string(at)
        _, at = string(at)  # the TensorProto
        n_out, at = u32(at)
        outs = []
        for _ in range(n_out):
            out, at = string(at)
            outs.append(out.decode())
        assert (label, n_in, name.decode()) == (f"query {j}".encode(), 1, sig.inputs["vectors"].name)
        assert outs == [sig.outputs[k].name for k in sorted(sig.outputs)]
    assert at == len(raw)


def _cells(*pairs: tuple[int, int]) -> dict:
    return {str(c): {"qps": q, "p50_us": p} for c, (q, p) in zip((1, 8, 16), pairs)}


def test_goal_check_compares_with_plain_and_the_best_timeout_0_row():
    zero, slow = Setting(0, 8).name, Setting(400, 8).name
    rows = {
        PLAIN: _cells((1000, 700), (2500, 2000), (2500, 4000)),
        zero: _cells((900, 850), (3000, 1800), (3600, 2900)),
        slow: _cells((500, 1800), (2900, 1900), (3700, 2800)),
    }
    ok = goal_check(rows, zero)
    assert ok["one_caller_p50_over_plain_us"] == 150 and ok["one_caller_ok"] and ok["from_8_ok"]
    assert ok["qps_below_best_timeout_0_row"] == {}
    bad = goal_check(rows, slow)
    assert bad["one_caller_p50_over_plain_us"] == 1100 and not bad["one_caller_ok"] and bad["from_8_ok"]
    assert bad["qps_below_best_timeout_0_row"] == {"1": 400, "8": 100}
    assert table(rows, (1, 8, 16)).splitlines()[3] == f"| {zero} | 900 / 850 | 3,000 / 1,800 | 3,600 / 2,900 |"
