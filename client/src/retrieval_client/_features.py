"""Pure functions: query features (rows or columns) -> the search_by_features request's tensors.

A feature model's `search_by_features` signature takes one [batch] tensor per
feature, its dtype in the model's metadata: string (categorical; and
multi-valued, sent as one string per row with the values joined by "|"),
float32 (numeric) or int64 (an int64 id). Everything is checked against the
metadata before sending: under TF Serving's batching a request whose tensors
do not fit the signature fails the whole merged batch, other callers included.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._errors import IncompatibleModelError
from ._requests import PADDING
from ._tensors import to_tensor_proto
from ._types import TensorSpec
from .protos import tensor_pb2

FEATURES_SIGNATURE = "search_by_features"
# Values of a multi-valued feature travel as one string per row joined by this: a padded
# [batch, M] tensor would break TF Serving's batching when requests differ in M.
MULTI_SEPARATOR = "|"
_SEQUENCES = (list, tuple, set, frozenset, np.ndarray)


def feature_columns(rows: Any) -> tuple[dict[str, list[Any]], int]:
    """(columns, batch) from a list of dicts (one per query) or a dict of columns (name -> values).

    A key missing from some rows, or a None value, is a missing value.
    """
    if isinstance(rows, Mapping):
        columns: dict[str, list[Any]] = {}
        for name, values in rows.items():
            if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
                raise TypeError(
                    f"column {name!r} must be a sequence with one value per query, got {type(values).__name__}"
                    " (for one query, pass a list with one dict)"
                )
            columns[str(name)] = list(values)
        lengths = {name: len(values) for name, values in columns.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"feature columns differ in length: {lengths}")
        return columns, next(iter(lengths.values()), 0)
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence):
        raise TypeError(f"rows must be a list of dicts or a dict of columns, got {type(rows).__name__}")
    for n, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise TypeError(f"row {n} is a {type(row).__name__}, not a dict of features")
    names = sorted({str(name) for row in rows for name in row})
    return {name: [row.get(name) for row in rows] for name in names}, len(rows)


def feature_tensors(
    columns: dict[str, list[Any]], batch: int, specs: dict[str, TensorSpec], what: str
) -> dict[str, tensor_pb2.TensorProto]:
    """One [batch] tensor per input of the signature, converted to its dtype.

    Unknown feature names raise ValueError (a typo would otherwise be sent as a missing value);
    inputs not given are sent as missing: "" for strings, NaN for float32, -1 for int64 ids
    (feature models never give negative or empty ids an id row, so -1 / "" mean "a new user").
    """
    unknown = sorted(set(columns) - set(specs))
    if unknown:
        takes = ", ".join(f"{name} ({spec.dtype})" for name, spec in sorted(specs.items()))
        raise ValueError(f"unknown feature(s) {', '.join(unknown)}: {what} takes {takes}")
    tensors = {}
    for name, spec in sorted(specs.items()):
        if spec.shape is not None and len(spec.shape) != 1:
            raise IncompatibleModelError(
                f"{what} input {name!r} has shape {spec.shape}; the client sends [batch] features"
            )
        values = columns.get(name, [None] * batch)
        tensors[name] = _tensor(values, spec.dtype, f"feature {name!r} of {what}")
    return tensors


def _tensor(values: list[Any], dtype: str, what: str) -> tensor_pb2.TensorProto:
    if dtype == "float32":
        return to_tensor_proto(np.array([_number(v, n, what) for n, v in enumerate(values)], dtype=np.float32))
    if dtype == "string":
        return to_tensor_proto([_text(v, n, what) for n, v in enumerate(values)], "string")
    if dtype == "int64":
        return to_tensor_proto(np.array([_integer(v, n, what) for n, v in enumerate(values)], dtype=np.int64))
    raise IncompatibleModelError(f"{what} has dtype {dtype}; the client sends string, float32 or int64 features")


def _number(value: Any, row: int, what: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, (bool, np.bool_)) or isinstance(value, _SEQUENCES):
        raise TypeError(f"{what}, row {row}: {value!r} is not one number (it takes float32; None = missing)")
    if isinstance(value, (bytes, str)):
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        if not text.strip():
            return math.nan
        try:
            return float(text)
        except ValueError:
            raise ValueError(
                f"{what}, row {row}: {text!r} is not a number (it takes float32; None = missing)"
            ) from None
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    raise TypeError(f"{what}, row {row}: {value!r} ({type(value).__name__}) is not a number")


def _token(value: Any, row: int, what: str) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "surrogateescape")
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        value = str(int(value))
    if not isinstance(value, str):
        raise TypeError(
            f"{what}, row {row}: {value!r} ({type(value).__name__}) is not text (it takes strings; None = missing)"
        )
    return value


def _text(value: Any, row: int, what: str) -> str:
    if value is None:
        return ""
    if isinstance(value, _SEQUENCES):  # a multi-valued feature given as its values
        tokens = [_token(v, row, what) for v in (sorted(value) if isinstance(value, (set, frozenset)) else value)]
        bad = [t for t in tokens if MULTI_SEPARATOR in t]
        if bad:
            raise ValueError(
                f"{what}, row {row}: value {bad[0]!r} contains {MULTI_SEPARATOR!r}, the separator of multi-valued features"
            )
        return MULTI_SEPARATOR.join(tokens)
    return _token(value, row, what)


def _integer(value: Any, row: int, what: str) -> int:
    if value is None:
        return int(PADDING["int64"])
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{what}, row {row}: {value!r} is a bool (it takes int64)")
    if isinstance(value, (int, np.integer)):
        number = int(value)
    elif isinstance(value, (str, bytes)):
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        try:
            number = int(text.strip())
        except ValueError:
            raise ValueError(f"{what}, row {row}: {text!r} is not an int64 id") from None
    else:
        raise TypeError(f"{what}, row {row}: {value!r} ({type(value).__name__}) is not an int64 id")
    if not -(2**63) <= number < 2**63:
        raise ValueError(f"{what}, row {row}: {number} does not fit int64")
    return number
