"""The tests' one support package: build real models, run the real CLI, start the real local server, wait.

Submodules: `support.harness` (small shared models and raw TF Serving gRPC calls, for
tests/server, tests/reliability and tests/client) and `support.deploy` (rendering, tools and
local services for tests/deploy). Import them as `from support import harness`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc

from model_builder import settings
from model_builder.build_runner import run_build
from model_builder.serve import process
from model_builder.serve.process import free_port

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}


def venv_path(variable: str, default: str) -> Path:
    """A venv's folder from the Makefile's variable (VENV, COMPAT_VENV, TOOLS_VENV); relative to the repo."""
    path = Path(os.environ.get(variable) or default)
    return path if path.is_absolute() else REPO / path


COMPAT_PYTHON = venv_path("COMPAT_VENV", ".venv-compat") / "bin" / "python"

# Small, fast training for tests that need a trained model but not a good one.
FAST_TRAIN = ["--epochs", "2", "--batch-size", "128", "--embedding-dim", "16", "--no-refit", "--verify-queries", "200"]


def run_cli(*args: str, timeout: float = 600, check: bool = False, **kwargs) -> subprocess.CompletedProcess:
    """Runs `python -m model_builder ARGS` in a fresh process, as a user would."""
    proc = subprocess.run(
        [sys.executable, "-m", "model_builder", *args],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=REPO,
        timeout=timeout,
        **kwargs,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"model_builder {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def build(out: Path, *args: str, model_name: str = "scann_model") -> Path:
    """Builds a model version through the CLI; returns its version folder."""
    return run_build("--out", str(out), "--model-name", model_name, *args, env=ENV, cwd=REPO, timeout=600).version_dir


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    """Polls predicate() until it returns a truthy value (returned); fails naming `what` and the last result.

    gRPC, OS and parse errors count as "not yet" (a server that is still starting).
    """
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (grpc.RpcError, OSError, ValueError) as err:
            last = err
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last: {last!r}")


# The local server as the demo and the benchmarks start it (model_builder/serve/process.py).
RunningServer = process.ServerProcess
IMAGE_BATCHING_FILE = settings.IMAGE_BATCHING_FILE
BATCHING_FLAGS = process.BATCHING_FLAGS
# TF Serving retries a failed load 5 times, a minute apart; tests keep the 5 tries, 0.1 s apart.
FAST_RETRIES = ("--load_retry_interval_micros", "100000")


@contextlib.contextmanager
def local_server(
    base_path: Path, model_name: str = "scann_model", *extra: str, log_dir: Path | None = None, batching: bool = True
) -> Iterator[RunningServer]:
    """Starts the local server on free ports for MODEL_NAME under base_path; stops it after.

    Batching is on with the image's batching file, as in production (batching=False: plain runs).
    """
    log_dir = log_dir or base_path
    port = free_port()
    with process.running(
        base_path,
        model_name,
        log_dir / f"server-{port}.log",
        "--file_system_poll_wait_seconds",
        "0.2",
        *FAST_RETRIES,
        *extra,
        port=port,
        batching=batching,
        env=ENV,
        cwd=REPO,
    ) as server:
        yield server


def run_smoke_suite(
    target: str, model: str = "scann_model", *extra: str, wait_s: float = 60
) -> subprocess.CompletedProcess:
    """The target-only smoke suite (tests/smoke, what `make smoke` runs) against TARGET, in its own pytest."""
    tests = REPO / "tests"
    command = [sys.executable, "-m", "pytest", "-c", str(tests / "pytest.ini"), str(tests / "smoke")]
    command += ["--target", target, "--model", model, "--wait-s", f"{wait_s:g}", "-q", *extra]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=ENV)
