"""Peak memory of loading and warming a version in the serving runtime stand-in: the figure pods are sized by.

TF Serving 2.11 cannot run here, so the load happens the way it does there, in the
compat env (Python 3.10 + tensorflow-cpu 2.11 + scann 1.2.9): TF's C API
`TF_LoadSessionFromSavedModel` (tensorflow/cc/saved_model/loader.cc, the loader
tensorflow_model_server calls) followed by a replay of the version's warmup file with
`TF_SessionRun`, as tensorflow_serving/servables/tensorflow/saved_model_warmup_util.cc
does before a version becomes AVAILABLE (the first searches build ScaNN's searcher).

The probe process never imports TensorFlow's Python package: it maps the runtime
libraries with ctypes (`_pywrap_tensorflow_internal.so`, which carries the C API and
links libtensorflow_framework.so.2) and registers ScaNN's ops with `TF_LoadLibrary`,
so its resident set is the C++ runtime, the model and a bare interpreter (~10 MB),
close to what tensorflow_model_server holds. Not included: TF Serving's own gRPC/HTTP
server and batching queues; the deploy headroom covers them (scripts/deploy.sh).

Two halves in one file: `measure()`/`record()` run in the build env (they read the
warmup file and signatures with TF/tensorflow-serving-api); `python memory.py --probe
VERSION_DIR < requests.json` runs in the compat env with the standard library only.
So this module imports nothing but the standard library at top level.

CLI (build env): `python -m model_builder.compat.memory VERSION_DIR [--write]`.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import time
from array import array
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROBE_FLAG = "--probe"
# array typecodes of the dtypes our signatures use (strings go through TF_TString).
_ARRAY_TYPECODES = {"float32": "f", "int32": "i", "int64": "q", "string": None}

if __package__:
    from model_builder.compat import tf_c_api
else:  # the probe runs as a script in the serving-runtime env, standard library only
    import tf_c_api


# ---------------------------------------------------------------- build-env half


def compat_python() -> Path | None:
    """The stand-in env's python: $COMPAT_VENV (relative paths from the repo root) or .venv-compat; None if absent."""
    venv = Path(os.environ.get("COMPAT_VENV") or ".venv-compat")
    python = (venv if venv.is_absolute() else REPO / venv) / "bin" / "python"
    return python if python.is_file() else None


def _tensor_spec(name: str, proto) -> dict:
    import numpy as np
    import tensorflow as tf

    value = tf.make_ndarray(proto)
    if value.dtype == object or value.dtype.kind in "SU":
        values = [v if isinstance(v, bytes) else str(v).encode() for v in value.ravel().tolist()]
        return {"name": name, "dtype": "string", "shape": list(value.shape), "values": [v.hex() for v in values]}
    dtype = np.dtype(value.dtype).name
    if dtype not in _ARRAY_TYPECODES:
        raise ValueError(f"warmup input {name} has dtype {dtype}, which the memory probe does not handle")
    return {"name": name, "dtype": dtype, "shape": list(value.shape), "values": value.ravel().tolist()}


def warmup_runs(version_dir: Path) -> list[dict]:
    """The warmup file as Session runs: feed/fetch tensor names from the MetaGraph's signatures."""
    from tensorflow.core.protobuf import saved_model_pb2

    from model_builder.export import warmup

    saved = saved_model_pb2.SavedModel.FromString((version_dir / "saved_model.pb").read_bytes())
    graphs = [g for g in saved.meta_graphs if "serve" in g.meta_info_def.tags]
    if not graphs:
        raise ValueError(f"{version_dir}: no MetaGraph tagged 'serve'")
    signatures = graphs[0].signature_def
    runs = []
    for log in warmup.read(version_dir):
        request = log.predict_log.request
        signature = signatures[request.model_spec.signature_name or "serving_default"]
        feeds = [_tensor_spec(signature.inputs[key].name, value) for key, value in sorted(request.inputs.items())]
        fetches = [signature.outputs[key].name for key in sorted(signature.outputs)]
        runs.append(
            {"signature": request.model_spec.signature_name or "serving_default", "feeds": feeds, "fetches": fetches}
        )
    return runs


def _folder_bytes(version_dir: Path) -> int:
    return sum(p.stat().st_size for p in version_dir.rglob("*") if p.is_file())


