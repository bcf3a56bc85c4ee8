#!/usr/bin/env python3
"""Sizing for scripts/release.sh: the pod memory limit and startup budget a model needs.

The figure comes from the build: build_info.json["memory"]["peak_rss_bytes"], also in the image
label io.scann-serving.memory.peak-rss-bytes, is the peak RSS of loading and warming the version
in the serving-runtime stand-in (model_builder/compat/memory.py). The stand-in holds TF 2.11's
C++ runtime and the model but not TF Serving's own gRPC/HTTP servers, batching queues and their
threads, nor the allocator's growth under concurrent requests; HEADROOM covers those:

    required = peak + max(25% of peak, 256 MiB), rounded up to a multiple of 64 MiB

The startup budget comes from the same measurement: load + warmup seconds in the stand-in
(label io.scann-serving.startup.load-seconds). A node reads the model from a cold page cache
on a CPU that may be slower or shared, so the budget is 3x the measurement plus a minute:

    budget = max(60 s, 3 * load + 60 s), rounded up to the probe period (10 s)
    progressDeadlineSeconds = max(600, budget + 300): one slow wave (image pull 120 s + budget
                              + readiness 10 s) and slack must not count as a stuck rollout

Usage (YAML needs PyYAML: the tools venv's python):
    k8s_memory.py required PEAK_BYTES              -> "<bytes> <quantity>"
    k8s_memory.py check RENDERED.yaml PEAK_BYTES   -> exit 0, or 2 with one line naming the fix
    k8s_memory.py startup LOAD_SECONDS             -> "<failureThreshold> <progressDeadlineSeconds>"
    k8s_memory.py namespace RENDERED.yaml          -> the Deployment's namespace
"""

from __future__ import annotations

import math
import re
import sys

MIB = 2**20
HEADROOM_FRACTION = 0.25
HEADROOM_MIN_BYTES = 256 * MIB
ROUND_TO_BYTES = 64 * MIB
STARTUP_PERIOD_S = 10  # k8s/base/deployment.yaml startupProbe.periodSeconds
STARTUP_FACTOR = 3
STARTUP_MARGIN_S = 60
STARTUP_MIN_S = 60
PROGRESS_DEADLINE_MIN_S = 600  # k8s/base/deployment.yaml
PROGRESS_SLACK_S = 300  # pull 120 s + readiness 10 s + 170 s
_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def required_bytes(peak: int) -> int:
    """The smallest memory limit deploy accepts for a measured peak RSS."""
    need = peak + max(int(peak * HEADROOM_FRACTION), HEADROOM_MIN_BYTES)
    return math.ceil(need / ROUND_TO_BYTES) * ROUND_TO_BYTES


def startup(load_seconds: float) -> tuple[int, int]:
    """(startupProbe failureThreshold, progressDeadlineSeconds) for a measured load + warmup time."""
    budget = max(STARTUP_MIN_S, STARTUP_FACTOR * load_seconds + STARTUP_MARGIN_S)
    threshold = math.ceil(budget / STARTUP_PERIOD_S)
    return threshold, max(PROGRESS_DEADLINE_MIN_S, threshold * STARTUP_PERIOD_S + PROGRESS_SLACK_S)


def parse_quantity(text: str) -> int:
    """A Kubernetes memory quantity ("4Gi", "1500M", "1073741824") in bytes."""
    match = re.fullmatch(r"([0-9.]+)([kMGT]i?|)", str(text).strip())
    if not match:
        raise ValueError(f"memory quantity {text!r} is not understood (use Mi or Gi)")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def mib(n: int) -> str:
    return f"{n / MIB:.0f}Mi"


def _deployments(path: str) -> list[dict]:
    import yaml

    with open(path) as handle:
        return [d for d in yaml.safe_load_all(handle) if d and d.get("kind") == "Deployment"]


def check(path: str, peak: int) -> str | None:
    """None when every container limit and request is at least the requirement, else the problem."""
    need = required_bytes(peak)
    for deployment in _deployments(path):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            resources = container.get("resources", {})
            limit = resources.get("limits", {}).get("memory")
            request = resources.get("requests", {}).get("memory")
            where = f"Deployment {deployment['metadata']['name']} container {container['name']}"
            if limit is None:
                return f"{where} has no memory limit; the model needs {mib(need)}"
            limit_bytes = parse_quantity(limit)
            if limit_bytes < peak:
                return (
                    f"{where}: memory limit {limit} is below the model's measured peak RSS {mib(peak)}: "
                    f"it would be OOM-killed while loading; give it at least {mib(need)} (peak + headroom) "
                    "in the overlay's set-serving-resources.patch.yaml, or release with MEMORY=measured"
                )
            if limit_bytes < need:
                return (
                    f"{where}: memory limit {limit} leaves less than the headroom over the measured peak "
                    f"{mib(peak)}; give it at least {mib(need)}, or MEMORY=measured"
                )
            if request is not None and parse_quantity(request) < need:
                return f"{where}: memory request {request} is below the {mib(need)} the model needs (requests = limits)"
    return None


def main(argv: list[str]) -> int:
    """Command-line entry (see the module docstring)."""
    try:
        if argv[:1] == ["required"] and len(argv) == 2:
            need = required_bytes(int(argv[1]))
            print(need, mib(need))
            return 0
        if argv[:1] == ["check"] and len(argv) == 3:
            problem = check(argv[1], int(argv[2]))
            if problem:
                print(problem, file=sys.stderr)
                return 2
            return 0
        if argv[:1] == ["startup"] and len(argv) == 2:
            print(*startup(float(argv[1])))
            return 0
        if argv[:1] == ["namespace"] and len(argv) == 2:
            (deployment,) = _deployments(argv[1])
            print(deployment["metadata"].get("namespace", "default"))
            return 0
    except (ValueError, KeyError) as err:
        print(f"k8s_memory.py: {err}", file=sys.stderr)
        return 2
    print(__doc__.split("Usage", 1)[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
