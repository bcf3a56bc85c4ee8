"""What one call of the serving graph costs, measured the way TF Serving runs it.

The candidate's serving module (the same tf.Module the build exports) is saved
into a temporary folder, loaded with TF_LoadSessionFromSavedModel (TF's C API,
i.e. tensorflow/cc/saved_model/loader.cc: the loader tensorflow_model_server
uses) and its `search_by_vector` signature is run with TF_SessionRun in a tight
loop on pre-built input tensors.

Why a C-API loop and not step stats: TF Serving's cost per request is
Session::Run on the signature's tensor names, including the session's own
feed/fetch and executor start-up, which step stats leave out; FULL_TRACE also
adds its own per-node bookkeeping (on a 70-node graph the traced span was
~150 us against ~65-110 us for the untraced C-API call here). The Python
session harness (numpy feed and fetch conversion, ~0.2 ms a call: benchmarks/README.md, overhead)
is what TF Serving does not pay, and what this loop leaves out: one ctypes call
(~0.2 us) remains. The session gets TF Serving's thread flags as shipped
(docker/serving/Dockerfile CMD: intra-op 1, inter-op 2).
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model_builder.contract import VECTOR_SIGNATURE

# tensorflow_model_server --tensorflow_intra_op_parallelism=1 --tensorflow_inter_op_parallelism=2
# (docker/serving/Dockerfile; k8s sets inter-op to the pod's CPUs).
INTRA_OP_THREADS = 1
INTER_OP_THREADS = 2


@dataclass(frozen=True)
class GraphCost:
    """One configuration's measured cost: microseconds per query of the serving graph."""

    us_per_query: float
    us_per_call: float
    batch: int
    calls: int
    load_s: float

    def to_dict(self) -> dict:
        """JSON-ready form for the frontier in build_info.json."""
        return {
            "us_per_query": round(self.us_per_query, 2),
            "us_per_call": round(self.us_per_call, 2),
            "batch": self.batch,
            "calls": self.calls,
            "load_s": round(self.load_s, 2),
        }


_API = None


def _api():
    """The C API binding, made once per process (compat/tf_c_api.py)."""
    global _API
    if _API is None:
        from model_builder.compat.tf_c_api import CApi

        _API = CApi()
    return _API


class GraphSession:
    """A version folder loaded through the C API; runs one signature on float32 input rows."""

    def __init__(self, export_dir: Path, signature: str = VECTOR_SIGNATURE) -> None:
        import tensorflow as tf
        from tensorflow.core.protobuf import meta_graph_pb2

        import model_builder.scann_import  # noqa: F401  (Scann ops registered before the graph is imported)
        from model_builder.compat.tf_c_api import Output

        api = self.api = _api()
        self.status = api.new_status()
        self.options = api.new_options()
        config = tf.compat.v1.ConfigProto(
            intra_op_parallelism_threads=INTRA_OP_THREADS, inter_op_parallelism_threads=INTER_OP_THREADS
        ).SerializeToString()
        api.set_config(self.options, config, len(config), self.status)
        api.check(self.status, "session options")
        self.graph = api.new_graph()
        started = time.perf_counter()
        self.session, meta = api.load_saved_model(export_dir, self.options, self.graph, self.status)
        self.load_s = time.perf_counter() - started
        sig = meta_graph_pb2.MetaGraphDef.FromString(meta).signature_def[signature]
        if len(sig.inputs) != 1:
            raise ValueError(f"{signature}: expected one input, found {sorted(sig.inputs)}")
        (self.input_name,) = sig.inputs
        names = self.output_names = sorted(sig.outputs)  # every output, as a Predict without output_filter fetches
        self._feeds = (Output * 1)(api.endpoint(self.graph, sig.inputs[self.input_name].name))
        self._fetches = (Output * len(names))(*[api.endpoint(self.graph, sig.outputs[n].name) for n in names])
        self._results = (ctypes.c_void_p * len(names))()

    def tensor(self, rows: np.ndarray) -> int:
        """A TF_Tensor holding float32 vector rows, or int64 ids (serving_default of an int64-id
        model); the caller frees it with free()."""
        if rows.dtype == np.int64:
            rows = np.ascontiguousarray(rows)
            return self.api.raw_tensor("int64", rows.tobytes(), list(rows.shape))
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        return self.api.raw_tensor("float32", rows.tobytes(), list(rows.shape))

    def free(self, handle: int) -> None:
        """Deletes a tensor made by tensor()."""
        self.api.delete_tensor(handle)

    def run(self, handle: int) -> None:
        """One TF_SessionRun of the signature (outputs fetched, then freed)."""
        api = self.api
        api.session_run(
            self.session, self._feeds, (ctypes.c_void_p * 1)(handle), self._fetches, self._results, self.status
        )
        api.check(self.status, "TF_SessionRun")
        for out in self._results:
            api.delete_tensor(out)

    def close(self) -> None:
        """Closes the session: frees the searcher and the restored variables."""
        api = self.api
        api.close_session(self.session, self.status)
        api.delete_session(self.session, self.status)
        api.delete_graph(self.graph)
        api.delete_options(self.options)
        api.delete_status(self.status)


