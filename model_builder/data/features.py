"""The feature-file format: one row per user (or item), typed columns.

A features file is CSV (`.csv`, `.tsv`, `.csv.gz`) or Parquet with the id
column (`user_id` in a user file, `item_id` in an item file) and any number of
feature columns named `name:type` or `name:type:option=value`:

  categorical  one token per row (`gender:categorical`); option `prefix=N`
               keeps only the first N characters (`zip_code:categorical:prefix=2`)
  numeric      a number (`age:numeric`); option `buckets=N` (default 10)
               quantile buckets learnt next to the standardized value
  multi        several tokens joined by "|" (`genres:multi` with "Action|Comedy");
               in Parquet also a list<string> column

An empty cell is a missing value (it has its own embedding). Parquet columns
without a `:type` suffix take their type from the Arrow type (string ->
categorical, number -> numeric, list -> multi); CSV columns must say it.
Bad files stop the build with one line naming file, row and column.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from model_builder.data.interactions import parse_ids, read_table
from model_builder.errors import DataError

KINDS = ("categorical", "numeric", "multi")
MULTI_SEPARATOR = "|"
DEFAULT_BUCKETS = 10
# Feature names become input names of the serving signature: keep them plain identifiers.
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_OPTIONS = {"categorical": {"prefix"}, "numeric": {"buckets"}, "multi": set()}
ID_COLUMNS = {"user": "user_id", "item": "item_id"}


@dataclass(frozen=True)
class FeatureColumn:
    """One typed feature of every row.

    `values`: categorical -> object array of str ("" = missing); numeric ->
    float64 (NaN = missing); multi -> object array of tuples of str (() = missing).
    """

    name: str
    kind: str
    values: np.ndarray
    prefix: int | None = None
    buckets: int | None = None

    def options(self) -> dict:
        """The column's options as written in a header (`prefix`, `buckets`)."""
        return {k: v for k, v in (("prefix", self.prefix), ("buckets", self.buckets)) if v is not None}

    def take(self, rows: np.ndarray) -> FeatureColumn:
        """The column for `rows` (row -1 = an id without features: missing value)."""
        missing = {"categorical": "", "numeric": np.nan, "multi": ()}[self.kind]
        out = np.empty(len(rows), dtype=self.values.dtype)
        for i, row in enumerate(rows.tolist()):  # element-wise: tuples must not broadcast
            out[i] = self.values[row] if row >= 0 else missing
        return replace(self, values=out)


@dataclass(frozen=True)
class FeatureTable:
    """Features of users or items: `ids` (int64 or str) row-aligned with every column."""

    ids: np.ndarray
    columns: tuple[FeatureColumn, ...]
    source: str

    def __len__(self) -> int:
        return len(self.ids)

    def names(self) -> list[str]:
        """Feature names in file order."""
        return [c.name for c in self.columns]

    def align(self, ids: np.ndarray) -> FeatureTable:
        """The table re-ordered to `ids`; ids without a row get missing values."""
        position = {v: i for i, v in enumerate(self.ids.tolist())}
        rows = np.asarray([position.get(v, -1) for v in ids.tolist()], dtype=np.int64)
        return FeatureTable(ids, tuple(c.take(rows) for c in self.columns), self.source)


def parse_header(header: str, path: Path) -> tuple[str, str | None, dict[str, int]]:
    """Splits `name:type:option=value` into its parts; validates name, type and options."""
    name, *rest = header.strip().split(":")
    if not _NAME.match(name):
        raise DataError(
            f"{path}: column '{header}': feature names must be letters, digits and _ (starting with a letter)"
        )
    if not rest:
        return name, None, {}
    kind, options = rest[0].strip().lower(), {}
    if kind not in KINDS:
        raise DataError(f"{path}: column '{header}': unknown type '{rest[0]}' (use {', '.join(KINDS)})")
    for option in rest[1:]:
        key, _, value = option.partition("=")
        if key not in _OPTIONS[kind]:
            allowed = ", ".join(sorted(_OPTIONS[kind])) or "none"
            raise DataError(f"{path}: column '{header}': unknown option '{key}' for {kind} (allowed: {allowed})")
        if not value.isdigit() or int(value) < 1:
            raise DataError(f"{path}: column '{header}': option {key} needs a positive integer, got '{value}'")
        options[key] = int(value)
    return name, kind, options


def _inferred_kind(column: pa.ChunkedArray, header: str, path: Path, is_csv: bool) -> str:
    kind = column.type
    if is_csv:
        raise DataError(
            f"{path}: column '{header}' has no type: name it {header}:categorical, {header}:numeric or {header}:multi"
        )
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return "multi"
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return "numeric"
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_dictionary(kind):
        return "categorical"
    raise DataError(
        f"{path}: column '{header}': cannot infer a feature type from {kind}; add :categorical, :numeric or :multi to its name"
    )


