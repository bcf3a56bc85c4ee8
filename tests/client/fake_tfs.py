"""A tiny but real TF Serving stand-in for the client tests.

A grpc server on 127.0.0.1 registered under TF Serving's service names,
decoding and encoding with the UPSTREAM messages (tensorflow_serving.apis,
TensorFlow's make_tensor_proto / make_ndarray), so every test is also a
wire-compatibility test. It serves the retrieval contract (serving_default,
search_by_vector, examples) over an exact dot-product index, and can be
scripted to fail or stall the next N calls of a method.

contract=1 answers like models exported before the batching-safe contract
(unknown ids: INVALID_ARGUMENT from the graph; `examples` takes no input);
contract=2 as client/README.md "Raw gRPC" describes it:
a `found` output per row, padding ids ("" / -1) and -inf scores for unknown ids
(or the most popular candidates with unknown_ids="fallback"), and `examples`
taking `index` [B] with a `found` flag per row.
"""

from __future__ import annotations

import collections
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, predict_pb2

from retrieval_client import RetryPolicy

# Clients under test retry within milliseconds so the retry tests stay fast.
FAST_RETRY = RetryPolicy(max_attempts=4, initial_backoff_s=0.01, max_backoff_s=0.05)
ID_DT = {"string": types_pb2.DT_STRING, "int64": types_pb2.DT_INT64}


