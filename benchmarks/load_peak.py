"""Where a version's load peak comes from: resident set over time while TF Serving's loader
loads it and its warmup file is replayed, split into phases (benchmarks/README.md, "Load peak").

Same stand-in as model_builder/compat/memory.py (TF 2.11's C API `TF_LoadSessionFromSavedModel`
+ `TF_SessionRun` of every warmup record, in the compat env), plus a thread sampling VmRSS every
10 ms. The loader's own phases come from its INFO log lines (tensorflow/cc/saved_model/loader.cc:
"Restoring SavedModel bundle.", "Running initialization op"), so the load splits into graph
import / variable restore / init ops (hash tables); each warmup record is its own phase.

CLI (build env): `python -m benchmarks.load_peak VERSION_DIR... [--out results/load_peak.json]`.
The probe half (`--probe`) runs in the compat env with the standard library only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOADER_MARKS = {"Restoring SavedModel bundle": "restore", "Running initialization op": "init_ops"}


def _probe(version_dir: str, runs: list[dict]) -> dict:
    """Compat half: load + warmup with a VmRSS sampler; returns samples and phase marks (epoch s, KiB)."""
    sys.path.insert(0, str(REPO / "model_builder" / "compat"))
    import tf_c_api
    from memory import _rss_kib, replay

    samples: list[tuple[float, int]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((time.time(), _rss_kib("VmRSS")))
            time.sleep(0.01)

    threading.Thread(target=sample, daemon=True).start()
    api = tf_c_api.CApi()
    status = api.new_status()
    api.load_scann_ops(status)
    marks = [(time.time(), "graph_import")]  # everything before is the runtime (baseline)
    graph = api.new_graph()
    session, _ = api.load_saved_model(version_dir, api.new_options(), graph, status)
    for n, run in enumerate(runs):
        marks.append((time.time(), f"warmup {n}: {run['signature']} {run['feeds'][0]['shape']}"))
        replay(api, graph, session, status, run, f"warmup record {n}")
    marks.append((time.time(), "end"))
    done.set()
    return {"samples": samples, "marks": marks, "peak_kib": _rss_kib("VmHWM")}


def _loader_marks(stderr: str) -> list[tuple[float, str]]:
    """(epoch s, phase) of loader.cc's INFO lines; their timestamps are local time."""
    marks = []
    for line in stderr.splitlines():
        for text, phase in LOADER_MARKS.items():
            if text in line:
                marks.append((datetime.strptime(line[:26], "%Y-%m-%d %H:%M:%S.%f").timestamp(), phase))
    return marks


def phases(samples: list, marks: list) -> list[dict]:
    """Per phase: RSS at its end and its maximum (MiB), from the sampled timeline."""
    rows = []
    before = [kib for t, kib in samples if t < marks[0][0]]
    rows.append({"phase": "runtime", "end_mib": round(before[-1] / 1024) if before else None})
    for (start, name), (end, _) in zip(marks, marks[1:]):
        inside = [kib for t, kib in samples if start <= t < end] or [kib for t, kib in samples if t < end][-1:]
        rows.append({"phase": name, "max_mib": round(max(inside) / 1024), "end_mib": round(inside[-1] / 1024)})
    return rows


def measure(version_dir: Path) -> dict:
    """Build half: one version's phase table, peak and file sizes."""
    from benchmarks.common import dir_size_mb
    from model_builder.compat.memory import compat_python, warmup_runs

    python = compat_python()
    if python is None:
        raise SystemExit("error: no compat env: run `make compat-venv` or set COMPAT_VENV")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "0"  # the loader's INFO lines mark its phases
    proc = subprocess.run(
        [str(python), __file__, "--probe", str(version_dir)],
        input=json.dumps(warmup_runs(version_dir)),
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"probe failed on {version_dir}: {proc.stderr.strip().splitlines()[-1:]}")
    probe = json.loads(proc.stdout.splitlines()[-1])
    marks = sorted([tuple(m) for m in probe["marks"]] + _loader_marks(proc.stderr))
    return {
        "version_dir": str(version_dir),
        "files_mib": round(dir_size_mb(version_dir) * 1e6 / 2**20, 1),
        "saved_model_pb_mib": round((version_dir / "saved_model.pb").stat().st_size / 2**20, 1),
        "variables_mib": round(dir_size_mb(version_dir / "variables") * 1e6 / 2**20, 1),
        "peak_mib": round(probe["peak_kib"] / 1024),
        "phases": phases(probe["samples"], marks),
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.load_peak VERSION_DIR... [--out FILE]`: print (and store) the phase tables."""
    import argparse

    from benchmarks.common import load_average, machine, write_json

    parser = argparse.ArgumentParser(prog="python -m benchmarks.load_peak", description=main.__doc__)
    parser.add_argument("version_dirs", type=Path, nargs="+")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    results = {"machine": machine(), "load_average": load_average(), "versions": []}
    for version_dir in args.version_dirs:
        result = measure(version_dir)
        results["versions"].append(result)
        print(f"{version_dir}: peak {result['peak_mib']} MiB, files {result['files_mib']} MiB")
        for row in result["phases"]:
            print(f"  {row['phase']:42s} max {row.get('max_mib', '')!s:>6} end {row['end_mib']!s:>6}")
    if args.out:
        write_json(args.out, results)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--probe"]:
        print(json.dumps(_probe(sys.argv[2], json.load(sys.stdin))))
        sys.exit(0)
    sys.exit(main())
