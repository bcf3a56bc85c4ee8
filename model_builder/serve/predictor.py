"""Run one Predict on a leased version: validate like TF Serving, then call the signature."""

from __future__ import annotations

import math

import numpy as np

from model_builder.serve.config import DEFAULT_MAX_MESSAGE_BYTES
from model_builder.serve.errors import InvalidInputError, SignatureNotFoundError, from_tensorflow
from model_builder.serve.models import LoadedVersion

DEFAULT_SIGNATURE = "serving_default"
# A TensorProto may declare a shape larger than the values it carries (TF pads
# with the last value), so a 100-byte request could ask for terabytes. Cap the
# declared size at the largest float32 tensor the message limit lets a client
# send in full (TF Serving's C++ parser fails such allocations the same way).
DEFAULT_MAX_TENSOR_ELEMENTS = DEFAULT_MAX_MESSAGE_BYTES // 4


def parse_inputs(protos, max_elements: int = DEFAULT_MAX_TENSOR_ELEMENTS) -> dict[str, np.ndarray]:
    """TensorProtos -> numpy arrays; anything unparseable is INVALID_ARGUMENT "tensor parsing error" (TF Serving's words)."""
    import tensorflow as tf

    arrays = {}
    for name, proto in protos.items():
        dims = [d.size for d in proto.tensor_shape.dim]
        if any(d < 0 for d in dims):
            raise InvalidInputError(f"tensor parsing error: {name}: negative dimension in shape {dims}")
        if math.prod(dims) > max_elements:
            raise InvalidInputError(f"tensor parsing error: {name}: shape {dims} declares {math.prod(dims)} elements, "
                                    f"more than the {max_elements} this server accepts in one tensor")
        try:
            dtype = tf.dtypes.as_dtype(proto.dtype)
            if dtype.base_dtype != dtype or dtype in (tf.resource, tf.variant):
                raise TypeError(f"dtype {dtype.name} cannot be sent in a request")
            arrays[name] = tf.make_ndarray(proto)
        except (ValueError, TypeError, KeyError, MemoryError) as err:
            raise InvalidInputError(f"tensor parsing error: {name}: {err}") from None
    return arrays


def _not_utf8(inputs: dict[str, np.ndarray]) -> list[bytes]:
    strings = [item for value in inputs.values() if value.dtype.kind == "O" for item in value.reshape(-1).tolist()]
    bad = []
    for item in strings:
        try:
            item.decode("utf-8")
        except (UnicodeDecodeError, AttributeError):
            bad.append(item)
    return bad


def _check_inputs(signature_name: str, signature_def, inputs: dict[str, np.ndarray]) -> None:
    expected, sent = set(signature_def.inputs), set(inputs)
    if sent != expected:
        # Same wording as TF Serving's VerifyRequestInputsSize.
        raise InvalidInputError(
            f"input size does not match signature: {len(sent)}!={len(expected)} len({{{','.join(sorted(sent))}}}) != "
            f"len({{{','.join(sorted(expected))}}}). Sent extra: {{{','.join(sorted(sent - expected))}}}. "
            f"Missing but required: {{{','.join(sorted(expected - sent))}}}."
        )
    import tensorflow as tf

    for position, name in enumerate(sorted(expected)):
        info = signature_def.inputs[name]
        want = tf.dtypes.as_dtype(info.dtype)
        got = tf.string if inputs[name].dtype.kind in "OSU" else tf.dtypes.as_dtype(inputs[name].dtype)
        if want != got:
            # TF Serving's session reports the same mismatch as "Expects arg[i] to be X but Y is provided".
            raise InvalidInputError(f"Expects arg[{position}] ('{name}' of signature {signature_name}) to be {want.name} but {got.name} is provided")
        dims = [d.size for d in info.tensor_shape.dim]
        shape = list(inputs[name].shape)
        if not info.tensor_shape.unknown_rank and (len(dims) != len(shape) or any(d not in (-1, s) for d, s in zip(dims, shape))):
            raise InvalidInputError(f"input '{name}' of signature {signature_name} must have shape {dims} (-1: any size), got {shape}")


def predict(version: LoadedVersion, signature_name: str, inputs: dict[str, np.ndarray],
            output_filter: list[str] | None = None) -> dict[str, np.ndarray]:
    """Runs `signature_name` on `inputs`; errors carry TF Serving's codes and the graph's messages."""
    import tensorflow as tf

    name = signature_name or DEFAULT_SIGNATURE
    signature_def = version.signature_defs.get(name)
    if signature_def is None:
        raise SignatureNotFoundError(f'Serving signature key "{name}" not found.')
    _check_inputs(name, signature_def, inputs)
    wanted = list(output_filter or signature_def.outputs)
    unknown = [alias for alias in wanted if alias not in signature_def.outputs]
    if unknown:
        raise InvalidInputError(f"output tensor alias not found in signature: {unknown[0]} Outputs expected to be in the set "
                                f"{{{','.join(sorted(signature_def.outputs))}}}.")
    try:
        outputs = version.run(name, inputs, wanted)
    except tf.errors.OpError as err:
        raise from_tensorflow(err) from None
    except UnicodeDecodeError:
        # The graph's error quotes the request's ids, and TF's Python wrapper
        # cannot decode an error message holding non-UTF-8 bytes. Model ids are
        # UTF-8 text, so such ids are unknown ones; name them as the graph would.
        bad = _not_utf8(inputs)
        shown = ", ".join(repr(b) for b in bad[:10]) or "(not shown)"
        raise InvalidInputError(f"unknown query id(s), not in this model version: {shown} (not valid UTF-8)") from None
    return outputs
