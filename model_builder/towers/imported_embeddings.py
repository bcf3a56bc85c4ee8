"""Importing an already trained query tower and candidate embeddings instead of training.

Candidates: .npz with arrays `ids` and `vectors`; .npy with a 2-D float array
(ids are the row numbers 0..N-1); or .parquet with an id column (`item_id` or
`id`) and a list<float> column (`embedding` or `vector`).
The query tower (a Keras file or a SavedModel directory) maps a batch of ids to
vectors; it is evaluated on every query id at build time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model_builder.data.interactions import parse_ids, read_table
from model_builder.errors import DataError


def _check_vectors(vectors: np.ndarray, path: Path) -> np.ndarray:
    if vectors.ndim != 2 or vectors.shape[0] == 0 or vectors.shape[1] < 2:
        raise DataError(
            f"{path}: expected a non-empty [N, dim] array of vectors (dim >= 2), got shape {list(vectors.shape)}"
        )
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        raise DataError(f"{path}: row {int(np.flatnonzero(bad)[0])} holds NaN or Inf")
    return vectors


def _unique_ids(ids: np.ndarray, path: Path) -> np.ndarray:
    values, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise DataError(
            f"{path}: id {values[counts > 1][0]!r} appears {counts[counts > 1][0]} times; ids must be unique"
        )
    return ids


def load_candidates(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Reads candidate ids and vectors; validates shape, finiteness and id uniqueness."""
    if not path.is_file():
        raise DataError(f"{path}: candidate embeddings file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            vectors = _check_vectors(np.load(path, allow_pickle=False), path)
            return np.arange(len(vectors), dtype=np.int64), vectors
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                missing = {"ids", "vectors"} - set(data.files)
                if missing:
                    raise DataError(f"{path}: missing array '{sorted(missing)[0]}' (found: {', '.join(data.files)})")
                ids, vectors = data["ids"], _check_vectors(data["vectors"], path)
            ids = ids.astype(np.int64) if np.issubdtype(ids.dtype, np.integer) else ids.astype(str).astype(object)
        elif suffix in (".parquet", ".pq"):
            ids, vectors = _parquet_candidates(path)
        else:
            raise DataError(f"{path}: unsupported embeddings file '{suffix}' (use .npy, .npz or .parquet)")
    except (ValueError, OSError) as err:
        raise DataError(f"{path}: cannot read embeddings: {err}") from None
    if len(ids) != len(vectors):
        raise DataError(f"{path}: {len(ids)} ids but {len(vectors)} vectors")
    return _unique_ids(ids, path), vectors


def _parquet_candidates(path: Path) -> tuple[np.ndarray, np.ndarray]:
    table, first_row = read_table(path)
    id_col = next((c for c in ("item_id", "id") if c in table.column_names), None)
    vec_col = next((c for c in ("embedding", "vector") if c in table.column_names), None)
    if id_col is None or vec_col is None:
        raise DataError(
            f"{path}: needs an id column (item_id or id) and a vector column (embedding or vector); found {', '.join(table.column_names)}"
        )
    ids = parse_ids(table.column(id_col), path, id_col, first_row)
    rows = table.column(vec_col).to_pylist()
    lengths = {len(r) if r is not None else 0 for r in rows}
    if len(lengths) != 1:
        bad = next(i for i, r in enumerate(rows) if r is None or len(r) != len(rows[0] or []))
        raise DataError(
            f"{path}: row {bad + first_row}, column '{vec_col}': vector length differs from row {first_row}"
        )
    return ids, _check_vectors(np.asarray(rows, dtype=np.float32), path)


def load_query_ids(path: Path) -> np.ndarray:
    """Query ids for an imported user tower: .txt (one per line), .npy, or a table with user_id/id."""
    if not path.is_file():
        raise DataError(f"{path}: query ids file not found")
    if path.suffix.lower() == ".txt":
        values = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not values:
            raise DataError(f"{path}: no ids")
        ids = np.asarray(values, dtype=object)
        return (
            ids.astype(np.int64)
            if all(v.lstrip("-").isdigit() and (v == "0" or not v.lstrip("-").startswith("0")) for v in values)
            else ids
        )
    if path.suffix.lower() == ".npy":
        ids = np.load(path, allow_pickle=False)
        return ids.astype(np.int64) if np.issubdtype(ids.dtype, np.integer) else ids.astype(str).astype(object)
    table, first_row = read_table(path)
    col = next((c for c in ("user_id", "id") if c in table.column_names), None)
    if col is None:
        raise DataError(f"{path}: needs a user_id or id column")
    return parse_ids(table.column(col), path, col, first_row)


def run_query_tower(path: Path, ids: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """Evaluates an imported query tower on every id (the export then needs no Keras)."""
    import tensorflow as tf

    tower = _load_tower(path)
    id_tensor = (
        (lambda chunk: tf.constant(chunk, tf.int64))
        if ids.dtype == np.int64
        else (lambda chunk: tf.constant([str(i) for i in chunk.tolist()]))
    )
    out = []
    for start in range(0, len(ids), batch_size):
        try:
            result = tower(id_tensor(ids[start : start + batch_size]))
        except Exception as err:
            raise DataError(
                f"{path}: the query tower failed on ids like {ids[start]!r}: {str(err).splitlines()[0]}"
            ) from None
        if isinstance(result, dict):
            result = next(iter(result.values()))
        out.append(np.asarray(result, dtype=np.float32))
    return _check_vectors(np.concatenate(out), path)


def _load_tower(path: Path):
    import tensorflow as tf

    if path.is_dir():
        loaded = tf.saved_model.load(str(path))
        if "serving_default" in getattr(loaded, "signatures", {}):
            sig = loaded.signatures["serving_default"]
            (name,) = list(sig.structured_input_signature[1].keys())[:1]
            return lambda ids: sig(**{name: ids})
        return loaded
    if path.suffix.lower() in (".keras", ".h5"):
        import keras

        return keras.models.load_model(path, compile=False)
    raise DataError(f"{path}: query tower must be a .keras/.h5 file or a SavedModel directory")
