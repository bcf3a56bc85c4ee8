"""The build's memory measurement (model_builder/compat/memory.py): loading and warming a version
in the serving-runtime stand-in (TF 2.11's C API in .venv-compat, the loader tensorflow_model_server
uses), stored in build_info.json for deploy sizing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

import support

pytestmark = pytest.mark.compat


def _memory_cli(version_dir, *args):
    return subprocess.run(
        [sys.executable, "-m", "model_builder.compat.memory", str(version_dir), *args],
        capture_output=True,
        text=True,
        cwd=support.REPO,
        env=support.ENV,
        timeout=600,
    )


def test_every_build_records_its_peak_rss_in_the_serving_runtime(items_model):
    """A build run where the stand-in env exists (make build, CI) stores the figure deploy reads."""
    memory = json.loads((items_model / "assets.extra/build_info.json").read_text())["memory"]
    assert memory["runtime"].startswith("tensorflow 2.11") and "scann 1.2.9" in memory["runtime"]
    # The runtime alone (TF's C++ libraries + ScaNN's ops) is ~176 MiB; the model adds to it.
    assert 100 * 2**20 < memory["baseline_rss_bytes"] < memory["loaded_rss_bytes"] <= memory["peak_rss_bytes"]
    assert memory["warmup_records"] > 0 and memory["model_bytes"] > 0


def test_a_version_the_runtime_cannot_load_fails_the_measurement_with_one_line(items_model, tmp_path):
    broken = tmp_path / "1"
    shutil.copytree(items_model, broken)
    (broken / "saved_model.pb").write_bytes((broken / "saved_model.pb").read_bytes()[:200])
    proc = _memory_cli(broken)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and str(broken) in lines[-1], proc.stderr[-2000:]


def test_write_stores_the_measurement_atomically(items_model, tmp_path):
    copy = tmp_path / "1"
    shutil.copytree(items_model, copy)
    info = json.loads((copy / "assets.extra/build_info.json").read_text())
    del info["memory"]
    (copy / "assets.extra/build_info.json").write_text(json.dumps(info))
    proc = _memory_cli(copy, "--write")
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = json.loads(proc.stdout.strip().splitlines()[-1])
    stored = json.loads((copy / "assets.extra/build_info.json").read_text())
    assert stored["memory"] == printed and stored["model_name"] == info["model_name"]
    assert not [p for p in (copy / "assets.extra").iterdir() if p.name.startswith(".")]  # no temp file left
