"""Thin gRPC servicers: TF Serving's PredictionService and ModelService, proto <-> domain only.

Registered under TF Serving's own service names, so method paths are
/tensorflow.serving.PredictionService/Predict etc. Domain errors become status
codes in `_call` (one place); anything unexpected is INTERNAL with a generic
message and the details go to the log.
"""

from __future__ import annotations

import functools
import logging
import time

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.protobuf import error_codes_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from model_builder.serve import predictor
from model_builder.serve.errors import ServingError
from model_builder.serve.metrics import Metrics
from model_builder.serve.model_set import ModelSet

log = logging.getLogger("model_builder.serve")


class Unparseable:
    """Stands for request bytes that are not the expected message.

    grpc-python (1.85) answers a request its deserializer rejects with INTERNAL
    "Exception deserializing request!", logs a traceback per request and keeps
    ~19 KiB each: 10,000 garbage requests cost 190 MiB. Parsing leniently and
    aborting in the servicer gives the same code (TF Serving's C++ gRPC also
    answers INTERNAL) with an actionable message, and frees everything.
    """

    def __init__(self, message_type, error: Exception) -> None:
        self.details = (
            f"Failed to parse the request as {message_type.DESCRIPTOR.full_name}: {error}; "
            "send a serialized message of that type"
        )


def _lenient(message_type):
    def parse(data: bytes):
        try:
            return message_type.FromString(data)
        except DecodeError as err:
            return Unparseable(message_type, err)

    return parse


def _parsed(method):
    """Aborts with INTERNAL (TF Serving's code) when the request bytes did not parse."""

    @functools.wraps(method)
    def wrapper(self, request, context):
        if isinstance(request, Unparseable):
            self._metrics.observe("unknown", method.__name__, "INTERNAL", 0.0)
            context.abort(grpc.StatusCode.INTERNAL, request.details)
        return method(self, request, context)

    return wrapper


def _model_label(manager: ModelSet, name: str) -> str:
    # Metric labels come from requests: unknown names share one series (bounded memory, no label injection).
    return name if manager.serves(name) else "unknown"


def _version_of(spec) -> tuple[int | None, str | None]:
    version = spec.version.value if spec.HasField("version") else None
    return version, (spec.version_label or None)


def _call(context, metrics: Metrics, model: str, api: str, fn):
    started = time.perf_counter()
    status = "OK"
    try:
        return fn()
    except ServingError as err:
        status = err.code.name
        context.abort(err.code, str(err))
    except Exception:
        status = "INTERNAL"
        log.exception("%s failed", api)
        context.abort(grpc.StatusCode.INTERNAL, f"internal error in {api}; see the server log")
    finally:
        metrics.observe(model, api, status, time.perf_counter() - started)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata."""

    def __init__(
        self, manager: ModelSet, metrics: Metrics, max_tensor_elements: int = predictor.DEFAULT_MAX_TENSOR_ELEMENTS
    ) -> None:
        self._manager = manager
        self._metrics = metrics
        self._max_tensor_elements = max_tensor_elements

    @_parsed
    def Predict(self, request, context):
        model = _model_label(self._manager, request.model_spec.name)
        deadline = predictor.deadline_of(context.time_remaining())
        return _call(context, self._metrics, model, "Predict", lambda: self._predict(request, deadline))

    def _predict(self, request, deadline: float | None):
        spec = request.model_spec
        version, label = _version_of(spec)
        # TF Serving finds the servable first (NOT_FOUND), then validates the request (predict_util.cc).
        with self._manager.lease(spec.name, version, label) as loaded:
            outputs = predictor.predict(
                loaded,
                spec.signature_name,
                request.inputs,
                list(request.output_filter),
                deadline,
                self._max_tensor_elements,
            )
            response = predict_pb2.PredictResponse()
            response.model_spec.name = spec.name
            response.model_spec.signature_name = spec.signature_name or predictor.DEFAULT_SIGNATURE
            response.model_spec.version.value = loaded.version
        for alias, value in outputs.items():
            response.outputs[alias].CopyFrom(tf.make_tensor_proto(np.ascontiguousarray(value)))
        return response

    @_parsed
    def GetModelMetadata(self, request, context):
        model = _model_label(self._manager, request.model_spec.name)
        return _call(context, self._metrics, model, "GetModelMetadata", lambda: self._metadata(request))

    def _metadata(self, request):
        fields = list(request.metadata_field)
        if fields != ["signature_def"]:
            raise predictor.InvalidInputError(
                'Metadata field signature_def is the only one supported (send metadata_field: ["signature_def"])'
            )
        spec = request.model_spec
        version, label = _version_of(spec)
        with self._manager.lease(spec.name, version, label) as loaded:
            sig_map = get_model_metadata_pb2.SignatureDefMap()
            for key, value in loaded.signature_defs.items():
                sig_map.signature_def[key].CopyFrom(value)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = spec.name
            response.model_spec.version.value = loaded.version
        response.metadata["signature_def"].Pack(sig_map)
        return response


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus (HandleReloadConfigRequest is not offered by the local server)."""

    def __init__(self, manager: ModelSet, metrics: Metrics) -> None:
        self._manager = manager
        self._metrics = metrics

    @_parsed
    def GetModelStatus(self, request, context):
        model = _model_label(self._manager, request.model_spec.name)
        return _call(
            context, self._metrics, model, "GetModelStatus", lambda: status_response(self._manager, request.model_spec)
        )

    @_parsed
    def HandleReloadConfigRequest(self, request, context):
        context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "the local server has no model config to reload; publish a new version folder instead",
        )


def add_to_server(server: grpc.Server, prediction: PredictionServicer, model: ModelServicer) -> None:
    """Registers both services under TF Serving's names, parsing requests leniently (see Unparseable).

    TF Serving's other PredictionService methods (Classify, Regress,
    MultiInference) are not offered: UNIMPLEMENTED, as before.
    """
    methods = {
        "tensorflow.serving.PredictionService": {
            "Predict": (prediction.Predict, predict_pb2.PredictRequest),
            "GetModelMetadata": (prediction.GetModelMetadata, get_model_metadata_pb2.GetModelMetadataRequest),
        },
        "tensorflow.serving.ModelService": {
            "GetModelStatus": (model.GetModelStatus, get_model_status_pb2.GetModelStatusRequest),
            "HandleReloadConfigRequest": (model.HandleReloadConfigRequest, model_management_pb2.ReloadConfigRequest),
        },
    }
    for service, table in methods.items():
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    service,
                    {
                        name: grpc.unary_unary_rpc_method_handler(
                            fn,
                            request_deserializer=_lenient(request_type),
                            response_serializer=lambda message: message.SerializeToString(),
                        )
                        for name, (fn, request_type) in table.items()
                    },
                ),
            )
        )


def status_response(manager: ModelSet, spec) -> get_model_status_pb2.GetModelStatusResponse:
    """GetModelStatusResponse for a ModelSpec (shared by gRPC and REST)."""
    version, label = _version_of(spec)
    response = get_model_status_pb2.GetModelStatusResponse()
    for status in manager.statuses(spec.name, version, label):
        entry = response.model_version_status.add(version=status.version, state=int(status.state))
        entry.status.error_code = _error_code(status.error_code)
        entry.status.error_message = status.error_message
    return response


def _error_code(name: str) -> int:
    return error_codes_pb2.Code.Value(name)
