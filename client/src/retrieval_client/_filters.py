"""Pure functions: search() filters -> the search_filtered request's fixed-width tensors.

A model built with `--item-attributes` has the signature `search_filtered` (README.md
"Serving contract"): next to `ids` [B] it takes `allow`/`deny` string [B, W] ("namespace=token",
"" unused), `exclude` [B, E] (ids, padded with "" / -1), `lower`/`upper` float32 [B, A]
(-inf/+inf: no bound) and `max_per` int32 [B] (0: no crowding). W, E and A are fixed per model
version and read from the signature's shapes: TF Serving's batcher concatenates the rows of
concurrent requests, so every request must send exactly those widths. The vocabulary, the
numeric attributes' order and the crowding namespace come from the `filter_schema` signature.
Everything is checked here, before sending: an unknown namespace, token or attribute raises
InvalidRequestError naming it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from ._errors import IncompatibleModelError, InvalidRequestError
from ._requests import PADDING, _id_as_bytes, _id_as_int
from ._tensors import to_tensor_proto
from ._types import SignatureInfo
from .protos import tensor_pb2

FILTERED_SIGNATURE = "search_filtered"
VECTOR_FILTERED_SIGNATURE = "search_by_vector_filtered"
SCHEMA_SIGNATURE = "filter_schema"
SEPARATOR = "="


@dataclass(frozen=True)
class Filters:
    """What search() was asked to filter (the same filters apply to every id of the call)."""

    exclude: tuple[Any, ...] = ()
    allow: tuple[tuple[str, tuple[str, ...]], ...] = ()
    deny: tuple[tuple[str, tuple[str, ...]], ...] = ()
    where: tuple[tuple[str, float, float], ...] = ()
    max_per: int = 0

    @classmethod
    def of(
        cls,
        exclude: Sequence[Any] | None,
        allow: Mapping[str, Sequence[str]] | None,
        deny: Mapping[str, Sequence[str]] | None,
        where: Mapping[str, tuple[float | None, float | None]] | None,
        max_per: int | None,
    ) -> Filters | None:
        """Normalized filters, or None when nothing is filtered (serving_default then answers)."""
        if not (exclude or allow or deny or where or max_per):
            return None
        if max_per is not None and (isinstance(max_per, bool) or not isinstance(max_per, int) or max_per < 0):
            raise ValueError(f"max_per must be an int >= 0 (0 = no crowding), got {max_per!r}")
        return cls(
            exclude=tuple(exclude or ()),
            allow=_tokens(allow, "allow"),
            deny=_tokens(deny, "deny"),
            where=tuple((str(name), *_bounds(name, bounds)) for name, bounds in sorted((where or {}).items())),
            max_per=int(max_per or 0),
        )


def _tokens(value: Mapping[str, Sequence[str]] | None, what: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a dict namespace -> list of tokens, got {type(value).__name__}")
    out = []
    for ns, tokens in sorted(value.items()):
        if isinstance(tokens, str):
            tokens = [tokens]
        out.append((str(ns), tuple(str(t) for t in tokens)))
    return tuple(out)


def _bounds(name: str, bounds: Any) -> tuple[float, float]:
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
        raise TypeError(f"where[{name!r}] must be a (low, high) pair, None for an open end; got {bounds!r}")
    low = -math.inf if bounds[0] is None else float(bounds[0])
    high = math.inf if bounds[1] is None else float(bounds[1])
    if math.isnan(low) or math.isnan(high) or low > high:
        raise ValueError(f"where[{name!r}] = {bounds!r}: need low <= high (None for an open end)")
    return low, high


@dataclass(frozen=True)
class FilterSchema:
    """The filters a model version takes: widths from search_filtered, the rest from filter_schema."""

    tokens_width: int
    exclude_width: int
    exclude_dtype: str
    namespaces: dict[str, frozenset[str]]
    numeric: tuple[str, ...]
    crowding: str | None

    @classmethod
    def parse(cls, signature: SignatureInfo, entries: Sequence[str], what: str) -> FilterSchema:
        """From search_filtered's input shapes and filter_schema's entries."""
        widths = {}
        for name in ("allow", "exclude", "lower"):
            spec = signature.inputs.get(name)
            if spec is None or spec.shape is None or len(spec.shape) != 2 or spec.shape[1] < 0:
                raise IncompatibleModelError(f"{what}: {FILTERED_SIGNATURE} input {name!r} has no fixed width")
            widths[name] = spec.shape[1]
        namespaces: dict[str, set[str]] = {}
        numeric, crowding = [], None
        for entry in entries:
            kind, _, value = entry.partition(":")
            if kind == "token":
                ns, _, token = value.partition(SEPARATOR)
                namespaces.setdefault(ns, set()).add(token)
            elif kind == "numeric":
                numeric.append(value)
            elif kind == "crowding":
                crowding = value or None
        if len(numeric) != widths["lower"]:
            raise IncompatibleModelError(f"{what}: {len(numeric)} numeric attributes for {widths['lower']} columns")
        return cls(
            widths["allow"],
            widths["exclude"],
            signature.inputs["exclude"].dtype,
            {ns: frozenset(tokens) for ns, tokens in namespaces.items()},
            tuple(numeric),
            crowding,
        )


def _invalid(message: str, hint: str) -> InvalidRequestError:
    return InvalidRequestError(grpc.StatusCode.INVALID_ARGUMENT, message, hint)


def _token_row(schema: FilterSchema, pairs, what: str, model: str) -> list[str]:
    row = []
    for ns, tokens in pairs:
        if ns not in schema.namespaces:
            known = ", ".join(sorted(schema.namespaces)) or "none"
            raise _invalid(f"{what}: unknown namespace {ns!r} ({model} has {known})", "use one of the namespaces")
        for token in tokens:
            if token not in schema.namespaces[ns]:
                raise _invalid(
                    f"{what}: unknown token {token!r} in namespace {ns!r} of {model}",
                    f"use one of: {', '.join(sorted(schema.namespaces[ns])[:20])}",
                )
            row.append(f"{ns}{SEPARATOR}{token}")
    if len(row) > schema.tokens_width:
        raise _invalid(f"{what}: {len(row)} tokens, {model} takes at most {schema.tokens_width}", "send fewer tokens")
    return row + [""] * (schema.tokens_width - len(row))


def filter_tensors(schema: FilterSchema, filters: Filters, batch: int, model: str) -> dict[str, tensor_pb2.TensorProto]:
    """The filter inputs for `batch` rows, validated against the schema (raises before sending)."""
    allow = _token_row(schema, filters.allow, "allow", model)
    deny = _token_row(schema, filters.deny, "deny", model)
    if len(filters.exclude) > schema.exclude_width:
        raise _invalid(
            f"exclude: {len(filters.exclude)} ids, {model} takes at most {schema.exclude_width}",
            "exclude fewer ids per call, or drop them from the results yourself",
        )
    lower = np.full(len(schema.numeric), -np.inf, np.float32)
    upper = np.full(len(schema.numeric), np.inf, np.float32)
    for name, low, high in filters.where:
        if name not in schema.numeric:
            known = ", ".join(schema.numeric) or "none"
            raise _invalid(f"where: unknown attribute {name!r} ({model} has {known})", "use a numeric attribute")
        lower[schema.numeric.index(name)], upper[schema.numeric.index(name)] = low, high
    if filters.max_per and schema.crowding is None:
        raise _invalid(f"max_per: {model} was built without a crowding attribute", "build with --crowding-attribute")
    exclude = _exclude_row(schema, filters.exclude, model)
    return {
        "allow": to_tensor_proto([allow] * batch, "string"),
        "deny": to_tensor_proto([deny] * batch, "string"),
        "exclude": to_tensor_proto(np.asarray([exclude] * batch, dtype=exclude.dtype), schema.exclude_dtype),
        "lower": to_tensor_proto(np.tile(lower, (batch, 1)).reshape(batch, len(lower))),
        "upper": to_tensor_proto(np.tile(upper, (batch, 1)).reshape(batch, len(upper))),
        "max_per": to_tensor_proto(np.full(batch, filters.max_per, np.int32)),
    }


def _exclude_row(schema: FilterSchema, ids: Sequence[Any], model: str) -> np.ndarray:
    """The excluded ids in the model's id dtype, padded to the exclude width."""
    pad = PADDING.get(schema.exclude_dtype)
    if schema.exclude_dtype == "int64":
        numbers = [_id_as_int(v, model) for v in ids]
        bad = [v for v, n in zip(ids, numbers) if n is None]
        if bad:
            raise _invalid(f"exclude: {bad[0]!r} is not an int64 id, which {model} takes", "pass int ids")
        return np.asarray(numbers + [pad] * (schema.exclude_width - len(ids)), np.int64)
    if schema.exclude_dtype == "string":
        row = np.empty(schema.exclude_width, dtype=object)
        row[:] = [_id_as_bytes(v) for v in ids] + [b""] * (schema.exclude_width - len(ids))
        return row
    raise IncompatibleModelError(f"{model}: exclude takes {schema.exclude_dtype}; the client sends int64 or string ids")


