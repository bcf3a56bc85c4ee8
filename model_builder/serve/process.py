"""The local server as a child process: the one launcher the demo, the tests and the benchmarks use.

`python -m model_builder serve` on loopback ports, its output in a log file. Like TF Serving 2.11
in its image, the server ignores SIGTERM (--on_sigterm, model_builder/serve/config.py): `stop()`
ends it with SIGINT (Ctrl-C: immediate exit), `terminate(grace)` does what kubelet does (SIGTERM,
then SIGKILL when the grace period ends).
"""

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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from model_builder import settings

# The serving image runs TF Serving with --enable_batching and this file; local runs do too.
BATCHING_FLAGS = ("--enable_batching", "--batching_parameters_file", str(settings.IMAGE_BATCHING_FILE))


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    """A running `python -m model_builder serve` child and how to reach it."""

    proc: subprocess.Popen
    port: int
    rest_port: int
    model_name: str
    log_path: Path
    started: float
    host: str = "127.0.0.1"

    @property
    def target(self) -> str:
        """host:port of the gRPC API."""
        return f"{self.host}:{self.port}"

    @property
    def rest(self) -> str:
        """Base URL of the REST API."""
        return f"http://{self.host}:{self.rest_port}"

    def status(self) -> dict:
        """GET /v1/models/NAME (TF Serving's REST status)."""
        with urllib.request.urlopen(f"{self.rest}/v1/models/{self.model_name}", timeout=5) as resp:
            return json.loads(resp.read())

    def wait_available(self, version: int | None = None, timeout: float = 120) -> dict:
        """Blocks until any (or the given) version is AVAILABLE; RuntimeError with the log tail if the server exits."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; log {self.log_path}:\n{self.log()}")
            with contextlib.suppress(OSError, ValueError):
                last = self.status()
                states = {int(s["version"]): s["state"] for s in last["model_version_status"]}
                if (version is None and "AVAILABLE" in states.values()) or states.get(version) == "AVAILABLE":
                    return last
            time.sleep(0.2)
        raise TimeoutError(f"{self.model_name} not AVAILABLE after {timeout:g} s; last status {last}\n{self.log()}")

    def log(self) -> str:
        """The server's combined output so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 60) -> int:
        """SIGINT (what Ctrl-C sends) and wait, SIGKILL after `timeout` s; returns the exit code."""
        return self._signal_then_kill(signal.SIGINT, timeout)

    def terminate(self, grace: float = 30) -> int:
        """Kubelet's way: SIGTERM, SIGKILL when `grace` s (terminationGracePeriodSeconds) have passed."""
        return self._signal_then_kill(signal.SIGTERM, grace)

    def _signal_then_kill(self, sig: signal.Signals, timeout: float) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start(
    base_path: Path,
    model_name: str,
    log_path: Path,
    *flags: str,
    port: int | None = None,
    rest_port: int | None = None,
    host: str = "127.0.0.1",
    batching: bool = True,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> ServerProcess:
    """Starts the local server for MODEL_NAME under base_path (free ports unless given).

    batching=True serves as the image does (--enable_batching with its batching file);
    `flags` are passed on (TF Serving's flag names). `host` may be any 127.0.0.0/8 address
    (Linux routes them all to lo): several servers can then share one port, like pods.
    """
    port = port or free_port()
    rest_port = rest_port or free_port()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # TF's C++ start-up lines would bury the server's own log lines.
    child_env = {"TF_CPP_MIN_LOG_LEVEL": "2", **(env if env is not None else os.environ)}
    cmd = [
        sys.executable,
        "-m",
        "model_builder",
        "serve",
        "--model-base-path",
        str(base_path),
        "--model-name",
        model_name,
        "--host",
        host,
        "--port",
        str(port),
        "--rest_api_port",
        str(rest_port),
        *(BATCHING_FLAGS if batching else ()),
        *flags,
    ]
    with open(log_path, "w") as handle:
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=child_env, cwd=cwd)
    return ServerProcess(proc, port, rest_port, model_name, log_path, time.perf_counter(), host)


@contextlib.contextmanager
def running(base_path: Path, model_name: str, log_path: Path, *flags: str, **kwargs) -> Iterator[ServerProcess]:
    """start(...) as a context manager: the server is stopped (SIGINT) on exit."""
    server = start(base_path, model_name, log_path, *flags, **kwargs)
    try:
        yield server
    finally:
        server.stop()
