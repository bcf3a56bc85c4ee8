"""Load a SavedModel through TF's C API and run signatures: the loader TF Serving itself uses.

Standalone on purpose: it runs inside the serving-runtime stand-in env (Python
3.10, tensorflow-cpu 2.11, scann 1.2.9, numpy<2), which has none of our other
dependencies. `TF_LoadSessionFromSavedModel` reaches tensorflow/cc/saved_model/
loader.cc (restore + init ops, exactly as tensorflow_model_server does); then
`TF_SessionRun` feeds the signature's tensor names from the returned MetaGraphDef.

Usage: python c_api_runner.py VERSION_DIR [--time CALLS] < requests.json > results.json
requests.json: [{"signature": "serving_default", "inputs": {"ids": {"dtype": "string", "value": ["1"]}}}, ...]
Each result: {"outputs": {name: {"dtype", "shape", "value"}}} or {"error": {"code", "message"}}.
With --time CALLS each request is instead run CALLS times in a tight loop (inputs built once:
what TF Serving's Session::Run costs, without Python's session harness) and then traced with
RunOptions FULL_TRACE: {"timing": {"median_us", "p10_us", "p90_us"}, "trace": {"step_us", "ops_us"}}.
"""

import ctypes
import json
import sys

import numpy as np
import scann  # noqa: F401  registers the Scann>* ops before the graph is imported
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2

if __package__:
    from model_builder.compat import tf_c_api
else:  # run as a script in the serving-runtime env, which has none of our packages
    import tf_c_api

_NUMPY = {1: np.float32, 3: np.int32, 9: np.int64, 10: np.bool_}
_NAMES = {v: k for k, v in tf_c_api.DTYPES.items()}