def measure(version_dir: Path, python: Path | None = None, timeout_s: float = 3600) -> dict:
    """Loads and warms version_dir in the stand-in env; returns peak/baseline RSS and timings.

    Raises CompatError when the runtime cannot load the version or a warmup record fails
    (TF Serving would then fail the load too) and ConfigError when the env is missing.
    """
    from model_builder.errors import CompatError, ConfigError

    python = python or compat_python()
    if python is None:
        raise ConfigError("the serving-runtime stand-in env is missing: run `make compat-venv` (or set COMPAT_VENV)")
    import tensorflow as tf
    from google.protobuf.message import DecodeError

    try:
        runs = warmup_runs(version_dir)
    except (DecodeError, ValueError, KeyError, OSError, tf.errors.OpError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CompatError(f"{version_dir}: cannot read its SavedModel signatures or warmup file: {reason}") from None
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    proc = subprocess.run(
        [str(python), str(Path(__file__).resolve()), PROBE_FLAG, str(version_dir)],
        input=json.dumps(runs),
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout_s,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise CompatError(f"the serving runtime stand-in could not measure {version_dir}: {tail}")
    report = json.loads(lines[-1])
    if "error" in report:
        raise CompatError(f"TF Serving's runtime would fail to load {version_dir}: {report['error']}")
    return {**report, "model_bytes": _folder_bytes(version_dir)}


def _write_memory(version_dir: Path, report: dict) -> None:
    from model_builder.export import version_store

    info = version_store.read_build_info(version_dir)
    info["memory"] = report
    path = version_dir / version_store.BUILD_INFO_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)  # readers see the old or the new file, never half of one


def record(version_dir: Path, log=print) -> dict | None:
    """Build hook: measures when the stand-in env exists and stores build_info["memory"]; else says why not.

    The builder image has no Python 3.10 env; `make image` measures on the host instead.
    """
    python = compat_python()
    if python is None:
        log(
            "memory: not measured here (no serving-runtime stand-in env; `make compat-venv`); "
            "`make image` measures it on the host before baking the image"
        )
        return None
    report = measure(version_dir, python)
    _write_memory(version_dir, report)
    log(
        f"memory: peak RSS {report['peak_rss_bytes'] / 2**20:.0f} MiB loading + warming in {report['runtime']} "
        f"(runtime alone {report['baseline_rss_bytes'] / 2**20:.0f} MiB, "
        f"files {report['model_bytes'] / 2**20:.1f} MiB)"
    )
    return report


def main(argv: list[str] | None = None) -> int:
    """`python -m model_builder.compat.memory VERSION_DIR [--write]`: print (and store) the measurement."""
    import argparse

    from model_builder.errors import BuilderError

    parser = argparse.ArgumentParser(prog="python -m model_builder.compat.memory", description=main.__doc__)
    parser.add_argument("version_dir", type=Path, help="a version folder: BASE/NAME/VERSION")
    parser.add_argument("--write", action="store_true", help="store the result in assets.extra/build_info.json")
    args = parser.parse_args(argv)
    if not (args.version_dir / "saved_model.pb").is_file():
        print(f"error: {args.version_dir} is not a version folder (no saved_model.pb)", file=sys.stderr)
        return 2
    try:
        report = measure(args.version_dir)
    except BuilderError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    if args.write:
        _write_memory(args.version_dir, report)
    print(json.dumps(report, sort_keys=True))
    return 0


# ---------------------------------------------------------------- compat-env half (standard library only)


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _tensor(api: tf_c_api.CApi, spec: dict):
    shape = spec["shape"]
    typecode = _ARRAY_TYPECODES[spec["dtype"]]
    if typecode is None:
        return api.string_tensor([bytes.fromhex(v) for v in spec["values"]], shape)
    return api.raw_tensor(spec["dtype"], array(typecode, spec["values"]).tobytes(), shape)


def replay(api: tf_c_api.CApi, graph, session, status, run: dict, label: str) -> None:
    """Runs one warmup record (a `warmup_runs` entry) through TF_SessionRun; raises naming `label`."""
    feeds = (tf_c_api.Output * len(run["feeds"]))(*[api.endpoint(graph, f["name"]) for f in run["feeds"]])
    values = (ctypes.c_void_p * len(run["feeds"]))(*[_tensor(api, f) for f in run["feeds"]])
    fetches = (tf_c_api.Output * len(run["fetches"]))(*[api.endpoint(graph, name) for name in run["fetches"]])
    results = (ctypes.c_void_p * len(run["fetches"]))()
    api.session_run(session, feeds, values, fetches, results, status)
    for tensor in list(values) + [r for r in results if r]:
        api.delete_tensor(tensor)
    api.check(status, label)


def _probe(version_dir: str, runs: list[dict]) -> dict:
    """Loads the version, replays the warmup runs, reports resident-set sizes (bytes) and seconds."""
    started = time.perf_counter()
    api = tf_c_api.CApi()
    status = api.new_status()
    api.load_scann_ops(status)
    baseline = _rss_kib("VmRSS")
    graph = api.new_graph()
    session, _ = api.load_saved_model(version_dir, api.new_options(), graph, status)
    loaded_at = time.perf_counter()
    loaded = _rss_kib("VmRSS")
    for n, run in enumerate(runs):
        replay(api, graph, session, status, run, f"warmup record {n} ({run['signature']})")
    finished = time.perf_counter()
    return {
        "runtime": f"tensorflow {_version('tensorflow-cpu', 'tensorflow')} C API + scann {_version('scann')}",
        "method": "TF_LoadSessionFromSavedModel + TF_SessionRun of every warmup record; VmHWM of the probe process",
        "baseline_rss_bytes": baseline * 1024,
        "loaded_rss_bytes": loaded * 1024,
        "peak_rss_bytes": _rss_kib("VmHWM") * 1024,
        "load_seconds": round(loaded_at - started, 3),
        "warmup_seconds": round(finished - loaded_at, 3),
        "warmup_records": len(runs),
    }


def _version(*names: str) -> str:
    from importlib import metadata

    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


def _probe_main(argv: list[str]) -> int:
    try:
        report = _probe(argv[0], json.load(sys.stdin))
    except RuntimeError as err:  # the runtime refused the model: report it, the caller raises CompatError
        report = {"error": str(err)}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == [PROBE_FLAG]:
        sys.exit(_probe_main(sys.argv[2:]))
    sys.exit(main())
