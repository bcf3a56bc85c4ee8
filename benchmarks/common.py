"""Shared helpers: progress log, percentiles, machine facts, versions, subprocesses, sizes."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
_STARTED = time.monotonic()


def log(message: str) -> None:
    """One progress line with the minutes:seconds since the run started (long work shows progress)."""
    elapsed = int(time.monotonic() - _STARTED)
    print(f"[bench {elapsed // 60:02d}:{elapsed % 60:02d}] {message}", flush=True)


def percentiles(samples_s: Sequence[float]) -> dict:
    """p50/p90/p99/mean/max in milliseconds of latencies given in seconds."""
    ms = np.asarray(samples_s, dtype=np.float64) * 1e3
    if ms.size == 0:
        return {"n": 0}
    return {
        "n": int(ms.size),
        "p50_ms": round(float(np.percentile(ms, 50)), 4),
        "p90_ms": round(float(np.percentile(ms, 90)), 4),
        "p99_ms": round(float(np.percentile(ms, 99)), 4),
        "mean_ms": round(float(ms.mean()), 4),
        "max_ms": round(float(ms.max()), 4),
    }


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (other work on the machine skews absolute numbers)."""
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict:
    """CPU model, cores, memory, kernel, load: the context every figure needs."""
    cpu = "unknown"
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "avx2": "avx2" in flags,
        "avx512f": "avx512f" in flags,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average": load_average(),
    }


def versions() -> dict:
    """Versions of everything measured (TF, ScaNN, Faiss, gRPC, FastAPI, ...) and the git commit."""
    import importlib.metadata as md

    out = {}
    for name in (
        "tensorflow",
        "scann",
        "faiss-cpu",
        "numpy",
        "grpcio",
        "protobuf",
        "fastapi",
        "uvicorn",
        "pydantic",
        "scann-serving-client",
    ):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=REPO).stdout.strip()
        )
        out["git_commit"] = commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        out["git_commit"] = "unknown"
    return out


def dir_size_mb(path: Path) -> float:
    """Bytes of all files under path, in MB (SavedModel size on disk)."""
    return round(sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) / 1e6, 2)


def rss_mb(pid: int | None = None) -> float:
    """Resident set size of a process (this one by default), in MB."""
    import psutil

    return round(psutil.Process(pid or os.getpid()).memory_info().rss / 1e6, 1)


def run_streaming(cmd: list[str], prefix: str, timeout_s: float, log_path: Path | None = None) -> tuple[int, list[str]]:
    """Runs cmd, echoing its output lines as progress; returns (exit code, lines)."""
    lines: list[str] = []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV, cwd=REPO)
    deadline = time.monotonic() + timeout_s
    handle = open(log_path, "a") if log_path else None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            lines.append(line)
            if handle:
                handle.write(line + "\n")
            if _worth_echoing(line):
                log(f"{prefix}: {line[:200]}")
            if time.monotonic() > deadline:
                proc.kill()
                raise TimeoutError(f"{prefix}: still running after {timeout_s:.0f} s: {' '.join(cmd)}")
        return proc.wait(), lines
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if handle:
            handle.close()


def _worth_echoing(line: str) -> bool:
    # TF/absl chatter (I0000..., W0000..., CUDA probing) is noise in a progress log.
    noisy = (
        "I0000",
        "W0000",
        "E0000",
        "WARNING: All log",
        "cuInit",
        "cuda",
        "oneDNN",
        "cpu_feature_guard",
        "To enable the following",
    )
    return bool(line) and not any(token in line for token in noisy) and not line[:4].isdigit()


def run_worker(args: list[str], prefix: str, timeout_s: float, log_path: Path | None = None) -> dict:
    """Runs `python -m benchmarks.worker ARGS` in a fresh process; returns the JSON it prints last."""
    code, lines = run_streaming([PYTHON, "-m", "benchmarks.worker", *args], prefix, timeout_s, log_path)
    results = [line for line in lines if line.startswith("{")]
    if code != 0 or not results:
        tail = "\n".join(lines[-15:])
        raise RuntimeError(f"{prefix}: worker failed (exit {code}):\n{tail}")
    return json.loads(results[-1])


def write_json(path: Path, data: dict) -> Path:
    """Writes pretty JSON (sorted keys, trailing newline)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2, sort_keys=True, default=_default) + "\n"
    path.write_text(text.replace(str(REPO) + "/", ""))  # repository-relative paths in committed results
    return path


def _default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
