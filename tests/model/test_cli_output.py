"""The CLI's own output: TensorFlow's CPU start-up probe lines are dropped, everything else is kept."""

from __future__ import annotations

import os
import subprocess
import sys

import support

PROBE = ("cuInit", "oneDNN custom operations", "cuda drivers", "cpu_feature_guard")


def _inspect(version_dir, **env) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run(
        [sys.executable, "-m", "model_builder", "inspect", str(version_dir)],
        capture_output=True,
        text=True,
        env={**base, "PYTHONPATH": str(support.REPO), **env},
        cwd=support.REPO,
        timeout=300,
    )


def test_no_tensorflow_start_up_noise_by_default_and_all_of_it_on_request(synthetic_model):
    quiet = _inspect(synthetic_model)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert not [line for line in quiet.stderr.splitlines() if any(p in line for p in PROBE)], quiet.stderr
    # TF_CPP_MIN_LOG_LEVEL=0 shows everything TF prints: the same lines come back, so the filter removed them.
    loud = _inspect(synthetic_model, TF_CPP_MIN_LOG_LEVEL="0")
    # Which probe lines TF prints depends on the CPU (oneDNN's only with AVX-512); a CPU-only machine
    # always gets the CUDA one.
    assert loud.returncode == 0 and any(p in loud.stderr for p in PROBE), loud.stderr[-2000:]
    assert quiet.stdout == loud.stdout


# A ScaNN tree trained in a process whose stderr goes through the CLI's filter: the partitioner's
# absl INFO lines (partitioner_factory_base.cc, kmeans_tree_partitioner_utils.h) are logged past
# TF_CPP_MIN_LOG_LEVEL, so only the filter can hold them back.
_TREE = """
import sys
from model_builder import tf_startup
tf_startup.filter_native_logs()
tf_startup.quiet_import()
import numpy as np
from model_builder.scann_import import scann_ops
x = np.random.default_rng(0).normal(size=(2000, 8)).astype(np.float32)
scann_ops.builder(x, 5, "dot_product").tree(num_leaves=20, num_leaves_to_search=5, training_sample_size=2000).score_brute_force().build()
print("kept: a line of our own", file=sys.stderr)
"""


def _tree(**env) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run(
        [sys.executable, "-c", _TREE],
        capture_output=True,
        text=True,
        env={**base, "PYTHONPATH": str(support.REPO), **env},
        cwd=support.REPO,
        timeout=300,
        check=True,
    )


def test_native_info_lines_follow_the_log_level():
    quiet, loud = _tree(), _tree(TF_CPP_MIN_LOG_LEVEL="0")
    assert "partitioner" in loud.stderr, loud.stderr[-2000:]  # the lines exist, so their absence means something
    assert "partitioner" not in quiet.stderr and "absl::InitializeLog" not in quiet.stderr, quiet.stderr[-2000:]
    assert quiet.stderr.strip().endswith("kept: a line of our own"), quiet.stderr[-2000:]
