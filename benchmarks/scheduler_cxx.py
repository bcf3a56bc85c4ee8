"""Batching as TF Serving 2.11 runs it vs the plain session, and the local server's imitation, on one grid.

    python -m benchmarks.scheduler_cxx --version-dir DIR --test NPZ [--candidates NPZ] [--grid full|quick] [--out JSON]

The C++ part needs a TF Serving 2.11 BatchingSession harness binary, named by --harness or
$TFS_BATCHING_HARNESS: a program compiled from tensorflow/serving at tag 2.11.0
(batching/batching_session.cc on TF 2.11's SharedBatchScheduler, the model loaded with TF 2.11's
C-API SavedModel loader, as `tensorflow_model_server --enable_batching` does) that takes
`MODEL_DIR SCANN_OPS_SO RUNS_FILE bench|bench-plain key=value...` and prints
`... qps Q p50 P us p99 R us`. It needs a tensorflow/serving checkout to build, so CI has none:
without it the C++ table is reported as not available (said plainly in the JSON and the log)
and only the local server's scheduler is measured.

Every call is one row of `search_by_vector` (test queries), closed-loop callers; each cell is
the median of `runs` runs, run in rounds (round r measures every cell once) so the shared
machine's drifting load hits all cells alike. The load average is recorded per round.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import ENV, PYTHON, REPO, load_average, log, versions, write_json
from benchmarks.scheduler_grid import GRIDS, PLAIN, Grid, Sample, Setting, cell, goal_check, table

HARNESS_ENV = "TFS_BATCHING_HARNESS"
NOT_AVAILABLE = (
    f"TF Serving 2.11 BatchingSession harness: not available (set ${HARNESS_ENV} or --harness to a harness "
    "binary built from a tensorflow/serving 2.11.0 checkout); the C++ table is not measured"
)
_BENCH_LINE = re.compile(r"calls (\d+) failed (\d+) qps (\d+) p50 (\d+) us p99 (\d+) us")


def harness_binary(given: str | None = None) -> Path | None:
    """The harness from --harness or the environment, if it names an executable file."""
    path = given or os.environ.get(HARNESS_ENV)
    return Path(path) if path and os.access(path, os.X_OK) and Path(path).is_file() else None


def _str(b: bytes) -> bytes:
    return struct.pack("<I", len(b)) + b


def write_runs(version_dir: Path, queries: np.ndarray, out: Path, count: int = 30) -> Path:
    """The harness's runs file: `count` one-row search_by_vector requests fed and fetched by tensor names.

    Format (the harness's): u32 count; per run: str label, u32 n_in, (str tensor name, str TensorProto)...,
    u32 n_out, str tensor name...; str = u32 length + bytes. Tensor names come from the SignatureDef,
    as TF Serving's predict_util.cc feeds them.
    """
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    model = saved_model_pb2.SavedModel.FromString((version_dir / "saved_model.pb").read_bytes())
    sig = model.meta_graphs[0].signature_def["search_by_vector"]
    outputs = [sig.outputs[k].name.encode() for k in sorted(sig.outputs)]
    body = b""
    for j in range(count):
        proto = tf.make_tensor_proto(queries[j % len(queries)][None, :].astype(np.float32))
        body += _str(f"query {j}".encode()) + struct.pack("<I", 1)
        body += _str(sig.inputs["vectors"].name.encode()) + _str(proto.SerializeToString())
        body += struct.pack("<I", len(outputs)) + b"".join(_str(o) for o in outputs)
    out.write_bytes(struct.pack("<I", count) + body)
    return out


def scann_ops_library(compat_python: Path) -> str:
    """_scann_ops.so of the TF 2.11 compat env (the harness registers ScaNN's ops from it before loading)."""
    code = "import scann, os; print(os.path.dirname(scann.__file__))"
    found = subprocess.run([str(compat_python), "-c", code], capture_output=True, text=True, check=True)
    return found.stdout.strip() + "/scann_ops/cc/_scann_ops.so"


def harness_sample(binary: Path, model: Path, ops: str, runs: Path, setting: Setting | None, callers: int, calls: int):
    """One harness process: `bench` through the batching session (or `bench-plain` for setting None)."""
    mode = "bench-plain" if setting is None else "bench"
    params = [] if setting is None else [f"{k}={str(v).lower()}" for k, v in setting.key_values().items()]
    cmd = [str(binary), str(model), ops, str(runs), mode, *params, f"threads={callers}", f"iters={calls}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    match = _BENCH_LINE.search(proc.stdout)
    if not match:
        raise RuntimeError(
            f"harness gave no figures (exit {proc.returncode}): {proc.stdout[-500:]}{proc.stderr[-1500:]}"
        )
    _, failed, qps, p50, p99 = map(int, match.groups())
    return Sample(float(qps), float(p50), float(p99), failed)


def measure_cxx(binary: Path, version_dir: Path, queries: np.ndarray, grid: Grid, work: Path) -> dict:
    """Every cell of the grid through the harness (plain and batching), `grid.runs` rounds."""
    compat = Path(os.environ.get("COMPAT_VENV", str(REPO / ".venv-compat"))) / "bin" / "python"
    ops = scann_ops_library(compat)
    runs = write_runs(version_dir, queries, work / "search_by_vector.runs")
    rows: list[tuple[str, Setting | None]] = [(PLAIN, None), *[(s.name, s) for s in grid.settings]]
    samples: dict[str, dict[str, list[Sample]]] = {name: {str(c): [] for c in grid.callers} for name, _ in rows}
    loads = []
    for r in range(grid.runs):
        loads.append({"round": r + 1, "start": load_average()})
        for name, setting in rows:
            for c in grid.callers:
                sample = harness_sample(binary, version_dir, ops, runs, setting, c, grid.calls_per_caller(c))
                samples[name][str(c)].append(sample)
            log(
                f"scheduler C++ round {r + 1}: {name}: "
                + ", ".join(f"{c}:{samples[name][str(c)][-1].qps:.0f}" for c in grid.callers)
                + " QPS"
            )
        loads[-1]["end"] = load_average()
    cells = {name: {c: cell(s) for c, s in per.items()} for name, per in samples.items()}
    return {"rows": cells, "load_average": loads}


def measure_local(version_dir: Path, test_npz: Path, grid: Grid, candidates: Path | None) -> dict:
    """The local server's scheduler (model_builder/serve) at the same cells, in a fresh process."""
    cmd = [PYTHON, "-m", "benchmarks.scheduler_local", str(version_dir), str(test_npz), grid.name]
    cmd += [str(candidates)] if candidates else []
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=REPO, timeout=7200)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"local scheduler worker failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(lines[-1])


def run(version_dir: Path, test_npz: Path, grid: Grid, harness: Path | None, label: str, **extra) -> dict:
    """Both tables (C++ when a harness is given), the goal check of every setting, and with `candidates`
    (the catalogue .npz) the served model's recall plus Faiss and gRPC at the same caller counts."""
    candidates: Path | None = extra.get("candidates")
    with np.load(test_npz) as q:
        queries = q["vectors"]
    out: dict = {
        "model": label,
        "grid": grid.to_dict(),
        "commit": versions()["git_commit"],
        "load_average_start": load_average(),
        "calls": "one-row search_by_vector, closed-loop callers; cell = median of runs: QPS, p50/p99 in µs",
    }
    log("scheduler local: the local server's scheduler (model_builder/serve)")
    local = measure_local(version_dir, test_npz, grid, candidates)
    local["goal"] = {n: goal_check(local["rows"], n) for n in local["rows"] if n != PLAIN}
    local["table_md"] = table(local["rows"], grid.callers)
    out["local"] = local
    out["recall_at_10"] = local.get("recall_at_10")
    if harness is None:
        log(NOT_AVAILABLE)
        out["cxx"] = {"available": False, "message": NOT_AVAILABLE}
    else:
        log(f"scheduler C++: {harness} on {version_dir}")
        with tempfile.TemporaryDirectory() as work:
            cxx = measure_cxx(harness, version_dir, queries, grid, Path(work))
        out["cxx"] = {"available": True, **cxx}
        out["cxx"]["goal"] = {n: goal_check(cxx["rows"], n) for n in cxx["rows"] if n != PLAIN}
        out["cxx"]["table_md"] = table(cxx["rows"], grid.callers)
    if candidates is not None and out["recall_at_10"] is not None:
        from benchmarks import concurrency_peers

        log(f"concurrency: Faiss at recall >= {out['recall_at_10']} and a loopback gRPC call, same callers")
        work = extra.get("work") or REPO / "build" / "bench-work" / "concurrency"
        out["peers"] = concurrency_peers.run(candidates, test_npz, out["recall_at_10"], grid, Path(work))
    out["load_average_end"] = load_average()
    return out


def shipped_setting(path: Path | None = None) -> Setting:
    """The image's batching file (k8s/base/config/batching_parameters.txt) as a grid setting."""
    from model_builder import settings
    from model_builder.compat.tfs_batching import BatchingParameters

    params = BatchingParameters.from_file(path or settings.IMAGE_BATCHING_FILE)
    options = params.queue_options()
    return Setting(options.batch_timeout_micros, options.execution_batch_size, params.threads())


def peers_table(data: dict, setting: str) -> str:
    """Markdown: the served rows (C++ plain and `setting`) next to Faiss at the same recall and gRPC alone."""
    rows: dict[str, dict] = {}
    if data["cxx"].get("available"):
        rows[f"TF Serving 2.11 session, plain (recall {data['recall_at_10']})"] = data["cxx"]["rows"][PLAIN]
        rows[f"TF Serving 2.11 BatchingSession, {setting}"] = data["cxx"]["rows"][setting]
    peers = data["peers"]
    for peer in peers["faiss"].values():
        m = peer["matched"]
        if m.get("reached"):
            rows[f"Faiss {peer['factory']} {m['params_text']} (recall {m['recall_at_10']})"] = peer["rows"]
    grpc = peers["grpc_loopback"]
    rows[f"grpcio unary call alone ({grpc['request_bytes']} B in, {grpc['response_bytes']} B out)"] = grpc["rows"]
    return table(rows, tuple(data["grid"]["callers"]))


def markdown(data: dict, setting: str) -> str:
    """The README's tables of one run: C++ (or why not), local, and the peers at the same callers."""
    parts = [f"Cells: `QPS / p50 µs`, median of {data['grid']['runs']} runs; commit {data['commit']}."]
    if data["cxx"].get("available"):
        parts += ["TF Serving 2.11's BatchingSession (C++):", data["cxx"]["table_md"]]
    else:
        parts.append(data["cxx"]["message"])
    parts += ["The local server's scheduler (model_builder/serve, Python):", data["local"]["table_md"]]
    if "peers" in data:
        parts += ["Same callers, other engines (one query per call):", peers_table(data, setting)]
    return "\n\n".join(parts) + "\n"


def summary_of(path: Path) -> dict:
    """summary.json's `scheduler_cxx`: both tables (medians and spreads), the shipped file's goal check, the
    peers, and the commit and load they were measured at; says so when the run did not measure them."""
    if not path.is_file():
        return {"measured": False, "message": f"{path.name} not written by this run"}
    data = json.loads(path.read_text())
    if "skipped" in data:
        return {"measured": False, "message": data["skipped"]}
    shipped = shipped_setting().name
    out = {
        "measured": True,
        "commit": data["commit"],
        "model": data["model"],
        "recall_at_10": data.get("recall_at_10"),
        "calls": data["calls"],
        "load_average": {"start": data["load_average_start"], "end": data["load_average_end"]},
        "shipped_setting": shipped,
    }
    for part in ("cxx", "local"):
        section = data[part]
        if not section.get("available", True):
            out[part] = {"available": False, "message": section["message"]}
            continue
        out[part] = {
            "available": True,
            "rows": section["rows"],
            "load_average_per_round": section["load_average"],
            "shipped_goal": section["goal"].get(shipped, "the shipped setting is not in this grid"),
        }
    if "peers" in data:
        peers = data["peers"]
        out["peers"] = {
            "target_recall": peers["target_recall"],
            "faiss": {
                k: {"matched": v["matched"], "factory": v["factory"], "rows": v["rows"]}
                for k, v in peers["faiss"].items()
            },
            "grpc_loopback": peers["grpc_loopback"],
            "load_average": {"start": peers["load_average_start"], "end": peers["load_average_end"]},
        }
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI: measure one version, write the JSON, print the tables."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.scheduler_cxx", description=(__doc__ or "").splitlines()[0])
    p.add_argument("--version-dir", type=Path, required=True, help="a published version (has search_by_vector)")
    p.add_argument("--test", type=Path, required=True, help="test.npz of benchmarks.datasets (vectors, kth)")
    p.add_argument("--candidates", type=Path, help="the catalogue .npz: adds recall, Faiss and gRPC rows")
    p.add_argument("--grid", choices=sorted(GRIDS), default="full")
    p.add_argument("--harness", help=f"harness binary (default ${HARNESS_ENV})")
    p.add_argument("--label", default="", help="model description for the results")
    p.add_argument("--work", type=Path, help="Faiss indexes (default build/bench-work/concurrency)")
    p.add_argument("--out", type=Path, help="results JSON (default: print only)")
    args = p.parse_args(argv)
    if not (args.version_dir / "saved_model.pb").is_file():
        print(f"error: --version-dir {args.version_dir}: no saved_model.pb (give a version folder)", file=sys.stderr)
        return 2
    binary = harness_binary(args.harness)
    if args.harness and binary is None:
        print(f"error: --harness {args.harness}: not an executable file", file=sys.stderr)
        return 2
    label = args.label or args.version_dir.parent.name
    result = run(
        args.version_dir, args.test, GRIDS[args.grid], binary, label, candidates=args.candidates, work=args.work
    )
    if args.out:
        write_json(args.out, result)
    for part in ("cxx", "local"):
        if result[part].get("table_md"):
            print(f"\n{part}:\n{result[part]['table_md']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
