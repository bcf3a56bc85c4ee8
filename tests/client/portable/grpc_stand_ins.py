"""Real network peers for the portable client tests (grpcio + numpy + retrieval_client only).

- RecordingServer: a grpc.server answering TF Serving's three methods for a tiny
  string-id model in the batching-safe contract (a `found` flag per row, padding
  for unknown ids, `examples` taking `index`), recording each call's invocation
  metadata, so a test can see what the client really put on the wire. It speaks
  the client's own wire-compatible messages; tests/client/test_conformance.py
  proves those equal upstream's.
- unresponsive_peer(): a TCP socket that accepts connections and never answers.
- dead_port(): a port nothing listens on.
- make_pki(): a throw-away CA, a server certificate and client certificates.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np

from retrieval_client.protos import get_model_metadata_pb2, get_model_status_pb2, predict_pb2, tensor_pb2

MODEL = "recorded"
VERSION = 7
IDS = [f"item-{i}" for i in range(10)]
DIM, K = 4, 3
_DT = tensor_pb2.DataType


def _vectors() -> np.ndarray:
    vectors = np.random.default_rng(0).normal(size=(len(IDS), DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _tensor(values: np.ndarray, dtype: int) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=dtype)
    for size in values.shape:
        proto.tensor_shape.dim.add(size=size)
    flat = values.reshape(-1).tolist()
    {
        _DT.DT_STRING: proto.string_val,
        _DT.DT_FLOAT: proto.float_val,
        _DT.DT_BOOL: proto.bool_val,
        _DT.DT_INT64: proto.int64_val,
    }[dtype].extend(flat)
    return proto


def _values(proto: tensor_pb2.TensorProto) -> np.ndarray:
    shape = [d.size for d in proto.tensor_shape.dim]
    if proto.dtype == _DT.DT_STRING:
        return np.array(list(proto.string_val), dtype=object).reshape(shape)
    dtype = {_DT.DT_FLOAT: np.float32, _DT.DT_INT64: np.int64}[proto.dtype]
    if proto.tensor_content:
        return np.frombuffer(proto.tensor_content, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)
    field = {_DT.DT_FLOAT: proto.float_val, _DT.DT_INT64: proto.int64_val}[proto.dtype]
    return np.array(list(field), dtype=dtype).reshape(shape)


def _info(dtype: int, shape: list[int]) -> get_model_metadata_pb2.TensorInfo:
    info = get_model_metadata_pb2.TensorInfo(name="t:0", dtype=dtype)
    for size in shape:
        info.tensor_shape.dim.add(size=size)
    return info


class RecordingServer:
    """start() binds 127.0.0.1 (or `port`); `target` is then host:port; thread-safe records."""

    def __init__(
        self,
        *,
        credentials: grpc.ServerCredentials | None = None,
        port: int = 0,
        metadata_delay_s: float = 0.0,
        predict_delay_s: float = 0.0,
    ) -> None:
        self.calls: list[tuple[str, dict[str, object]]] = []  # (method, invocation metadata)
        self.metadata_delay_s = metadata_delay_s
        self.predict_delay_s = predict_delay_s
        self.predict_started = threading.Event()
        self._in_flight: list[grpc.ServicerContext] = []
        self._credentials = credentials
        self._port = port
        self._lock = threading.Lock()
        self._server: grpc.Server | None = None
        self._vectors = _vectors()
        self.target = ""

    def start(self) -> RecordingServer:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
        methods = {
            "tensorflow.serving.PredictionService": {
                "Predict": (self._predict, predict_pb2.PredictRequest),
                "GetModelMetadata": (self._metadata, get_model_metadata_pb2.GetModelMetadataRequest),
            },
            "tensorflow.serving.ModelService": {
                "GetModelStatus": (self._status, get_model_status_pb2.GetModelStatusRequest),
            },
        }
        for service, table in methods.items():
            handlers = {
                name: grpc.unary_unary_rpc_method_handler(
                    fn, request_deserializer=request.FromString, response_serializer=lambda m: m.SerializeToString()
                )
                for name, (fn, request) in table.items()
            }
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
        address = f"127.0.0.1:{self._port}"
        port = (
            server.add_insecure_port(address)
            if self._credentials is None
            else server.add_secure_port(address, self._credentials)
        )
        server.start()
        self._server, self.target = server, f"127.0.0.1:{port}"
        return self

    def stop(self, grace: float | None = None) -> None:
        if self._server is not None:
            self._server.stop(grace).wait()

    def cancel_in_flight(self) -> int:
        """Cancel every Predict still running (RST_STREAM CANCEL: what a draining server's
        shutdown deadline does to calls it will not finish); returns how many."""
        with self._lock:
            contexts, self._in_flight = self._in_flight, []
        for context in contexts:
            context.cancel()
        return len(contexts)

    def count(self, method: str) -> int:
        with self._lock:
            return sum(1 for name, _ in self.calls if name == method)

    def headers(self, method: str) -> list[dict[str, object]]:
        with self._lock:
            return [meta for name, meta in self.calls if name == method]

    def _record(self, method: str, context: grpc.ServicerContext) -> None:
        meta: dict[str, object] = {}
        for key, value in context.invocation_metadata():
            meta.setdefault(key, value)
        with self._lock:
            self.calls.append((method, meta))

    @staticmethod
    def _check_model(spec, context: grpc.ServicerContext) -> None:
        if spec.name != MODEL:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({spec.name})")

    def _predict(self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext):
        self._record("Predict", context)
        self._check_model(request.model_spec, context)
        if self.predict_delay_s:
            with self._lock:
                self._in_flight.append(context)
            self.predict_started.set()
            deadline = time.monotonic() + self.predict_delay_s
            while time.monotonic() < deadline and context.is_active():
                time.sleep(0.01)
            if not context.is_active():
                return predict_pb2.PredictResponse()  # cancelled: nobody reads this
        response = predict_pb2.PredictResponse()
        response.model_spec.name, response.model_spec.version.value = MODEL, VERSION
        signature = request.model_spec.signature_name or "serving_default"
        if signature == "examples":
            index = _values(request.inputs["index"]).reshape(-1)
            found = (index >= 0) & (index < len(IDS))
            rows = np.where(found, index, 0)
            outputs = {
                "query_ids": (np.array(IDS, dtype=object)[rows], _DT.DT_STRING),
                "candidate_ids": (np.array(IDS, dtype=object)[rows], _DT.DT_STRING),
                "candidate_vectors": (self._vectors[rows], _DT.DT_FLOAT),
                "found": (found, _DT.DT_BOOL),
            }
        else:
            if signature == "serving_default":
                keys = [key.decode() for key in _values(request.inputs["ids"]).reshape(-1)]
                found = np.array([key in IDS for key in keys])
                queries = np.array(
                    [self._vectors[IDS.index(k)] if k in IDS else np.zeros(DIM) for k in keys], np.float32
                )
            else:
                queries = _values(request.inputs["vectors"])
                found = np.ones(len(queries), dtype=bool)
            scores = queries @ self._vectors.T
            order = np.argsort(-scores, axis=1, kind="stable")[:, :K]
            ids = np.array(IDS, dtype=object)[order]
            top = np.take_along_axis(scores, order, axis=1).astype(np.float32)
            ids[~found], top[~found] = "", -np.inf  # contract v2: padding rows for unknown ids
            outputs = {"ids": (ids, _DT.DT_STRING), "scores": (top, _DT.DT_FLOAT), "found": (found, _DT.DT_BOOL)}
        for name, (values, dtype) in outputs.items():
            if dtype == _DT.DT_STRING:
                values = np.array([str(v).encode() for v in values.reshape(-1)], dtype=object).reshape(values.shape)
            response.outputs[name].CopyFrom(_tensor(values, dtype))
        return response

    def _metadata(self, request, context: grpc.ServicerContext):
        self._record("GetModelMetadata", context)
        self._check_model(request.model_spec, context)
        if self.metadata_delay_s:
            time.sleep(self.metadata_delay_s)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        for name, input_name, input_info in (
            ("serving_default", "ids", _info(_DT.DT_STRING, [-1])),
            ("search_by_vector", "vectors", _info(_DT.DT_FLOAT, [-1, DIM])),
        ):
            sig = signatures.signature_def[name]
            sig.inputs[input_name].CopyFrom(input_info)
            sig.outputs["ids"].CopyFrom(_info(_DT.DT_STRING, [-1, K]))
            sig.outputs["scores"].CopyFrom(_info(_DT.DT_FLOAT, [-1, K]))
            sig.outputs["found"].CopyFrom(_info(_DT.DT_BOOL, [-1]))
        sig = signatures.signature_def["examples"]
        sig.inputs["index"].CopyFrom(_info(_DT.DT_INT64, [-1]))
        for name, dtype, shape in (
            ("query_ids", _DT.DT_STRING, [-1]),
            ("candidate_ids", _DT.DT_STRING, [-1]),
            ("candidate_vectors", _DT.DT_FLOAT, [-1, DIM]),
            ("found", _DT.DT_BOOL, [-1]),
        ):
            sig.outputs[name].CopyFrom(_info(dtype, shape))
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name, response.model_spec.version.value = MODEL, VERSION
        # TF Serving packs its own message type: the client checks the type name, not ours.
        packed = response.metadata["signature_def"]
        packed.type_url = "type.googleapis.com/tensorflow.serving.SignatureDefMap"
        packed.value = signatures.SerializeToString()
        return response

    def _status(self, request, context: grpc.ServicerContext):
        self._record("GetModelStatus", context)
        self._check_model(request.model_spec, context)
        response = get_model_status_pb2.GetModelStatusResponse()
        status = response.model_version_status.add(version=VERSION)
        status.state = get_model_status_pb2.ModelVersionStatus.State.Value("AVAILABLE")
        return response


@contextlib.contextmanager
def recording_server(**kwargs) -> Iterator[RecordingServer]:
    server = RecordingServer(**kwargs).start()
    try:
        yield server
    finally:
        server.stop(None)


def dead_port() -> int:
    """A port that was free a moment ago (nothing listens on it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def unresponsive_peer() -> Iterator[str]:
    """host:port of a socket that accepts TCP connections and never sends a byte."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            accepted.append(conn)  # kept open, never read from or written to

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        listener.close()


def make_pki(folder: Path) -> dict[str, Path]:
    """ca.pem, server.{pem,key} for DNS:retrieval.test, client.{pem,key} from the same CA,
    stranger.{pem,key} from another CA (openssl CLI)."""
    # tests/support/tls.py: standard library only; the matrix runs copy it next to this folder.
    from support.tls import make_ca, make_signed

    make_ca(folder, "ca")
    make_ca(folder, "other-ca")
    make_signed(folder, "server", "ca", "subjectAltName=DNS:retrieval.test")
    make_signed(folder, "client", "ca", "extendedKeyUsage=clientAuth")
    make_signed(folder, "stranger", "other-ca", "extendedKeyUsage=clientAuth")
    return {p.name: p for p in folder.iterdir()}


@contextlib.contextmanager
def counting_proxy(upstream: str) -> Iterator[tuple[str, dict[str, int]]]:
    """A TCP proxy to `upstream`: yields (its host:port, {"sent": bytes client -> server})."""
    host, port = upstream.rsplit(":", 1)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.1)
    counts = {"sent": 0}
    stop = threading.Event()
    sockets: list[socket.socket] = []

    def pump(src: socket.socket, dst: socket.socket, count: bool) -> None:
        while not stop.is_set():
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data:
                return
            if count:
                counts["sent"] += len(data)
            try:
                dst.sendall(data)
            except OSError:
                return

    def accept() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            server = socket.create_connection((host, int(port)))
            sockets.extend((client, server))
            threading.Thread(target=pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=pump, args=(server, client, False), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}", counts
    finally:
        stop.set()
        thread.join()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        listener.close()