class Session:
    """A SavedModel loaded with TF_LoadSessionFromSavedModel (tag 'serve')."""

    def __init__(self, api: tf_c_api.CApi, export_dir):
        self.api = api
        self.status = api.new_status()
        self.graph = api.new_graph()
        self.session, meta = api.load_saved_model(export_dir, api.new_options(), self.graph, self.status)
        self.signatures = meta_graph_pb2.MetaGraphDef.FromString(meta).signature_def

    def endpoint(self, tensor_name):
        """The TF_Output of one of the loaded graph's tensor names."""
        return self.api.endpoint(self.graph, tensor_name)

    def tensor(self, spec):
        """A TF_Tensor from {"dtype", "value"} (nested lists); the caller deletes it."""
        if spec["dtype"] == "string":
            values = [str(x).encode() for x in np.asarray(spec["value"], dtype=object).ravel()]
            return self.api.string_tensor(values, list(np.shape(spec["value"])))
        array = np.ascontiguousarray(np.asarray(spec["value"], dtype=spec["dtype"]))
        return self.api.raw_tensor(spec["dtype"], array.tobytes(), list(array.shape))

    def _to_json(self, tensor):
        api = self.api
        shape = api.shape_of(tensor)
        count = int(np.prod(shape)) if shape else 1
        kind = api.tensor_type(tensor)
        if kind == tf_c_api.DTYPES["string"]:
            array = np.asarray([v.decode() for v in api.strings_of(tensor, count)], dtype=object).reshape(shape)
        else:
            dtype = np.dtype(_NUMPY[kind])
            array = np.frombuffer(ctypes.string_at(api.data(tensor), count * dtype.itemsize), dtype=dtype).reshape(
                shape
            )
        return {"dtype": _NAMES[kind], "shape": shape, "value": array.tolist()}

    def time(self, signature, inputs, calls):
        """Median/p10/p90 of `calls` TF_SessionRun calls, then a FULL_TRACE breakdown by op type (medians)."""
        import time as clock

        from tensorflow.core.protobuf import config_pb2

        sig = self.signatures[signature]
        in_names, out_names = sorted(inputs), sorted(sig.outputs)
        feeds = (tf_c_api.Output * len(in_names))(*[self.endpoint(sig.inputs[n].name) for n in in_names])
        values = (ctypes.c_void_p * len(in_names))(*[self.tensor(inputs[n]) for n in in_names])
        fetches = (tf_c_api.Output * len(out_names))(*[self.endpoint(sig.outputs[n].name) for n in out_names])
        results = (ctypes.c_void_p * len(out_names))()

        def once(options=None, metadata=None):
            self.api.session_run(self.session, feeds, values, fetches, results, self.status, options, metadata)
            if self.api.code(self.status) != 0:
                raise RuntimeError(self.api.message(self.status).decode())
            for tensor in results:
                self.api.delete_tensor(tensor)

        for _ in range(min(200, calls)):
            once()
        elapsed = []
        for _ in range(calls):
            start = clock.perf_counter_ns()
            once()
            elapsed.append((clock.perf_counter_ns() - start) / 1000)
        trace = config_pb2.RunOptions(trace_level=config_pb2.RunOptions.FULL_TRACE).SerializeToString()
        options = self.api.new_buffer()
        options.contents.data = ctypes.cast(ctypes.c_char_p(trace), ctypes.c_void_p)
        options.contents.length = len(trace)
        steps, ops = [], {}
        for _ in range(max(50, calls // 10)):
            metadata = self.api.new_buffer()
            once(options, metadata)
            meta = config_pb2.RunMetadata.FromString(ctypes.string_at(metadata.contents.data, metadata.contents.length))
            step, per_op = step_breakdown(meta.step_stats)
            steps.append(step)
            for op, us in per_op.items():
                ops.setdefault(op, []).append(us)
        for tensor in values:
            self.api.delete_tensor(tensor)
        q = np.percentile(elapsed, [10, 50, 90])
        return {
            "timing": {"calls": calls, "p10_us": q[0], "median_us": q[1], "p90_us": q[2]},
            "trace": {
                "step_us": float(np.median(steps)),
                "ops_us": {op: float(np.median(v + [0.0] * (len(steps) - len(v)))) for op, v in sorted(ops.items())},
            },
        }

    def run(self, signature, inputs):
        """Runs one signature; returns outputs or the TF error (code + message)."""
        sig = self.signatures[signature]
        in_names = sorted(inputs)
        out_names = sorted(sig.outputs)
        feeds = (tf_c_api.Output * len(in_names))(*[self.endpoint(sig.inputs[n].name) for n in in_names])
        values = (ctypes.c_void_p * len(in_names))(*[self.tensor(inputs[n]) for n in in_names])
        fetches = (tf_c_api.Output * len(out_names))(*[self.endpoint(sig.outputs[n].name) for n in out_names])
        results = (ctypes.c_void_p * len(out_names))()
        self.api.session_run(self.session, feeds, values, fetches, results, self.status)
        for tensor in values:
            self.api.delete_tensor(tensor)
        if self.api.code(self.status) != 0:
            return {"error": {"code": self.api.code(self.status), "message": self.api.message(self.status).decode()}}
        outputs = {name: self._to_json(tensor) for name, tensor in zip(out_names, results)}
        for tensor in results:
            self.api.delete_tensor(tensor)
        return {"outputs": outputs}


def step_breakdown(step_stats):
    """Wall time of one traced step and the summed node time per op type (from "name = Op(...)" labels), in us."""
    starts, ends, per_op = [], [], {}
    for device in step_stats.dev_stats:
        for node in device.node_stats:
            start = node.all_start_nanos or node.all_start_micros * 1000
            duration = node.all_end_rel_nanos or node.all_end_rel_micros * 1000
            starts.append(start)
            ends.append(start + duration)
            label = node.timeline_label
            op = label.split(" = ", 1)[1].split("(", 1)[0] if " = " in label else node.node_name
            per_op[op] = per_op.get(op, 0.0) + duration / 1000
    return ((max(ends) - min(starts)) / 1000 if starts else 0.0), per_op


def main():
    """Reads requests from stdin, prints results (one JSON document) to stdout."""
    export_dir = sys.argv[1]
    calls = int(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[2] == "--time" else 0
    requests = json.load(sys.stdin)
    session = Session(tf_c_api.CApi(), export_dir)
    if calls:
        results = [session.time(r["signature"], r["inputs"], calls) for r in requests]
    else:
        results = [session.run(r["signature"], r["inputs"]) for r in requests]
    json.dump(
        {
            "runtime": {"tensorflow": tf.__version__, "python": sys.version.split()[0]},
            "signatures": sorted(session.signatures),
            "results": results,
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
