"""Load a SavedModel through TF's C API and run signatures: the loader TF Serving itself uses.

Standalone on purpose: it runs inside the serving-runtime stand-in env (Python
3.10, tensorflow-cpu 2.11, scann 1.2.9, numpy<2), which has none of our other
dependencies. `TF_LoadSessionFromSavedModel` reaches tensorflow/cc/saved_model/
loader.cc (restore + init ops, exactly as tensorflow_model_server does); then
`TF_SessionRun` feeds the signature's tensor names from the returned MetaGraphDef.

Usage: python c_api_runner.py VERSION_DIR < requests.json > results.json
requests.json: [{"signature": "serving_default", "inputs": {"ids": {"dtype": "string", "value": ["1"]}}}, ...]
Each result: {"outputs": {name: {"dtype", "shape", "value"}}} or {"error": {"code", "message"}}.
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
        self.load = fn("TF_LoadSessionFromSavedModel", v,
                       [v, v, ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p), i, v, ctypes.POINTER(_Buffer), v])
        self.operation = fn("TF_GraphOperationByName", v, [v, ctypes.c_char_p])
        self.run = fn("TF_SessionRun", None, [v, v, ctypes.POINTER(_Output), ctypes.POINTER(v), i,
                                              ctypes.POINTER(_Output), ctypes.POINTER(v), i, v, i, v, v])
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
            values = [ctypes.string_at(api.string_data(base + _TSTRING_SIZE * n), api.string_size(base + _TSTRING_SIZE * n)).decode()
                      for n in range(count)]
            array = np.asarray(values, dtype=object).reshape(shape)
        else:
            dtype = np.dtype(_NUMPY[kind])
            array = np.frombuffer(ctypes.string_at(base, count * dtype.itemsize), dtype=dtype).reshape(shape)
        return {"dtype": _NAMES[kind], "shape": shape, "value": array.tolist()}

    def run(self, signature, inputs):
        """Runs one signature; returns outputs or the TF error (code + message)."""
        sig = self.signatures[signature]
        in_names = sorted(inputs)
        out_names = sorted(sig.outputs)
        feeds = (_Output * len(in_names))(*[self._endpoint(sig.inputs[n].name) for n in in_names])
        values = (ctypes.c_void_p * len(in_names))(*[self._tensor(inputs[n]) for n in in_names])
        fetches = (_Output * len(out_names))(*[self._endpoint(sig.outputs[n].name) for n in out_names])
        results = (ctypes.c_void_p * len(out_names))()
        self.api.run(self.session, None, feeds, values, len(in_names), fetches, results, len(out_names),
                     None, 0, None, self.status)
        for tensor in values:
            self.api.delete_tensor(tensor)
        if self.api.code(self.status) != 0:
            return {"error": {"code": self.api.code(self.status), "message": self.api.message(self.status).decode()}}
        outputs = {name: self._to_json(tensor) for name, tensor in zip(out_names, results)}
        for tensor in results:
            self.api.delete_tensor(tensor)
        return {"outputs": outputs}


def main():
    """Reads requests from stdin, prints results (one JSON document) to stdout."""
    export_dir = sys.argv[1]
    requests = json.load(sys.stdin)
    session = Session(CApi(), export_dir)
    results = [session.run(r["signature"], r["inputs"]) for r in requests]
    json.dump({"runtime": {"tensorflow": tf.__version__, "python": sys.version.split()[0]},
               "signatures": sorted(session.signatures), "results": results}, sys.stdout)


if __name__ == "__main__":
    main()
