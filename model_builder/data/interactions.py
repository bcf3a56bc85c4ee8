"""The interactions format: CSV or Parquet with user_id, item_id [, weight, timestamp].

Every row is validated; the first bad row is reported with file, row and column
so the user can fix the file instead of guessing. Ids are integers when every
value of the column parses as one (they are then served as int64), otherwise
strings.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from model_builder.errors import DataError

if TYPE_CHECKING:
    from model_builder.data.features import FeatureTable

REQUIRED_COLUMNS = ("user_id", "item_id")
OPTIONAL_COLUMNS = ("weight", "timestamp")


@dataclass(frozen=True)
class Interactions:
    """Positive or weighted user-item events, one row each.

    `user_ids`/`item_ids` are int64 arrays or object arrays of str;
    `weights` is float32 (1.0 when the file has no weight column);
    `timestamps` is float64 seconds, or None when the file has none (then
    row order stands in for time).
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    weights: np.ndarray
    timestamps: np.ndarray | None
    source: str

    def __len__(self) -> int:
        return len(self.user_ids)


@dataclass(frozen=True)
class Dataset:
    """Interactions plus optional item titles (for readable demo output) and side features."""

    name: str
    interactions: Interactions
    titles: dict[object, str]
    default_min_weight: float | None = None
    user_features: FeatureTable | None = None
    item_features: FeatureTable | None = None

    @property
    def has_features(self) -> bool:
        """True when users or items come with a features table."""
        return self.user_features is not None or self.item_features is not None


