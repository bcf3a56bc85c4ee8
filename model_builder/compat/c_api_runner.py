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
import os
import sys

import numpy as np
import scann  # noqa: F401  registers the Scann>* ops before the graph is imported
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2

_TSTRING_SIZE = 24  # sizeof(TF_TString)
_DTYPES = {"float32": 1, "int32": 3, "string": 7, "int64": 9, "bool": 10}
_NUMPY = {1: np.float32, 3: np.int32, 9: np.int64, 10: np.bool_}
_NAMES = {v: k for k, v in _DTYPES.items()}


class _Buffer(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("length", ctypes.c_size_t), ("deallocator", ctypes.c_void_p)]


class _Output(ctypes.Structure):
    _fields_ = [("oper", ctypes.c_void_p), ("index", ctypes.c_int)]


class CApi:
    """The handful of C API functions we need, typed for ctypes."""

    def __init__(self):
        path = os.path.join(os.path.dirname(tf.__file__), "python", "_pywrap_tensorflow_internal.so")
        lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        v, i, s = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t

        def fn(name, restype, argtypes):
            f = getattr(lib, name)
            f.restype, f.argtypes = restype, argtypes
            return f

        self.new_status = fn("TF_NewStatus", v, [])
        self.code = fn("TF_GetCode", i, [v])
        self.message = fn("TF_Message", ctypes.c_char_p, [v])
        self.new_options = fn("TF_NewSessionOptions", v, [])
        self.new_graph = fn("TF_NewGraph", v, [])
        self.new_buffer = fn("TF_NewBuffer", ctypes.POINTER(_Buffer), [])
        self.load = fn(
            "TF_LoadSessionFromSavedModel",
            v,
            [v, v, ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p), i, v, ctypes.POINTER(_Buffer), v],
        )
        self.operation = fn("TF_GraphOperationByName", v, [v, ctypes.c_char_p])
        self.run = fn(
            "TF_SessionRun",
            None,
            [
                v,
                v,
                ctypes.POINTER(_Output),
                ctypes.POINTER(v),
                i,
                ctypes.POINTER(_Output),
                ctypes.POINTER(v),
                i,
                v,
                i,
                v,
                v,
            ],
        )
        self.allocate = fn("TF_AllocateTensor", v, [i, ctypes.POINTER(ctypes.c_int64), i, s])
        self.data = fn("TF_TensorData", v, [v])
        self.num_dims = fn("TF_NumDims", i, [v])
        self.dim = fn("TF_Dim", ctypes.c_int64, [v, i])
        self.tensor_type = fn("TF_TensorType", i, [v])
        self.delete_tensor = fn("TF_DeleteTensor", None, [v])
        self.string_init = fn("TF_StringInit", None, [v])
        self.string_copy = fn("TF_StringCopy", None, [v, ctypes.c_char_p, s])
        self.string_data = fn("TF_StringGetDataPointer", v, [v])
        self.string_size = fn("TF_StringGetSize", s, [v])


