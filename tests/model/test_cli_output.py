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
    assert loud.returncode == 0 and "oneDNN custom operations" in loud.stderr, loud.stderr[-2000:]
    assert quiet.stdout == loud.stdout
