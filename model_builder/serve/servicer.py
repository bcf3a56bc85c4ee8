"""Thin gRPC servicers: TF Serving's PredictionService and ModelService, proto <-> domain only.

Registered under TF Serving's own service names, so method paths are
/tensorflow.serving.PredictionService/Predict etc. Domain errors become status
codes in `_call` (one place); anything unexpected is INTERNAL with a generic
message and the details go to the log.
"""

from __future__ import annotations

import logging
import time

import grpc
import numpy as np
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from model_builder.serve import predictor
from model_builder.serve.errors import ServingError
from model_builder.serve.metrics import Metrics
from model_builder.serve.models import ModelManager

log = logging.getLogger("model_builder.serve")


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
    except Exception:  # noqa: BLE001 - never leak internals to clients
        status = "INTERNAL"
        log.exception("%s failed", api)
        context.abort(grpc.StatusCode.INTERNAL, f"internal error in {api}; see the server log")
    finally:
        metrics.observe(model, api, status, time.perf_counter() - started)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata."""

    def __init__(self, manager: ModelManager, metrics: Metrics,
                 max_tensor_elements: int = predictor.DEFAULT_MAX_TENSOR_ELEMENTS) -> None:
        self._manager = manager
        self._metrics = metrics
        self._max_tensor_elements = max_tensor_elements

    def Predict(self, request, context):  # noqa: N802 (gRPC method name)
        return _call(context, self._metrics, request.model_spec.name, "Predict", lambda: self._predict(request))

    def _predict(self, request):
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        spec = request.model_spec
        version, label = _version_of(spec)
        inputs = predictor.parse_inputs(request.inputs, self._max_tensor_elements)
        with self._manager.lease(spec.name, version, label) as loaded:
            outputs = predictor.predict(loaded, spec.signature_name, inputs, list(request.output_filter))
            response = predict_pb2.PredictResponse()
            response.model_spec.name = spec.name
            response.model_spec.signature_name = spec.signature_name or predictor.DEFAULT_SIGNATURE
            response.model_spec.version.value = loaded.version
        for alias, value in outputs.items():
            response.outputs[alias].CopyFrom(tf.make_tensor_proto(np.ascontiguousarray(value)))
        return response

    def GetModelMetadata(self, request, context):  # noqa: N802
        return _call(context, self._metrics, request.model_spec.name, "GetModelMetadata", lambda: self._metadata(request))

    def _metadata(self, request):
        from tensorflow_serving.apis import get_model_metadata_pb2 as md

        fields = list(request.metadata_field)
        if fields != ["signature_def"]:
            raise predictor.InvalidInputError("Metadata field signature_def is the only one supported (send metadata_field: [\"signature_def\"])")
        spec = request.model_spec
        version, label = _version_of(spec)
        with self._manager.lease(spec.name, version, label) as loaded:
            sig_map = md.SignatureDefMap()
            for key, value in loaded.signature_defs.items():
                sig_map.signature_def[key].CopyFrom(value)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = spec.name
            response.model_spec.version.value = loaded.version
        response.metadata["signature_def"].Pack(sig_map)
        return response


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus (HandleReloadConfigRequest is not offered by the local server)."""

    def __init__(self, manager: ModelManager, metrics: Metrics) -> None:
        self._manager = manager
        self._metrics = metrics

    def GetModelStatus(self, request, context):  # noqa: N802
        return _call(context, self._metrics, request.model_spec.name, "GetModelStatus", lambda: status_response(self._manager, request.model_spec))

    def HandleReloadConfigRequest(self, request, context):  # noqa: N802
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "the local server has no model config to reload; publish a new version folder instead")


def status_response(manager: ModelManager, spec) -> get_model_status_pb2.GetModelStatusResponse:
    """GetModelStatusResponse for a ModelSpec (shared by gRPC and REST)."""
    version, label = _version_of(spec)
    response = get_model_status_pb2.GetModelStatusResponse()
    for status in manager.statuses(spec.name, version, label):
        entry = response.model_version_status.add(version=status.version, state=int(status.state))
        entry.status.error_code = _error_code(status.error_code)
        entry.status.error_message = status.error_message
    return response


def _error_code(name: str) -> int:
    from tensorflow.core.protobuf import error_codes_pb2

    return error_codes_pb2.Code.Value(name)