class Session:
    """A SavedModel loaded with TF_LoadSessionFromSavedModel (tag 'serve')."""

    def __init__(self, api, export_dir):
        self.api = api
        self.status = api.new_status()
        self.graph = api.new_graph()
        meta = api.new_buffer()
        tags = (ctypes.c_char_p * 1)(b"serve")
        self.session = api.load(api.new_options(), None, export_dir.encode(), tags, 1, self.graph, meta, self.status)
        if api.code(self.status) != 0:
            raise RuntimeError("load failed: " + api.message(self.status).decode())
        raw = ctypes.string_at(meta.contents.data, meta.contents.length)
        self.signatures = meta_graph_pb2.MetaGraphDef.FromString(raw).signature_def

    def _endpoint(self, tensor_name):
        op, index = tensor_name.rsplit(":", 1)
        handle = self.api.operation(self.graph, op.encode())
        if not handle:
            raise RuntimeError("operation not in graph: " + op)
        return _Output(handle, int(index))

    def _tensor(self, spec):
        api = self.api
        if spec["dtype"] == "string":
            values = [str(x).encode() for x in np.asarray(spec["value"], dtype=object).ravel()]
            shape = np.shape(spec["value"])
            dims = (ctypes.c_int64 * len(shape))(*shape)
            tensor = api.allocate(7, dims, len(shape), _TSTRING_SIZE * len(values))
            base = api.data(tensor)
            for n, value in enumerate(values):
                api.string_init(base + _TSTRING_SIZE * n)
                api.string_copy(base + _TSTRING_SIZE * n, value, len(value))
            return tensor
        array = np.ascontiguousarray(np.asarray(spec["value"], dtype=spec["dtype"]))
        dims = (ctypes.c_int64 * array.ndim)(*array.shape)
        tensor = api.allocate(_DTYPES[spec["dtype"]], dims, array.ndim, array.nbytes)
        ctypes.memmove(api.data(tensor), array.ctypes.data, array.nbytes)
        return tensor

    def _to_json(self, tensor):
        api = self.api
        shape = [api.dim(tensor, d) for d in range(api.num_dims(tensor))]
        count = int(np.prod(shape)) if shape else 1
        kind = api.tensor_type(tensor)
        base = api.data(tensor)
        if kind == 7:
            values = [
                ctypes.string_at(
                    api.string_data(base + _TSTRING_SIZE * n), api.string_size(base + _TSTRING_SIZE * n)
                ).decode()
                for n in range(count)
            ]
            array = np.asarray(values, dtype=object).reshape(shape)
        else:
            dtype = np.dtype(_NUMPY[kind])
            array = np.frombuffer(ctypes.string_at(base, count * dtype.itemsize), dtype=dtype).reshape(shape)
        return {"dtype": _NAMES[kind], "shape": shape, "value": array.tolist()}

    def time(self, signature, inputs, calls):
        """Median/p10/p90 of `calls` TF_SessionRun calls, then a FULL_TRACE breakdown by op type (medians)."""
        import time as clock

        from tensorflow.core.protobuf import config_pb2

        sig = self.signatures[signature]
        in_names, out_names = sorted(inputs), sorted(sig.outputs)
        feeds = (_Output * len(in_names))(*[self._endpoint(sig.inputs[n].name) for n in in_names])
        values = (ctypes.c_void_p * len(in_names))(*[self._tensor(inputs[n]) for n in in_names])
        fetches = (_Output * len(out_names))(*[self._endpoint(sig.outputs[n].name) for n in out_names])
        results = (ctypes.c_void_p * len(out_names))()

        def once(options=None, metadata=None):
            self.api.run(
                self.session,
                options,
                feeds,
                values,
                len(in_names),
                fetches,
                results,
                len(out_names),
                None,
                0,
                metadata,
                self.status,
            )
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
            step, per_op = _step_breakdown(meta.step_stats)
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
        feeds = (_Output * len(in_names))(*[self._endpoint(sig.inputs[n].name) for n in in_names])
        values = (ctypes.c_void_p * len(in_names))(*[self._tensor(inputs[n]) for n in in_names])
        fetches = (_Output * len(out_names))(*[self._endpoint(sig.outputs[n].name) for n in out_names])
        results = (ctypes.c_void_p * len(out_names))()
        self.api.run(
            self.session,
            None,
            feeds,
            values,
            len(in_names),
            fetches,
            results,
            len(out_names),
            None,
            0,
            None,
            self.status,
        )
        for tensor in values:
            self.api.delete_tensor(tensor)
        if self.api.code(self.status) != 0:
            return {"error": {"code": self.api.code(self.status), "message": self.api.message(self.status).decode()}}
        outputs = {name: self._to_json(tensor) for name, tensor in zip(out_names, results)}
        for tensor in results:
            self.api.delete_tensor(tensor)
        return {"outputs": outputs}


def _step_breakdown(step_stats):
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
    session = Session(CApi(), export_dir)
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