def time_calls(
    session: GraphSession, queries: np.ndarray, batch: int, max_calls: int = 300, max_s: float = 2.0, rounds: int = 3
) -> tuple[float, int]:
    """Median microseconds of one call on `batch` query rows; best of `rounds` rounds.

    Rounds are bounded in calls and time. The best round's median is the least
    disturbed by other work on a shared machine, and the most repeatable.
    """
    if len(queries) < batch:  # a small query set still fills every call
        queries = np.resize(queries, (batch, *queries.shape[1:]))
    starts = range(0, len(queries) - batch + 1, batch)
    inputs = [session.tensor(queries[s : s + batch]) for s in list(starts)[:max_calls]]
    try:
        session.run(inputs[0])  # first call builds the ScaNN searcher from its variables
        best, calls = float("inf"), 0
        for _ in range(rounds):
            samples = []
            deadline = time.perf_counter() + max_s / rounds
            for n in range(max_calls // rounds):
                handle = inputs[n % len(inputs)]
                start = time.perf_counter()
                session.run(handle)
                samples.append(time.perf_counter() - start)
                if start > deadline:
                    break
            calls += len(samples)
            best = min(best, float(np.median(samples)))
        return best * 1e6, calls
    finally:
        for handle in inputs:
            session.free(handle)


def measure(folder: Path, queries: np.ndarray, batch: int, max_s: float = 2.0) -> GraphCost:
    """Loads an exported folder through the C API and times calls of `batch` query rows."""
    session = GraphSession(folder)
    try:
        per_call, calls = time_calls(session, queries, batch, max_s=max_s)
    finally:
        session.close()
    return GraphCost(per_call / batch, per_call, batch, calls, session.load_s)


def compare(
    folders: list[Path], queries: np.ndarray, batch: int, rounds: int = 5, max_s: float = 4.0
) -> list[GraphCost]:
    """Times several exports side by side: all loaded at once, taking turns round by round.

    Measured one after the other, a configuration timed while the machine was
    busier looks slower than it is; taking turns lets drifting load hit every
    configuration alike, so the final choice compares like with like.
    """
    sessions: list[GraphSession] = []
    try:
        for folder in folders:
            sessions.append(GraphSession(folder))
        medians: list[list[float]] = [[] for _ in sessions]
        counts = [0] * len(sessions)
        for _ in range(rounds):
            for n, session in enumerate(sessions):
                per_call, calls = time_calls(
                    session, queries, batch, max_calls=60, max_s=max_s / rounds / len(sessions), rounds=1
                )
                medians[n].append(per_call)
                counts[n] += calls
        return [GraphCost(min(m) / batch, min(m), batch, c, s.load_s) for m, c, s in zip(medians, counts, sessions)]
    finally:
        for session in sessions:
            session.close()
