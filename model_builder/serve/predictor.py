"""Run one Predict on a leased version exactly as TF Serving 2.11's RunPredict does, and replay warmup.

tensorflow_serving/servables/tensorflow/predict_util.cc (RunPredict, PreProcessPrediction):
the signature is looked up (unknown: FAILED_PRECONDITION), the number of inputs and their
aliases are checked, each TensorProto is parsed, the output filter is checked -- and that is
all. Dtypes and shapes are NOT checked against the signature before Session::Run: a wrong
dtype fails in the session ("Expects arg[0] to be int64 but string is provided",
DirectSession's call frame), a wrong shape in the graph (EnsureShape), and with batching on a
request is first merged with others (model_builder/serve/batching.py), so a request whose
shape or dtype differs from its batch-mates fails the whole batch -- as in production.
Warmup (saved_model_warmup.cc, saved_model_warmup_util.cc) replays each PredictionLog through
the same path (and so through the batching session), at most 1000 records.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from model_builder.serve.config import DEFAULT_MAX_MESSAGE_BYTES
from model_builder.serve.errors import InternalError, InvalidInputError, ServingError, SignatureNotFoundError
from model_builder.serve.models import LoadedVersion

DEFAULT_SIGNATURE = "serving_default"
# A TensorProto may declare a shape larger than the values it carries (TF pads
# with the last value), so a 100-byte request could ask for terabytes. Cap the
# declared size at the largest float32 tensor the message limit lets a client
# send in full (TF Serving's C++ parser fails such allocations the same way).
DEFAULT_MAX_TENSOR_ELEMENTS = DEFAULT_MAX_MESSAGE_BYTES // 4
# saved_model_warmup_util.cc WarmupConsts::kMaxNumRecords.
MAX_WARMUP_RECORDS = 1000


def parse_tensor(alias: str, proto, max_elements: int = DEFAULT_MAX_TENSOR_ELEMENTS) -> np.ndarray:
    """Tensor::FromProto; a failure is INVALID_ARGUMENT "tensor parsing error: ALIAS" (TF Serving's words, + why)."""
    dims = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in dims):
        raise InvalidInputError(f"tensor parsing error: {alias}: negative dimension in shape {dims}")
    if math.prod(dims) > max_elements:
        raise InvalidInputError(
            f"tensor parsing error: {alias}: shape {dims} declares {math.prod(dims)} elements, "
            f"more than the {max_elements} this server accepts in one tensor"
        )
    try:
        dtype = tf.dtypes.as_dtype(proto.dtype)
        if dtype.base_dtype != dtype or dtype in (tf.resource, tf.variant):
            raise TypeError(f"dtype {dtype.name} cannot be sent in a request")
        return tf.make_ndarray(proto)
    except (ValueError, TypeError, KeyError, MemoryError) as err:
        raise InvalidInputError(f"tensor parsing error: {alias}: {err}") from None


def _set(names) -> str:
    return "{" + ",".join(sorted(names)) + "}"


def _feeds(signature_def, protos, max_elements: int) -> list[tuple[str, np.ndarray]]:
    """PreProcessPrediction's input half: VerifyRequestInputsSize, alias lookup, parsing."""
    expected, sent = set(signature_def.inputs), set(protos)
    if len(protos) != len(signature_def.inputs):
        raise InvalidInputError(
            f"input size does not match signature: {len(sent)}!={len(expected)} len({_set(sent)}) != "
            f"len({_set(expected)}). Sent extra: {_set(sent - expected)}. Missing but required: {_set(expected - sent)}."
        )
    feeds = []
    for alias, proto in protos.items():
        if alias not in signature_def.inputs:
            raise InvalidInputError(
                f"input tensor alias not found in signature: {alias}. Inputs expected to be in the "
                f"set {_set(expected)}."
            )
        feeds.append((signature_def.inputs[alias].name, parse_tensor(alias, proto, max_elements)))
    return feeds


def _fetches(signature_def, output_filter: list[str]) -> list[str]:
    """PreProcessPrediction's output half: the filter's aliases (checked), else every output."""
    seen: list[str] = []
    for alias in output_filter:
        if alias not in signature_def.outputs:
            raise InvalidInputError(
                f"output tensor alias not found in signature: {alias} Outputs expected to be in the "
                f"set {_set(signature_def.outputs)}."
            )
        if alias in seen:
            raise InvalidInputError(f"duplicate output tensor alias: {alias}")
        seen.append(alias)
    return seen or list(signature_def.outputs)


def predict(
    version: LoadedVersion,
    signature_name: str,
    inputs,
    output_filter: list[str] | None = None,
    deadline: float | None = None,
    max_elements: int = DEFAULT_MAX_TENSOR_ELEMENTS,
) -> dict[str, np.ndarray]:
    """RunPredict: `inputs` maps aliases to TensorProtos; returns alias -> numpy array.

    `deadline` (time.monotonic) is the request's gRPC deadline: with batching, a batch whose
    tasks all waited past theirs fails with RESOURCE_EXHAUSTED, like TF Serving's.
    """
    name = signature_name or DEFAULT_SIGNATURE
    signature_def = version.signature_defs.get(name)
    if signature_def is None:
        raise SignatureNotFoundError(f'Serving signature key "{name}" not found.')
    feeds = _feeds(signature_def, inputs, max_elements)
    aliases = _fetches(signature_def, list(output_filter or []))
    values = version.session_run(feeds, [signature_def.outputs[a].name for a in aliases], deadline)
    if len(values) != len(aliases):
        raise ServingError("Predict internal error")
    return dict(zip(aliases, values))


def replay_warmup(version: LoadedVersion, path: Path, iterations: int = 1) -> int:
    """RunSavedModelWarmup: every record of assets.extra/tf_serving_warmup_requests, in order; any failure fails the load."""
    from model_builder.export import warmup as warmup_file

    warmup_path = path / warmup_file.WARMUP_FILE
    count = 0
    for record in warmup_file.read(path):
        kind = record.WhichOneof("log_type")
        if kind == "session_run_log":
            raise InternalError(f"Unsupported log_type for warmup: {record.DESCRIPTOR.fields_by_name[kind].number}")
        if kind != "predict_log":
            raise InternalError(
                f"the local server replays predict_log warmup records only, found {kind} in {warmup_path}"
            )
        request = record.predict_log.request
        for _ in range(max(1, iterations)):
            predict(version, request.model_spec.signature_name, request.inputs, list(request.output_filter))
        count += 1
        if count > MAX_WARMUP_RECORDS:
            raise InvalidInputError(
                f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {warmup_path}"
            )
    return count


def deadline_of(time_remaining: float | None) -> float | None:
    """A gRPC context's time_remaining() as a time.monotonic() deadline."""
    return None if time_remaining is None else time.monotonic() + time_remaining
