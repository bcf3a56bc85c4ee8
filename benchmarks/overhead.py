"""Where one search_by_vector call's time goes, before and after issue 10's graph changes.

    python -m benchmarks.overhead [--before-rev cf3c5be] [--out benchmarks/results/overhead.json]

Builds one catalogue (clustered 1M x 64, the benchmarks' synthetic set) twice with the same
fixed ScaNN index (tree 1000 leaves, 100 searched, reorder 200): with the serving graph of
--before-rev (checked out of git into a temp folder) and with this checkout's. Then, for
batch 1 and 8, in ONE process per runtime with the versions interleaved in rounds (the
machine is shared; medians and relative costs within a run are what to read):
- TF 2.11 (the serving image's runtime) through its C API: a tight TF_SessionRun loop --
  what TF Serving's Session::Run pays, without Python -- and RunOptions FULL_TRACE step stats
  summed per op type (traced runs are slower; read them as shares);
- TF 2.20 from Python: Session.run (the old local server) and a session callable (the new one).
The compat side runs this same file under the compat env (`--capi-worker`), so it imports only
the standard library, numpy and model_builder/compat/c_api_runner.py there.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
BATCHES = (1, 8)
INDEX_FLAGS = [
    "--algorithm",
    "tree_ah",
    "--num-leaves",
    "1000",
    "--num-leaves-to-search",
    "100",
    "--reorder-num-neighbors",
    "200",
    "--no-tune",
    "--verify-queries",
    "300",
    "--target-recall",
    "0.9",
]
# Op types grouped by what they are for (approximate: the same op type can serve two purposes).
CATEGORIES = {
    "scann_search": {"Scann>ScannSearchBatched"},
    "scann_searcher_lookup": {"Scann>TensorsToScann", "ReadVariableOp", "VarHandleOp"},
    "input_checks": {
        "Assert",
        "CheckNumerics",
        "Size",
        "Equal",
        "Greater",
        "LessEqual",
        "LogicalAnd",
        "Shape",
        "Mul",
        "EnsureShape",
    },
    "row_masks": {"IsFinite", "All", "SelectV2", "ZerosLike"},
    "id_gather": {"ResourceGather", "GatherV2"},
}


def _queries(dim: int, seed: int = 1) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(max(BATCHES), dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _summary(samples: list[float]) -> dict:
    q = np.percentile(samples, [10, 50, 90])
    return {
        "calls": len(samples),
        "p10_us": round(float(q[0]), 1),
        "median_us": round(float(q[1]), 1),
        "p90_us": round(float(q[2]), 1),
    }


# -- compat env side (TF 2.11 C API) -------------------------------------------
def capi_worker(versions: dict[str, str], rounds: int, calls: int, traced: int) -> dict:
    """Interleaved TF_SessionRun loops and FULL_TRACE breakdowns for every version and batch size."""
    sys.path.insert(0, str(REPO / "model_builder" / "compat"))
    import ctypes

    import c_api_runner as runner
    import tf_c_api
    from tensorflow.core.protobuf import config_pb2

    api = tf_c_api.CApi()
    sessions = {label: runner.Session(api, path) for label, path in versions.items()}
    dim = next(iter(sessions.values())).signatures["search_by_vector"].inputs["vectors"].tensor_shape.dim[1].size
    queries = _queries(dim)
    prepared = {}
    for label, session in sessions.items():
        sig = session.signatures["search_by_vector"]
        outs = sorted(sig.outputs)
        for b in BATCHES:
            feeds = (tf_c_api.Output * 1)(session.endpoint(sig.inputs["vectors"].name))
            values = (ctypes.c_void_p * 1)(session.tensor({"dtype": "float32", "value": queries[:b].tolist()}))
            fetches = (tf_c_api.Output * len(outs))(*[session.endpoint(sig.outputs[n].name) for n in outs])
            prepared[(label, b)] = (session, feeds, values, fetches, (ctypes.c_void_p * len(outs))(), len(outs))

    def once(key, options=None, metadata=None):
        session, feeds, values, fetches, results, _ = prepared[key]
        api.session_run(session.session, feeds, values, fetches, results, session.status, options, metadata)
        api.check(session.status, "TF_SessionRun")
        for tensor in results:
            api.delete_tensor(tensor)

    samples: dict = {key: [] for key in prepared}
    for key in prepared:
        for _ in range(100):
            once(key)
    for _ in range(rounds):
        for key in prepared:
            for _ in range(calls):
                start = time.perf_counter_ns()
                once(key)
                samples[key].append((time.perf_counter_ns() - start) / 1000)
    trace = config_pb2.RunOptions(trace_level=config_pb2.RunOptions.FULL_TRACE).SerializeToString()
    options = api.new_buffer()
    options.contents.data = ctypes.cast(ctypes.c_char_p(trace), ctypes.c_void_p)
    options.contents.length = len(trace)
    out = {}
    for key in prepared:
        steps, ops = [], {}
        for _ in range(traced):
            metadata = api.new_buffer()
            once(key, options, metadata)
            meta = config_pb2.RunMetadata.FromString(ctypes.string_at(metadata.contents.data, metadata.contents.length))
            step, per_op = runner.step_breakdown(meta.step_stats)
            steps.append(step)
            for op, us in per_op.items():
                ops.setdefault(op, []).append(us)
        per_op = {op: round(statistics.median(v + [0.0] * (len(steps) - len(v))), 1) for op, v in ops.items()}
        out[f"{key[0]}/batch{key[1]}"] = {
            "untraced": _summary(samples[key]),
            "traced_step_us": round(statistics.median(steps), 1),
            "traced_ops_us": dict(sorted(per_op.items(), key=lambda kv: -kv[1])),
        }
    return out


# -- build env side (TF 2.20) --------------------------------------------------
def python_harness(versions: dict[str, Path], rounds: int, calls: int) -> dict:
    """Session.run vs a session callable (TF 2.20, in-process), interleaved."""
    import tensorflow as tf
    from tensorflow.core.protobuf import config_pb2

    import model_builder.scann_import  # noqa: F401  (registers the ScaNN ops before loading)

    runs = {}
    for label, path in versions.items():
        graph = tf.Graph()
        session = tf.compat.v1.Session(graph=graph)
        with graph.as_default():
            meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(path))
        sig = meta.signature_def["search_by_vector"]
        feed, fetch = sig.inputs["vectors"].name, [sig.outputs[k].name for k in sorted(sig.outputs)]
        fn = session._make_callable_from_options(config_pb2.CallableOptions(feed=[feed], fetch=fetch))
        queries = _queries(sig.inputs["vectors"].tensor_shape.dim[1].size)
        for b in BATCHES:
            x = queries[:b]
            runs[(label, b, "session_run")] = lambda s=session, f=fetch, n=feed, x=x: s.run(f, {n: x})
            runs[(label, b, "callable")] = lambda fn=fn, x=x: fn(x)
    samples: dict = {key: [] for key in runs}
    for run in runs.values():
        for _ in range(50):
            run()
    for _ in range(rounds):
        for key, run in runs.items():
            for _ in range(calls):
                start = time.perf_counter_ns()
                run()
                samples[key].append((time.perf_counter_ns() - start) / 1000)
    return {f"{label}/batch{b}/{how}": _summary(samples[(label, b, how)]) for (label, b, how) in runs}


def _categories(ops: dict[str, float]) -> dict[str, float]:
    out = {name: round(sum(v for op, v in ops.items() if op in members), 1) for name, members in CATEGORIES.items()}
    grouped = set().union(*CATEGORIES.values())
    out["other_nodes"] = round(sum(v for op, v in ops.items() if op not in grouped), 1)
    return out


def _build(catalogue: Path, out: Path, source: Path) -> Path:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(source)}
    from model_builder.build_runner import BuildRunError, run_build

    args = [
        "--candidates",
        str(catalogue),
        "--query",
        "item",
        "--out",
        str(out),
        "--model-name",
        "scann_model",
        *INDEX_FLAGS,
    ]
    try:
        return run_build(*args, env=env, cwd=source).version_dir
    except BuildRunError as err:
        raise SystemExit(f"build with {source} failed: {err}") from None


def _checkout(rev: str, folder: Path) -> Path:
    """model_builder/ and versions.env of a git revision, for building with that revision's graph."""
    folder.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "model_builder", "versions.env"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before-rev", default="cf3c5be", help="git revision whose serving graph is 'before'")
    p.add_argument(
        "--version",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="measure existing versions instead of building",
    )
    p.add_argument("--num", type=int, default=1_000_000, help="catalogue size")
    p.add_argument("--dim", type=int, default=64, help="dimensions")
    p.add_argument("--rounds", type=int, default=20, help="interleaved rounds")
    p.add_argument("--calls", type=int, default=100, help="calls per version, batch and round")
    p.add_argument("--traced", type=int, default=200, help="FULL_TRACE calls per version and batch")
    p.add_argument(
        "--work", type=Path, default=None, help="folder for the catalogue and models (default: a temp folder)"
    )
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "overhead.json")
    p.add_argument("--capi-worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.capi_worker:  # running in the compat env
        print(json.dumps(capi_worker(json.loads(args.capi_worker), args.rounds, args.calls, args.traced)))
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="overhead-"))
    if args.version:
        versions = {label: Path(path) for label, path in (v.split("=", 1) for v in args.version)}
    else:
        from model_builder.data.synthetic import clustered_embeddings

        catalogue = work / "catalogue.npz"
        if not catalogue.is_file():
            x = clustered_embeddings(args.num, args.dim, seed=0)
            np.savez(catalogue, ids=np.arange(args.num, dtype=np.int64), vectors=x)
        versions = {
            "before": _build(catalogue, work / "before", _checkout(args.before_rev, work / "before-src")),
            "after": _build(catalogue, work / "after", REPO),
        }
    load = os.getloadavg()
    compat = os.environ.get("COMPAT_VENV", str(REPO / ".venv-compat"))
    proc = subprocess.run(
        [
            str(Path(compat) / "bin" / "python"),
            str(Path(__file__).resolve()),
            "--capi-worker",
            json.dumps({k: str(v) for k, v in versions.items()}),
            "--rounds",
            str(args.rounds),
            "--calls",
            str(args.calls),
            "--traced",
            str(args.traced),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ""},
    )
    if proc.returncode != 0:
        raise SystemExit(f"TF 2.11 C-API worker failed:\n{proc.stderr[-3000:]}")
    capi = json.loads(proc.stdout.strip().splitlines()[-1])
    for entry in capi.values():
        entry["traced_categories_us"] = cats = _categories(entry["traced_ops_us"])
        # Shares of the traced step (tracing inflates every node; shares compare, absolute values do not).
        entry["traced_shares"] = {name: round(us / entry["traced_step_us"], 3) for name, us in cats.items()}
    result = {
        "what": f"one search_by_vector call, {args.num:,} x {args.dim} tree+AH (1000 leaves, 100 searched, reorder 200), "
        "batch 1 and 8; before = the graph of --before-rev, after = this checkout's",
        "how": "medians over interleaved rounds in one process per runtime; p10/p90 show the noise of the shared machine",
        "machine": {"cpus": os.cpu_count(), "loadavg_at_start": [round(x, 2) for x in load]},
        # Labels only: tracked results never point at the machine's paths.
        "versions": (
            {label: "given with --version" for label in versions}
            if args.version
            else {"before": f"serving graph of git {args.before_rev}", "after": "serving graph of this checkout"}
        ),
        "tf_2_11_c_api": capi,
        "tf_2_20_python": python_harness(versions, max(1, args.rounds // 2), args.calls),
    }
    result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