def _texts(column: pa.ChunkedArray) -> list[str]:
    values = column.combine_chunks()
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    text = pc.utf8_trim_whitespace(values.cast(pa.string()))
    return [v or "" for v in text.to_pylist()]


def _categorical(column: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(_texts(column), dtype=object)


def _numeric(column: pa.ChunkedArray, path: Path, header: str, first_row: int) -> np.ndarray:
    values = column.combine_chunks()
    if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
        out = values.to_numpy(zero_copy_only=False).astype(np.float64)
        out[np.asarray(values.is_null())] = np.nan
        texts = None
    else:
        texts = _texts(column)
        out = np.full(len(texts), np.nan)
        for row, text in enumerate(texts):
            if text:
                try:
                    out[row] = float(text)
                except ValueError:
                    raise DataError(
                        f"{path}: row {row + first_row}, column '{header}': '{text}' is not a number "
                        "(leave the cell empty for a missing value)"
                    ) from None
    bad = np.isinf(out)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path}: row {row + first_row}, column '{header}': infinite value (leave the cell empty for a missing value)"
        )
    return out


def split_tokens(text: str) -> tuple[str, ...]:
    """ "Action| Comedy|" -> ("Action", "Comedy"): trimmed, empties dropped (the wire format's rule too)."""
    return tuple(t for t in (p.strip() for p in text.split(MULTI_SEPARATOR)) if t)


def _multi(column: pa.ChunkedArray, path: Path, header: str, first_row: int) -> np.ndarray:
    values = column.combine_chunks()
    out = np.empty(len(values), dtype=object)
    if pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
        for row, tokens in enumerate(values.to_pylist()):
            tokens = tuple(str(t).strip() for t in (tokens or []) if t is not None and str(t).strip())
            if any(MULTI_SEPARATOR in t for t in tokens):
                raise DataError(
                    f"{path}: row {row + first_row}, column '{header}': a value contains '|', "
                    "the separator of multi-valued features on the wire"
                )
            out[row] = tokens
        return out
    for row, text in enumerate(_texts(column)):
        out[row] = split_tokens(text)
    return out


def _parse_column(column: pa.ChunkedArray, header: str, path: Path, first_row: int, is_csv: bool) -> FeatureColumn:
    name, kind, options = parse_header(header, path)
    kind = kind or _inferred_kind(column, header, path, is_csv)
    if kind == "categorical":
        return FeatureColumn(name, kind, _categorical(column), prefix=options.get("prefix"))
    if kind == "numeric":
        return FeatureColumn(
            name, kind, _numeric(column, path, header, first_row), buckets=options.get("buckets", DEFAULT_BUCKETS)
        )
    return FeatureColumn(name, kind, _multi(column, path, header, first_row))


def read_features(path: Path, side: str, id_kind: np.dtype) -> FeatureTable:
    """Reads and validates a user (`side="user"`) or item features file."""
    id_column = ID_COLUMNS[side]
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty (expected a header line with {id_column} and typed feature columns)")
    table, first_row = read_table(path)
    if id_column not in table.column_names:
        found = ", ".join(table.column_names) or "none"
        raise DataError(f"{path}: missing required column '{id_column}' (found columns: {found})")
    if table.num_rows == 0:
        raise DataError(f"{path}: no rows (the file has a header but no data)")
    ids = parse_ids(table.column(id_column), path, id_column, first_row)
    if id_kind == np.int64 and ids.dtype != np.int64:
        raise DataError(
            f"{path}: column '{id_column}' holds non-integer ids but the interactions' {side} ids are integers"
        )
    if id_kind != np.int64:
        ids = ids.astype(str).astype(object)
    _reject_duplicates(ids, path, id_column, first_row)
    is_csv = not path.name.lower().endswith((".parquet", ".pq"))
    columns, seen = [], set()
    for header in table.column_names:
        if header == id_column:
            continue
        column = _parse_column(table.column(header), header, path, first_row, is_csv)
        if column.name in seen or column.name == id_column:
            raise DataError(f"{path}: column '{header}': feature '{column.name}' appears twice")
        seen.add(column.name)
        columns.append(column)
    if not columns:
        raise DataError(f"{path}: no feature columns besides '{id_column}' (add e.g. age:numeric or genres:multi)")
    return FeatureTable(ids, tuple(columns), str(path))


def _reject_duplicates(ids: np.ndarray, path: Path, id_column: str, first_row: int) -> None:
    _, first, counts = np.unique(ids, return_index=True, return_counts=True)
    if (counts > 1).any():
        dup = ids.tolist()[int(first[counts > 1][0])]
        rows = np.flatnonzero(ids == dup)[:2] + first_row
        raise DataError(
            f"{path}: row {rows[1]}, column '{id_column}': id {dup!r} already on row {rows[0]}; one row per id"
        )
