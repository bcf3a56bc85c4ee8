"""Queries production sends (`build --tuning-queries FILE`): read, checked, split in two.

Without the flag the index search and the recall gate draw their queries from the catalogue
itself (pipeline._tuning_queries; verify.py adds 5% noise). When real queries are not catalogue
items (a text query against document embeddings, a user vector against items) a tree index needs
more leaves for the same recall, so what the build printed is not what production gets
(benchmarks/tuning_queries.py measures it on Fashion-MNIST's test images).

The file is split once, deterministically: its rows are permuted by numpy's
default_rng(SPLIT_SEED); the first `held_out_rows` are the gate's (verify scores
search_by_vector on them), the next `tuning_rows` (at most MAX_TUNING_ROWS) are the index
search's. build_info.json["tuning_queries"] records the file's name, sha256, both counts and the
rule, so `verify --tuning-queries FILE` re-derives the same held-out rows and refuses another file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model_builder.errors import ConfigError

SPLIT_SEED = 20_240
# Each part needs enough rows for its recall to mean something: the search's margin grows with
# 1/sqrt(rows) of each part (recall_sweep.CONFIDENCE_Z), so 100 + 100 is a floor, not a goal.
MIN_PART_ROWS = 100
MIN_ROWS = 2 * MIN_PART_ROWS
# As many as the index search samples from the catalogue without the flag (pipeline._TUNING_QUERIES):
# exact ground truth and every sweep scale with it.
MAX_TUNING_ROWS = 1000
# Column names tried in a Parquet file, in order; else its only list/array column.
_PARQUET_COLUMNS = ("vector", "vectors", "embedding", "query")
SPLIT_RULE = (
    "rows permuted by numpy.random.default_rng(seed).permutation(rows); the first held_out_rows are the "
    "recall gate's search_by_vector queries, the next tuning_rows the index search's"
)


@dataclass(frozen=True)
class TuningQueries:
    """The file's two parts: `tuning` for the index search, `held_out` for the recall gate."""

    path: Path
    sha256: str
    rows: int
    tuning: np.ndarray
    held_out: np.ndarray

    def check_dimension(self, dim: int, source: str) -> None:
        """Raises ConfigError unless the queries have `dim` columns (`source` names where dim came from)."""
        if self.tuning.shape[1] != dim:
            raise ConfigError(
                f"--tuning-queries {self.path}: vectors have {self.tuning.shape[1]} dims but {source} "
                f"has {dim}; embed the queries with the query tower of this catalogue"
            )

    def to_info(self) -> dict:
        """build_info.json["tuning_queries"]: what verify needs to find the same held-out rows."""
        return {
            "file": self.path.name,
            "path": str(self.path),
            "sha256": self.sha256,
            "rows": self.rows,
            "dimensions": int(self.tuning.shape[1]),
            "tuning_rows": len(self.tuning),
            "held_out_rows": len(self.held_out),
            "seed": SPLIT_SEED,
            "split": SPLIT_RULE,
        }


