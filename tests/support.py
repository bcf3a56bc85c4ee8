"""Shared test helpers: build real models, run the real CLI, start the real local server."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from model_builder import settings

REPO = Path(__file__).resolve().parent.parent
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
    proc = run_cli("build", "--out", str(out), "--model-name", model_name, *args, check=True)
    return Path(json.loads(proc.stdout.strip().splitlines()[-1])["version_dir"])


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningServer:
    """A `python -m model_builder serve` subprocess."""

    proc: subprocess.Popen
    target: str
    rest: str
    model_name: str
    log_path: Path

    def status(self) -> dict:
        """GET /v1/models/NAME (TF Serving's REST status)."""
        with urllib.request.urlopen(f"{self.rest}/v1/models/{self.model_name}", timeout=5) as resp:
            return json.loads(resp.read())

    def wait_available(self, version: int | None = None, timeout: float = 120) -> dict:
        """Blocks until (a given) version is AVAILABLE."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError, ValueError):
                last = self.status()
                states = {int(s["version"]): s["state"] for s in last["model_version_status"]}
                if (version is None and "AVAILABLE" in states.values()) or states.get(version) == "AVAILABLE":
                    return last
            time.sleep(0.2)
        raise AssertionError(f"not AVAILABLE after {timeout}s; last status {last}\n{self.log()}")

    def log(self) -> str:
        """The server's combined output so far."""
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


# The serving image's batching file: the image runs TF Serving with --enable_batching and it.
IMAGE_BATCHING_FILE = settings.IMAGE_BATCHING_FILE
BATCHING_FLAGS = ("--enable_batching", "--batching_parameters_file", str(IMAGE_BATCHING_FILE))
# TF Serving retries a failed load 5 times, a minute apart; tests keep the 5 tries, 0.1 s apart.
FAST_RETRIES = ("--load_retry_interval_micros", "100000")


@contextlib.contextmanager
def local_server(
    base_path: Path, model_name: str = "scann_model", *extra: str, log_dir: Path | None = None, batching: bool = True
) -> Iterator[RunningServer]:
    """Starts the local server on free ports for MODEL_NAME under base_path; stops it after.

    Batching is on with the image's batching file, as in production (batching=False: plain runs).
    """
    port, rest = free_port(), free_port()
    log_path = (log_dir or base_path) / f"server-{port}.log"
    handle = open(log_path, "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "model_builder",
            "serve",
            "--model-base-path",
            str(base_path),
            "--model-name",
            model_name,
            "--port",
            str(port),
            "--rest_api_port",
            str(rest),
            "--file_system_poll_wait_seconds",
            "0.2",
            *FAST_RETRIES,
            *(BATCHING_FLAGS if batching else ()),
            *extra,
        ],
        stdout=handle,
        stderr=subprocess.STDOUT,
        env=ENV,
        cwd=REPO,
    )
    server = RunningServer(proc, f"127.0.0.1:{port}", f"http://127.0.0.1:{rest}", model_name, log_path)
    try:
        yield server
    finally:
        server.terminate()
        handle.close()