@dataclass
class FakeModel:
    """A catalogue of L2-normalized vectors; queries are the candidates."""

    name: str = "scann_model"
    version: int = 3
    id_dtype: str = "string"
    num_candidates: int = 40
    dim: int = 8
    k: int = 5
    seed: int = 0
    labels: tuple[str, ...] = ("stable",)
    contract: int = 1
    unknown_ids: str = "error"  # contract 2: "error" (padding rows) or "fallback"
    # Contract 2: the last `short_tail` entries of every found row are padding with -inf scores,
    # as the graph answers when the index yielded fewer than K candidates for a query.
    short_tail: int = 0
    ids: np.ndarray = field(init=False)
    vectors: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        vectors = rng.normal(size=(self.num_candidates, self.dim)).astype(np.float32)
        self.vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        if self.id_dtype == "string":
            self.ids = np.array([f"item-{i}".encode() for i in range(self.num_candidates)], dtype=object)
        else:
            self.ids = np.arange(1000, 1000 + self.num_candidates, dtype=np.int64)
        self.row = {key: i for i, key in enumerate(self.ids.tolist())}

    def nearest(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores = queries @ self.vectors.T
        order = np.argsort(-scores, axis=1, kind="stable")[:, : self.k]
        ids, scores = self.ids[order], np.take_along_axis(scores, order, axis=1).astype(np.float32)
        if self.short_tail:
            ids[:, self.k - self.short_tail :] = self.padding
            scores[:, self.k - self.short_tail :] = -np.inf
        return ids, scores

    @property
    def padding(self):
        return b"" if self.id_dtype == "string" else -1

    def search_rows(self, keys: list) -> dict[str, np.ndarray]:
        """Contract 2: every row answered; unknown keys get padding or the fallback list."""
        found = np.array([key in self.row for key in keys], dtype=bool)
        queries = np.zeros((len(keys), self.dim), np.float32)
        for i, key in enumerate(keys):
            if found[i]:
                queries[i] = self.vectors[self.row[key]]
        ids, scores = self.nearest(queries)
        ids = ids.copy()
        fallback = self.ids[: self.k]  # "most popular": the first K candidates
        for i in np.flatnonzero(~found):
            ids[i] = fallback if self.unknown_ids == "fallback" else np.full(self.k, self.padding, dtype=ids.dtype)
            scores[i] = -np.inf
        return {"ids": ids, "scores": scores, "found": found}


def _info(dtype: int, shape: list[int]) -> meta_graph_pb2.TensorInfo:
    info = meta_graph_pb2.TensorInfo(name="x:0", dtype=dtype)
    for size in shape:
        info.tensor_shape.dim.add(size=size)
    return info


class FakeTfServing:
    """Start with start(); `target` is then host:port. Thread-safe counters."""

    def __init__(
        self,
        model: FakeModel | None = None,
        *,
        typed_values: bool = False,
        server_credentials: grpc.ServerCredentials | None = None,
    ) -> None:
        self.model = model or FakeModel()
        self.typed_values = typed_values  # answer with *_val fields, not tensor_content
        self.calls: dict[str, int] = collections.Counter()
        self.failures: dict[str, list[tuple[grpc.StatusCode, str]]] = collections.defaultdict(list)
        self.delays_s: dict[str, list[float]] = collections.defaultdict(list)
        # Successive GetModelStatus answers: lists of (version, state, error_code, message);
        # the last entry repeats. Empty: one AVAILABLE version.
        self.status_script: list[list[tuple[int, str, int, str]]] = []
        self.requests: list[tuple[str, object]] = []
        self._credentials = server_credentials
        self._lock = threading.Lock()
        self._server: grpc.Server | None = None
        self.target = ""

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> FakeTfServing:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        handlers = {
            "Predict": (self._predict, predict_pb2.PredictRequest, predict_pb2.PredictResponse),
            "GetModelMetadata": (
                self._metadata,
                get_model_metadata_pb2.GetModelMetadataRequest,
                get_model_metadata_pb2.GetModelMetadataResponse,
            ),
        }
        status = {
            "GetModelStatus": (
                self._status,
                get_model_status_pb2.GetModelStatusRequest,
                get_model_status_pb2.GetModelStatusResponse,
            )
        }
        for service, table in (
            ("tensorflow.serving.PredictionService", handlers),
            ("tensorflow.serving.ModelService", status),
        ):
            server.add_generic_rpc_handlers(
                (
                    grpc.method_handlers_generic_handler(
                        service,
                        {
                            name: grpc.unary_unary_rpc_method_handler(
                                fn, request_deserializer=req.FromString, response_serializer=resp.SerializeToString
                            )
                            for name, (fn, req, resp) in table.items()
                        },
                    ),
                )
            )
        if self._credentials is None:
            port = server.add_insecure_port("127.0.0.1:0")
        else:
            port = server.add_secure_port("127.0.0.1:0", self._credentials)
        server.start()
        self._server = server
        self.target = f"127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None)

    # -- scripting helpers ------------------------------------------------------
    def fail_next(self, method: str, times: int, code: grpc.StatusCode, details: str = "scripted failure") -> None:
        self.failures[method].extend([(code, details)] * times)

    def stall_next(self, method: str, times: int, seconds: float) -> None:
        self.delays_s[method].extend([seconds] * times)

    def _enter(self, method: str, request: object, context: grpc.ServicerContext) -> None:
        with self._lock:
            self.calls[method] += 1
            self.requests.append((method, request))
            failure = self.failures[method].pop(0) if self.failures[method] else None
            delay = self.delays_s[method].pop(0) if self.delays_s[method] else 0.0
        if delay:
            time.sleep(delay)
        if failure is not None:
            context.abort(*failure)

    def _check_spec(self, spec, context: grpc.ServicerContext) -> FakeModel:
        model = self.model
        if spec.name != model.name:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({spec.name})")
        if spec.HasField("version") and spec.version.value != model.version:
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"Servable not found for request: Specific({spec.name}, {spec.version.value})",
            )
        if spec.version_label and spec.version_label not in model.labels:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Unrecognized servable version label: {spec.version_label}")
        return model

    # -- tensors --------------------------------------------------------------
    def _tensor(self, array: np.ndarray) -> tensor_pb2.TensorProto:
        if not self.typed_values:
            return tf.make_tensor_proto(array)
        proto = tensor_pb2.TensorProto()
        for size in array.shape:
            proto.tensor_shape.dim.add(size=size)
        flat = array.reshape(-1)
        if array.dtype == object:
            proto.dtype = types_pb2.DT_STRING
            proto.string_val.extend(flat.tolist())
        elif array.dtype == np.int64:
            proto.dtype = types_pb2.DT_INT64
            proto.int64_val.extend(flat.tolist())
        elif array.dtype == np.bool_:
            proto.dtype = types_pb2.DT_BOOL
            proto.bool_val.extend(flat.tolist())
        else:
            proto.dtype = types_pb2.DT_FLOAT
            proto.float_val.extend(flat.astype(np.float32).tolist())
        return proto

    # -- handlers -------------------------------------------------------------
    def _predict(self, request, context):
        self._enter("Predict", request, context)
        model = self._check_spec(request.model_spec, context)
        signature = request.model_spec.signature_name or "serving_default"
        response = predict_pb2.PredictResponse()
        response.model_spec.name = model.name
        response.model_spec.version.value = model.version
        response.model_spec.signature_name = signature
        invalid = grpc.StatusCode.INVALID_ARGUMENT
        if signature == "examples" and model.contract == 2:
            if list(request.inputs) != ["index"]:
                context.abort(
                    invalid, f"signature examples takes exactly one input 'index', got {list(request.inputs)}"
                )
            index = tf.make_ndarray(request.inputs["index"]).reshape(-1)
            n = min(8, model.num_candidates)
            found = (index >= 0) & (index < n)
            rows = np.where(found, index, 0)
            outputs = {
                "query_ids": model.ids[rows],
                "candidate_ids": model.ids[rows],
                "candidate_vectors": model.vectors[rows],
                "found": found,
            }
        elif signature == "examples":
            n = min(8, model.num_candidates)
            outputs = {
                "query_ids": model.ids[:n],
                "candidate_ids": model.ids[:n],
                "candidate_vectors": model.vectors[:n],
            }
        elif signature in ("serving_default", "search_by_vector"):
            name = "ids" if signature == "serving_default" else "vectors"
            if list(request.inputs) != [name]:
                context.abort(
                    invalid, f"signature {signature} takes exactly one input {name!r}, got {list(request.inputs)}"
                )
            tensor = request.inputs[name]
            if name == "ids":
                if tensor.dtype != ID_DT[model.id_dtype]:
                    got = tf.dtypes.as_dtype(tensor.dtype).name
                    context.abort(invalid, f"Expects arg[0] to be {model.id_dtype} but {got} is provided")
                keys = tf.make_ndarray(tensor).reshape(-1).tolist()
                if model.contract == 2:
                    outputs = model.search_rows(keys)
                    for key, value in outputs.items():
                        response.outputs[key].CopyFrom(self._tensor(np.asarray(value)))
                    return response
                unknown = [key for key in keys if key not in model.row]
                if unknown:
                    shown = [u.decode() if isinstance(u, bytes) else u for u in unknown]
                    context.abort(invalid, f"unknown query id(s): {shown} - not in this model version's vocabulary")
                queries = model.vectors[[model.row[key] for key in keys]]
            else:
                if tensor.dtype != types_pb2.DT_FLOAT:
                    context.abort(invalid, "Expects arg[0] to be float but another dtype is provided")
                queries = tf.make_ndarray(tensor)
                if queries.ndim != 2 or queries.shape[1] != model.dim:
                    context.abort(invalid, f"'vectors' must have shape [batch, {model.dim}], got {list(queries.shape)}")
            ids, scores = model.nearest(queries)
            outputs = {"ids": ids, "scores": scores}
            if model.contract == 2:
                outputs["found"] = np.ones(len(ids), dtype=bool)
        else:
            context.abort(invalid, f'Serving signature name: "{signature}" not found in signature def')
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(self._tensor(np.asarray(value)))
        return response

    def _metadata(self, request, context):
        self._enter("GetModelMetadata", request, context)
        model = self._check_spec(request.model_spec, context)
        id_dt, k, dim = ID_DT[model.id_dtype], model.k, model.dim
        signatures = get_model_metadata_pb2.SignatureDefMap()
        method = "tensorflow/serving/predict"
        sig = signatures.signature_def["serving_default"]
        sig.method_name = method
        sig.inputs["ids"].CopyFrom(_info(id_dt, [-1]))
        sig.outputs["ids"].CopyFrom(_info(id_dt, [-1, k]))
        sig.outputs["scores"].CopyFrom(_info(types_pb2.DT_FLOAT, [-1, k]))
        sig = signatures.signature_def["search_by_vector"]
        sig.method_name = method
        sig.inputs["vectors"].CopyFrom(_info(types_pb2.DT_FLOAT, [-1, dim]))
        sig.outputs["ids"].CopyFrom(_info(id_dt, [-1, k]))
        sig.outputs["scores"].CopyFrom(_info(types_pb2.DT_FLOAT, [-1, k]))
        sig = signatures.signature_def["examples"]
        sig.method_name = method
        if model.contract == 2:
            sig.inputs["index"].CopyFrom(_info(types_pb2.DT_INT64, [-1]))
            sig.outputs["found"].CopyFrom(_info(types_pb2.DT_BOOL, [-1]))
            for name in ("serving_default", "search_by_vector"):
                signatures.signature_def[name].outputs["found"].CopyFrom(_info(types_pb2.DT_BOOL, [-1]))
        sig.outputs["query_ids"].CopyFrom(_info(id_dt, [-1]))
        sig.outputs["candidate_ids"].CopyFrom(_info(id_dt, [-1]))
        sig.outputs["candidate_vectors"].CopyFrom(_info(types_pb2.DT_FLOAT, [-1, dim]))
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = model.name
        response.model_spec.version.value = model.version
        response.metadata["signature_def"].Pack(signatures)
        return response

    def _status(self, request, context):
        self._enter("GetModelStatus", request, context)
        model = self.model
        if request.model_spec.name != model.name:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {request.model_spec.name}")
        if request.model_spec.HasField("version") and request.model_spec.version.value != model.version:
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"Could not find version {request.model_spec.version.value} of model {model.name} (Specific)",
            )
        with self._lock:
            if self.status_script:
                entries = self.status_script.pop(0) if len(self.status_script) > 1 else self.status_script[0]
            else:
                entries = [(model.version, "AVAILABLE", 0, "")]
        response = get_model_status_pb2.GetModelStatusResponse()
        for version, state, code, message in entries:
            status = response.model_version_status.add(version=version)
            status.state = get_model_status_pb2.ModelVersionStatus.State.Value(state)
            status.status.error_code = code
            status.status.error_message = message
        return response
