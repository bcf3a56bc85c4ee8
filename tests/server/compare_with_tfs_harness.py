"""Development check (not a test; CI cannot build the harness): the same runs through TF Serving 2.11's own
BatchingSession (tools/tfs_batching_harness) and through the local server with --enable_batching.

    PYTHONPATH=.:tests .venv/bin/python tests/server/compare_with_tfs_harness.py VERSION_DIR HARNESS_BINARY MAKE_RUNS_PY \\
        [--batching-file k8s/base/config/batching_parameters.txt]

Scenarios: one request of N known ids for N in 1, 8, 800, 801, 1024, 1025 on an idle queue, and
16 threads x 200 single-id requests of which 1 in 10 (and 3 in 10) are unknown ids. Prints one
JSON document: per scenario, what each side answered.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import grpc
import numpy as np

import support
from support import harness

ROWS = (1, 8, 800, 801, 1024, 1025)
_HARNESS_KEYS = (
    "max_batch_size",
    "batch_timeout_micros",
    "max_enqueued_batches",
    "num_batch_threads",
    "enable_large_batch_splitting",
    "max_execution_batch_size",
)


def _harness_params(batching_file: Path) -> list[str]:
    from model_builder.compat.tfs_batching import BatchingParameters

    params = BatchingParameters.from_file(batching_file)
    out = []
    for key in _HARNESS_KEYS:
        value = getattr(params, key)
        if value is not None:
            out.append(f"{key}={str(value).lower() if isinstance(value, bool) else value}")
    return out


def _run_harness(binary: str, version_dir: Path, runs: Path, mode: str, params: list[str], *extra: str) -> str:
    scann_so = (
        subprocess.run(
            [str(support.COMPAT_PYTHON), "-c", "import scann,os;print(os.path.dirname(scann.__file__))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        + "/scann_ops/cc/_scann_ops.so"
    )
    proc = subprocess.run(
        [binary, str(version_dir), scann_so, str(runs), mode, *params, *extra],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    return proc.stdout


def _known_ids(version_dir: Path) -> np.ndarray:
    import tensorflow as tf

    from model_builder.export import warmup

    for record in warmup.read(version_dir):
        request = record.predict_log.request
        if (request.model_spec.signature_name or "serving_default") == "serving_default":
            return tf.make_ndarray(request.inputs["ids"]).reshape(-1)
    raise SystemExit("no serving_default warmup record to take known ids from")


def _local_rows(target: str, model: str, ids: np.ndarray) -> dict:
    raw = harness.Raw(target)
    out = {}
    for n in ROWS:
        request = harness.predict_request(
            inputs={"ids": np.array([ids[i % len(ids)] for i in range(n)], dtype=ids.dtype)}, model=model
        )
        try:
            raw.predict(request, timeout=120)
            out[f"{n} rows"] = "OK"
        except grpc.RpcError as err:
            out[f"{n} rows"] = f"{err.code().name}: {err.details()}"
    raw.close()
    return out


def _local_mixed(target: str, model: str, ids: np.ndarray, per10: int, threads: int = 16, iters: int = 200) -> dict:
    """The harness's `concurrent` mode over gRPC: each answer compared with the same request answered alone."""
    unknown = (lambda j: f"no-such-{j}".encode()) if ids.dtype == object else (lambda j: 10**12 + j)
    runs = [np.array([unknown(j) if j % 10 < per10 else ids[j % len(ids)]], dtype=ids.dtype) for j in range(30)]
    raw = harness.Raw(target)
    truth = []
    for r in runs:
        try:
            truth.append(harness.outputs(raw.predict(harness.predict_request(inputs={"ids": r}, model=model))))
        except grpc.RpcError as err:
            truth.append(err.details())
    raw.close()
    counts = {"valid ok": 0, "valid wrong": 0, "collateral": 0, "bad as alone": 0, "bad otherwise": 0}
    lock = threading.Lock()

    def outcome(i: int, channel) -> str:
        try:
            got = harness.outputs(
                channel.predict(harness.predict_request(inputs={"ids": runs[i]}, model=model), timeout=60)
            )
        except grpc.RpcError as err:
            if isinstance(truth[i], str):
                return "bad as alone" if err.details() == truth[i] else "bad otherwise"
            return "collateral"
        if isinstance(truth[i], str):
            return "bad otherwise"
        same = all(
            got[k].tolist() == truth[i][k].tolist()
            if got[k].dtype.kind != "f"
            else np.allclose(got[k], truth[i][k], rtol=1e-4)
            for k in truth[i]
        )
        return "valid ok" if same else "valid wrong"

    def worker(t: int) -> None:
        channel = harness.Raw(target)
        for it in range(iters):
            key = outcome((t * 7 + it) % len(runs), channel)
            with lock:
                counts[key] += 1
        channel.close()

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return counts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("version_dir", type=Path)
    p.add_argument("harness_binary")
    p.add_argument("make_runs_py")
    p.add_argument("--batching-file", type=Path, default=support.IMAGE_BATCHING_FILE)
    args = p.parse_args()
    version_dir, model = args.version_dir.resolve(), args.version_dir.resolve().parent.name
    params = _harness_params(args.batching_file)
    report: dict = {"batching_file": str(args.batching_file), "harness_params": params, "rows": {}, "mixed": {}}
    with tempfile.TemporaryDirectory() as tmp:

        def runs(mode: str, *extra: str) -> Path:
            path = Path(tmp) / f"{mode}{'-'.join(extra)}.runs"
            subprocess.run(
                [sys.executable, args.make_runs_py, str(version_dir), mode, str(path), *extra],
                check=True,
                capture_output=True,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
            )
            return path

        text = _run_harness(args.harness_binary, version_dir, runs("rows", *map(str, ROWS)), "warmup", params)
        report["rows"]["tf_serving_2.11"] = {
            m.group(1): m.group(2).strip() for m in re.finditer(r"^(\d+ rows)\s+(.*)$", text, re.M)
        }
        for per10 in (1, 3):
            text = _run_harness(
                args.harness_binary,
                version_dir,
                runs("mixed", str(per10)),
                "concurrent",
                params,
                "threads=16",
                "iters=200",
            )
            report["mixed"][f"{per10}_in_10_unknown"] = {
                "tf_serving_2.11": text.strip().splitlines()[0] if text.strip() else text
            }
    ids = _known_ids(version_dir)
    with support.local_server(
        version_dir.parent.parent,
        model,
        "--batching_parameters_file",
        str(args.batching_file),
        log_dir=Path(tempfile.mkdtemp()),
    ) as server:
        server.wait_available(int(version_dir.name), timeout=300)
        report["rows"]["local_server"] = _local_rows(server.target, model, ids)
        for per10 in (1, 3):
            report["mixed"][f"{per10}_in_10_unknown"]["local_server"] = _local_mixed(server.target, model, ids, per10)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
