"""Run one Predict on a leased version: validate like TF Serving, then call the signature."""

from __future__ import annotations

import numpy as np

from model_builder.serve.errors import InvalidInputError, SignatureNotFoundError, from_tensorflow
from model_builder.serve.models import LoadedVersion

DEFAULT_SIGNATURE = "serving_default"


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
        outputs = version.signatures[name](**{k: tf.constant(v) for k, v in inputs.items()})
    except (tf.errors.OpError,) as err:
        raise from_tensorflow(err) from None
    return {alias: outputs[alias].numpy() for alias in wanted}