def token_flags(pairs: Sequence[str] | None, flag: str) -> dict[str, list[str]] | None:
    """CLI: ["genre=Comedy", "genre=Drama"] -> {"genre": ["Comedy", "Drama"]}."""
    if not pairs:
        return None
    out: dict[str, list[str]] = {}
    for text in pairs:
        ns, sep, token = text.partition(SEPARATOR)
        if not sep or not ns or not token:
            raise ValueError(f"{flag} {text!r}: expected NAMESPACE=TOKEN, e.g. {flag} genre=Comedy")
        out.setdefault(ns, []).append(token)
    return out


def range_flags(texts: Sequence[str] | None) -> dict[str, tuple[float | None, float | None]] | None:
    """CLI: ["year=1990:", "rating=:4.5"] -> {"year": (1990.0, None), "rating": (None, 4.5)}."""
    if not texts:
        return None
    out: dict[str, tuple[float | None, float | None]] = {}
    for text in texts:
        name, sep, bounds = text.partition(SEPARATOR)
        low, colon, high = bounds.partition(":")
        try:
            if not sep or not name or not colon:
                raise ValueError
            out[name] = (float(low) if low.strip() else None, float(high) if high.strip() else None)
        except ValueError:
            raise ValueError(
                f"--where {text!r}: expected NAME=LOW:HIGH (either side may be empty), e.g. year=1990:"
            ) from None
    return out