def sha256_of(path: Path) -> str:
    """Hex sha256 of the file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_vectors(path: Path) -> np.ndarray:
    """[N, dim] float32 vectors of a .npy, .npz (array `vectors`) or .parquet (list column) file.

    Every problem is a ConfigError naming the file and the fix (the CLI exits 2 with one line).
    """
    if not path.is_file():
        raise ConfigError(f"--tuning-queries {path}: file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            with path.open("rb") as f:
                if f.read(6) != b"\x93NUMPY":  # numpy's format magic; without it np.load guesses pickle
                    raise ConfigError(
                        f"--tuning-queries {path}: not a .npy file (no NumPy header); write it with np.save"
                    )
            vectors = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                if "vectors" not in data.files:
                    found = ", ".join(data.files) or "none"
                    raise ConfigError(
                        f"--tuning-queries {path}: no array 'vectors' (found: {found}); "
                        "save it with np.savez(path, vectors=queries)"
                    )
                vectors = data["vectors"]
        elif suffix in (".parquet", ".pq"):
            vectors = _parquet_vectors(path)
        else:
            raise ConfigError(f"--tuning-queries {path}: unsupported file type '{suffix}' (use .npy, .npz or .parquet)")
    except ConfigError:
        raise
    except Exception as err:  # numpy/pyarrow raise many types for a damaged file; all mean the same here
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"--tuning-queries {path}: cannot read it ({reason}); write a float [N, dim] array") from None
    return _checked(np.asarray(vectors), path)


def _parquet_vectors(path: Path) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    known = [n for n in _PARQUET_COLUMNS if n in table.column_names]
    lists = [f.name for f in table.schema if pa.types.is_list(f.type) or pa.types.is_fixed_size_list(f.type)]
    column = known[0] if known else (lists[0] if len(lists) == 1 else None)
    if column is None:
        raise ConfigError(
            f"--tuning-queries {path}: needs one list<float> column (named vector or embedding); "
            f"found {', '.join(table.column_names) or 'none'}"
        )
    rows = table.column(column).to_pylist()
    lengths = {len(r) if r is not None else 0 for r in rows}
    if len(lengths) > 1:
        bad = next(i for i, r in enumerate(rows) if r is None or len(r) != len(rows[0] or []))
        raise ConfigError(f"--tuning-queries {path}: row {bad}, column '{column}': vector length differs from row 0")
    return np.asarray(rows, dtype=np.float32)


def _checked(vectors: np.ndarray, path: Path) -> np.ndarray:
    if vectors.ndim != 2 or vectors.shape[1] < 2 or not np.issubdtype(vectors.dtype, np.number):
        raise ConfigError(
            f"--tuning-queries {path}: expected a float [N, dim] array, got {vectors.dtype} shape {list(vectors.shape)}"
        )
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        raise ConfigError(
            f"--tuning-queries {path}: row {int(np.flatnonzero(bad)[0])} holds NaN or Inf "
            f"({int(bad.sum())} of {len(vectors)} rows); drop or fix those rows"
        )
    if len(vectors) < MIN_ROWS:
        raise ConfigError(
            f"--tuning-queries {path}: {len(vectors)} rows; at least {MIN_ROWS} are needed "
            f"({MIN_PART_ROWS} to tune the index on, {MIN_PART_ROWS} held out for the recall gate)"
        )
    return vectors


def split_counts(rows: int, gate_queries: int) -> tuple[int, int]:
    """(held_out_rows, tuning_rows): the gate takes up to `gate_queries` but never more than half."""
    held_out = min(gate_queries, rows // 2)
    return held_out, min(MAX_TUNING_ROWS, rows - held_out)


def _split(vectors: np.ndarray, held_out_rows: int, tuning_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(len(vectors))
    return vectors[order[held_out_rows : held_out_rows + tuning_rows]], vectors[order[:held_out_rows]]


def load(path: Path, gate_queries: int) -> TuningQueries:
    """Reads, checks and splits the file (the dimension is checked later, against the catalogue)."""
    vectors = read_vectors(path)
    held_out_rows, tuning_rows = split_counts(len(vectors), gate_queries)
    tuning, held_out = _split(vectors, held_out_rows, tuning_rows, SPLIT_SEED)
    return TuningQueries(path, sha256_of(path), len(vectors), tuning, held_out)


def held_out_for_version(path: Path, info: dict | None) -> np.ndarray:
    """The held-out rows a version's build used for its gate, from the same file (sha256 checked).

    `info` is the version's build_info.json["tuning_queries"] (None: built without the flag).
    """
    if not info:
        raise ConfigError(
            f"--tuning-queries {path}: this version was built without --tuning-queries, so it has no held-out "
            "part to score; drop the flag (verify then scores noisy catalogue vectors)"
        )
    digest = sha256_of(path) if path.is_file() else None
    if digest != info["sha256"]:
        raise ConfigError(
            f"--tuning-queries {path}: not the file this version was tuned on (sha256 {str(digest)[:12]}..., "
            f"build_info: {info['file']} sha256 {info['sha256'][:12]}...); pass that file"
        )
    vectors = read_vectors(path)
    _, held_out = _split(vectors, info["held_out_rows"], info["tuning_rows"], info["seed"])
    return held_out
