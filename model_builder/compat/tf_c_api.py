"""TensorFlow's C API (tensorflow/c/c_api.h), typed once for ctypes: the loader and runner TF Serving uses.

`TF_LoadSessionFromSavedModel` reaches tensorflow/cc/saved_model/loader.cc (restore + init ops,
as tensorflow_model_server does) and `TF_SessionRun` runs a signature by its tensor names, as
TF Serving's Predict does. The library is the one the tensorflow wheel ships
(`python/_pywrap_tensorflow_internal.so`, which links libtensorflow_framework.so.2), found
without importing TensorFlow's Python package.

Standard library only: the serving-runtime stand-in env (Python 3.10, tensorflow-cpu 2.11,
scann 1.2.9) runs the compat runner and the memory probe as scripts, and the build env uses
the same binding to time the serving graph (index/graph_timing.py).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys

# TF_DataType codes (tensorflow/c/tf_datatype.h) of the dtypes our signatures use.
DTYPES = {"float32": 1, "int32": 3, "string": 7, "int64": 9, "bool": 10}
TSTRING_SIZE = 24  # sizeof(TF_TString), tensorflow/core/platform/ctstring_internal.h


class Buffer(ctypes.Structure):
    """TF_Buffer."""

    _fields_ = [("data", ctypes.c_void_p), ("length", ctypes.c_size_t), ("deallocator", ctypes.c_void_p)]


class Output(ctypes.Structure):
    """TF_Output: an operation and one of its outputs."""

    _fields_ = [("oper", ctypes.c_void_p), ("index", ctypes.c_int)]


def package_dir(name: str) -> str:
    """A top-level package's folder, found without running its __init__."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {name} is not installed in {sys.executable}'s environment")
    return spec.submodule_search_locations[0]


class CApi:
    """The C API functions the runner, the memory probe and the graph timing need."""

    def __init__(self) -> None:
        path = os.path.join(package_dir("tensorflow"), "python", "_pywrap_tensorflow_internal.so")
        self._lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        v, i, s, p = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t, ctypes.POINTER
        fn = self._fn
        self.new_status = fn("TF_NewStatus", v, [])
        self.delete_status = fn("TF_DeleteStatus", None, [v])
        self.code = fn("TF_GetCode", i, [v])
        self.message = fn("TF_Message", ctypes.c_char_p, [v])
        self.load_library = fn("TF_LoadLibrary", v, [ctypes.c_char_p, v])
        self.new_options = fn("TF_NewSessionOptions", v, [])
        self.set_config = fn("TF_SetConfig", None, [v, v, s, v])
        self.delete_options = fn("TF_DeleteSessionOptions", None, [v])
        self.new_graph = fn("TF_NewGraph", v, [])
        self.delete_graph = fn("TF_DeleteGraph", None, [v])
        self.new_buffer = fn("TF_NewBuffer", p(Buffer), [])
        self.load = fn(
            "TF_LoadSessionFromSavedModel", v, [v, v, ctypes.c_char_p, p(ctypes.c_char_p), i, v, p(Buffer), v]
        )
        self.operation = fn("TF_GraphOperationByName", v, [v, ctypes.c_char_p])
        self.run = fn("TF_SessionRun", None, [v, v, p(Output), p(v), i, p(Output), p(v), i, v, i, v, v])
        self.close_session = fn("TF_CloseSession", None, [v, v])
        self.delete_session = fn("TF_DeleteSession", None, [v, v])
        self.allocate = fn("TF_AllocateTensor", v, [i, p(ctypes.c_int64), i, s])
        self.data = fn("TF_TensorData", v, [v])
        self.num_dims = fn("TF_NumDims", i, [v])
        self.dim = fn("TF_Dim", ctypes.c_int64, [v, i])
        self.tensor_type = fn("TF_TensorType", i, [v])
        self.delete_tensor = fn("TF_DeleteTensor", None, [v])
        self.string_init = fn("TF_StringInit", None, [v])
        self.string_copy = fn("TF_StringCopy", None, [v, ctypes.c_char_p, s])
        self.string_data = fn("TF_StringGetDataPointer", v, [v])
        self.string_size = fn("TF_StringGetSize", s, [v])

    def _fn(self, name: str, restype, argtypes):
        f = getattr(self._lib, name)
        f.restype, f.argtypes = restype, argtypes
        return f

    def check(self, status, what: str) -> None:
        """Raises RuntimeError with TF's message when `status` is not OK."""
        if self.code(status) != 0:
            raise RuntimeError(f"{what}: {self.message(status).decode(errors='replace')}")

    def load_scann_ops(self, status) -> None:
        """What `import scann` does for the runtime: registers the Scann>* ops and kernels."""
        library = os.path.join(package_dir("scann"), "scann_ops", "cc", "_scann_ops.so")
        self.load_library(library.encode(), status)
        self.check(status, "loading ScaNN's ops")

    def load_saved_model(self, export_dir: str, options, graph, status) -> tuple[int, bytes]:
        """TF_LoadSessionFromSavedModel with tag 'serve': the session handle and the MetaGraphDef's bytes."""
        meta = self.new_buffer()
        tags = (ctypes.c_char_p * 1)(b"serve")
        session = self.load(options, None, str(export_dir).encode(), tags, 1, graph, meta, status)
        self.check(status, f"loading {export_dir}")
        return session, ctypes.string_at(meta.contents.data, meta.contents.length)

    def endpoint(self, graph, tensor_name: str) -> Output:
        """The TF_Output of a tensor name such as 'search_by_vector_vectors:0'."""
        op, index = tensor_name.rsplit(":", 1)
        handle = self.operation(graph, op.encode())
        if not handle:
            raise RuntimeError(f"operation {op} is not in the loaded graph")
        return Output(handle, int(index))

    def session_run(self, session, feeds, values, fetches, results, status, options=None, metadata=None) -> None:
        """One TF_SessionRun of ctypes arrays of feeds/values and fetches/results (no targets)."""
        self.run(session, options, feeds, values, len(feeds), fetches, results, len(fetches), None, 0, metadata, status)

    def string_tensor(self, values: list[bytes], shape: list[int]):
        """A TF_STRING tensor of `values` (row-major) with `shape`."""
        dims = (ctypes.c_int64 * len(shape))(*shape)
        tensor = self.allocate(DTYPES["string"], dims, len(shape), TSTRING_SIZE * len(values))
        base = self.data(tensor)
        for n, value in enumerate(values):
            self.string_init(base + TSTRING_SIZE * n)
            self.string_copy(base + TSTRING_SIZE * n, value, len(value))
        return tensor

    def raw_tensor(self, dtype: str, raw: bytes, shape: list[int]):
        """A numeric tensor whose contents are the bytes `raw` (row-major, native byte order)."""
        dims = (ctypes.c_int64 * len(shape))(*shape)
        tensor = self.allocate(DTYPES[dtype], dims, len(shape), len(raw))
        ctypes.memmove(self.data(tensor), raw, len(raw))
        return tensor

    def strings_of(self, tensor, count: int) -> list[bytes]:
        """The `count` values of a TF_STRING tensor."""
        base = self.data(tensor)
        return [
            ctypes.string_at(self.string_data(base + TSTRING_SIZE * n), self.string_size(base + TSTRING_SIZE * n))
            for n in range(count)
        ]

    def shape_of(self, tensor) -> list[int]:
        """A tensor's dimensions."""
        return [self.dim(tensor, d) for d in range(self.num_dims(tensor))]