def read_table(path: Path) -> tuple[pa.Table, int]:
    """Reads a CSV or Parquet file into a table of its raw columns.

    Returns the table and the line number of its first data row (2 for CSV with
    a header line, 1 for Parquet) so errors can point at the right row.
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty (expected a header line with user_id,item_id)")
    suffix = path.suffix.lower()
    compressed = suffix in (".gz", ".bz2", ".zst")
    if compressed:  # data.csv.gz: pyarrow decompresses by extension
        suffix = Path(path.stem).suffix.lower()
    elif suffix in (".csv", ".tsv", ".txt"):
        _reject_binary(path)
    try:
        if suffix in (".parquet", ".pq"):
            return pq.read_table(path), 1
        if suffix in (".csv", ".tsv", ".txt"):
            delimiter = "\t" if suffix == ".tsv" else ","
            # Every column as text: inference would rewrite ids ("007" -> 7) and
            # hide which row is not numeric; validation below does the typing.
            header = _header(path, delimiter, compressed)
            table = pacsv.read_csv(
                path,
                parse_options=pacsv.ParseOptions(delimiter=delimiter),
                convert_options=pacsv.ConvertOptions(
                    column_types={name: pa.string() for name in header},
                    strings_can_be_null=False,
                ),
            )
            return table, 2
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{path}: cannot parse file: {first}") from None
    raise DataError(f"{path}: unsupported file type '{suffix}' (use .csv, .tsv or .parquet)")


def _header(path: Path, delimiter: str, compressed: bool) -> list[str]:
    if compressed:
        with pa.CompressedInputStream(pa.OSFile(str(path)), pa.Codec.detect(str(path)).name) as raw:
            first = raw.read(65536).decode("utf-8", errors="replace").splitlines()[:1]
    else:
        with path.open(newline="", encoding="utf-8", errors="replace") as f:
            first = [f.readline()]
    return next(csv.reader(first, delimiter=delimiter), [])


def _reject_binary(path: Path) -> None:
    with path.open("rb") as f:
        head = f.read(4096)
    if head.startswith(b"\x1f\x8b"):
        raise DataError(f"{path}: gzip-compressed data in a file named {path.suffix}; rename it to {path.name}.gz")
    if b"\x00" in head:
        raise DataError(f"{path}: binary data (NUL bytes) in a {path.suffix} file; expected UTF-8 text")


def _require_columns(table: pa.Table, path: Path, required: tuple[str, ...]) -> None:
    missing = [c for c in required if c not in table.column_names]
    if missing:
        found = ", ".join(table.column_names) or "none"
        raise DataError(f"{path}: missing required column '{missing[0]}' (found columns: {found})")
    if table.num_rows == 0:
        raise DataError(f"{path}: no rows (the file has a header but no data)")


def _first_bad_row(mask: pa.Array | np.ndarray) -> int:
    return int(np.flatnonzero(np.asarray(mask))[0])


def parse_ids(column: pa.ChunkedArray, path: Path, name: str, first_row: int) -> np.ndarray:
    """Converts an id column to int64 when all values are integers, else to str."""
    values = column.combine_chunks()
    if values.null_count:
        row = _first_bad_row(values.is_null())
        raise DataError(f"{path}: row {row + first_row}, column '{name}': empty id")
    if pa.types.is_integer(values.type):
        return values.to_numpy(zero_copy_only=False).astype(np.int64)
    text = pc.utf8_trim_whitespace(values.cast(pa.string()))
    empty = pc.equal(pc.utf8_length(text), 0).to_numpy(zero_copy_only=False)
    if empty.any():
        row = _first_bad_row(empty)
        raise DataError(f"{path}: row {row + first_row}, column '{name}': empty id")
    # Leading zeros ("007") mean the ids are codes, not numbers: keep strings.
    integer = pc.match_substring_regex(text, r"^(0|-?[1-9][0-9]{0,17})$").to_numpy(zero_copy_only=False)
    if integer.all():
        return text.cast(pa.int64()).to_numpy(zero_copy_only=False)
    return np.asarray(text.to_pylist(), dtype=object)


def parse_numbers(column: pa.ChunkedArray, path: Path, name: str, first_row: int) -> np.ndarray:
    """Converts a numeric column to float64, naming the first non-numeric row."""
    values = column.combine_chunks()
    if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
        out = values.to_numpy(zero_copy_only=False).astype(np.float64)
        bad = ~np.isfinite(out)
    elif pa.types.is_timestamp(values.type):
        return values.cast(pa.int64()).to_numpy(zero_copy_only=False) / _per_second(values.type)
    else:
        text = pc.utf8_trim_whitespace(values.cast(pa.string()))
        numeric = pc.match_substring_regex(text, r"^[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$").to_numpy(
            zero_copy_only=False
        )
        if not numeric.all():
            row = _first_bad_row(~numeric)
            raise DataError(f"{path}: row {row + first_row}, column '{name}': '{text[row].as_py()}' is not a number")
        out = text.cast(pa.float64()).to_numpy(zero_copy_only=False)
        bad = ~np.isfinite(out)
    if bad.any():
        row = _first_bad_row(bad)
        raise DataError(f"{path}: row {row + first_row}, column '{name}': value is NaN, empty or infinite")
    return out


def _per_second(ts_type: pa.TimestampType) -> float:
    return {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}[ts_type.unit]


def read_interactions(path: Path) -> Interactions:
    """Reads and validates an interactions file (see model_builder/README.md)."""
    table, first_row = read_table(path)
    _require_columns(table, path, REQUIRED_COLUMNS)
    users = parse_ids(table.column("user_id"), path, "user_id", first_row)
    items = parse_ids(table.column("item_id"), path, "item_id", first_row)
    if "weight" in table.column_names:
        weights = parse_numbers(table.column("weight"), path, "weight", first_row)
        if (weights < 0).any():
            row = _first_bad_row(weights < 0)
            raise DataError(f"{path}: row {row + first_row}, column 'weight': negative weight {weights[row]:g}")
    else:
        weights = np.ones(len(users))
    timestamps = None
    if "timestamp" in table.column_names:
        timestamps = parse_numbers(table.column("timestamp"), path, "timestamp", first_row)
    return Interactions(users, items, weights.astype(np.float32), timestamps, str(path))


def read_item_titles(path: Path, id_kind: np.dtype) -> dict[object, str]:
    """Reads optional item metadata (item_id, title, ...) into an id -> title map."""
    table, first_row = read_table(path)
    _require_columns(table, path, ("item_id", "title"))
    ids = parse_ids(table.column("item_id"), path, "item_id", first_row)
    if id_kind == np.int64 and ids.dtype != np.int64:
        raise DataError(f"{path}: column 'item_id' holds non-integer ids but the interactions' item ids are integers")
    if id_kind != np.int64:
        ids = ids.astype(str).astype(object)
    titles = table.column("title").cast(pa.string()).to_pylist()
    return {i: (t or "") for i, t in zip(ids.tolist(), titles)}
