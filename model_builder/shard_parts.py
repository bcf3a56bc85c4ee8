"""`shard-job --input s3://bucket/prefix/`: one shard's rows streamed out of a catalogue in parts.

A Spark or Beam export writes a catalogue as many part files; at 100M x 128 the whole catalogue is
47.7 GiB of vectors, which every pod of the Indexed Job held to keep 1/K of it. With
--query-side partitioned and --query item a shard needs only its own items (they are both its
candidates and its queries: sharding._partitioned), so the pod downloads one part at a time into
scratch, loads it, keeps the rows whose crc32 shard is its own and deletes the part: it holds 1/K
of the catalogue plus one part.

Ids: a duplicated id hashes to one shard, so the pod that owns it sees both copies: checking the
kept rows for duplicates finds every duplicate of the whole catalogue in some pod.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model_builder.contract import Catalogue
from model_builder.errors import ConfigError, DataError
from model_builder.sharding import shard_of
from model_builder.towers.imported_embeddings import load_candidates
from model_builder.towers.prepare import Log, Prepared


@dataclass(frozen=True)
class Kept:
    """One part's rows homed in this shard."""

    ids: np.ndarray
    vectors: np.ndarray
    part: int  # index into the part list, to name both parts of a duplicated id


@dataclass(frozen=True)
class HomeRows:
    """This shard's rows of every part, and what the streaming counted."""

    prepared: Prepared
    total_rows: int
    parts: int


def list_parts(s3, bucket: str, prefix: str) -> list[str]:
    """The .npz objects directly under bucket/prefix (pyarrow paths), sorted by name; ConfigError when none.

    Not recursive, and other objects (Spark's _SUCCESS, .crc files) are skipped."""
    from pyarrow import fs

    where = f"{bucket}/{prefix}".rstrip("/")
    infos = s3.get_file_info(fs.FileSelector(where, recursive=False, allow_not_found=True))
    parts = sorted(i.path for i in infos if i.type == fs.FileType.File and i.path.lower().endswith(".npz"))
    if not parts:
        raise ConfigError(
            f"--input s3://{where}/ holds no .npz parts: upload the parts (ids + vectors) there, "
            "or pass one object's key without the trailing /"
        )
    return parts


def _keep(path: Path, source: str, part: int, shards: int, index: int, dim: int | None) -> tuple[Kept, int]:
    """This shard's rows of one downloaded part, and the part's row count."""
    ids, vectors = load_candidates(path)
    if dim is not None and vectors.shape[1] != dim:
        raise DataError(
            f"{source}: {vectors.shape[1]}-dim vectors but the earlier parts hold {dim}: "
            "every part must come from one export (one embedding space)"
        )
    mine = shard_of(ids, shards) == index
    # Copies: the part's own arrays are freed once its rows are taken.
    return Kept(ids[mine].copy(), vectors[mine].copy(), part), len(ids)


def _check_unique(kept: list[Kept], parts: list[str]) -> None:
    ids = np.concatenate([k.ids for k in kept])
    values, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        dup = values[counts > 1][0]
        where = sorted({f"s3://{parts[k.part]}" for k in kept if (k.ids == dup).any()})
        raise DataError(
            f"id {dup!r} appears {counts[counts > 1][0]} times (in {', '.join(where)}): "
            "ids must be unique across the parts; drop the duplicate rows from the export"
        )


def _concatenate(kept: list[Kept], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """One array of the kept rows, freeing each piece as it is copied: np.empty's pages are committed
    only when written, so the peak stays near one copy of the shard, not two."""
    rows = sum(len(k.ids) for k in kept)
    vectors = np.empty((rows, dim), np.float32)
    ids = np.concatenate([k.ids for k in kept])
    start = 0
    while kept:
        piece = kept.pop(0)
        vectors[start : start + len(piece.ids)] = piece.vectors
        start += len(piece.ids)
    return ids, vectors


def stream_home_rows(s3, parts: list[str], shards: int, index: int, scratch: Path, log: Log) -> HomeRows:
    """Downloads each part into scratch, keeps its rows homed in shard `index`, deletes it."""
    kept: list[Kept] = []
    dim, total, kinds = None, 0, set()
    for number, path in enumerate(parts):
        local = scratch / "part.npz"
        with s3.open_input_stream(path) as src, local.open("wb") as dst:
            shutil.copyfileobj(src, dst)
        try:
            piece, rows = _keep(local, f"s3://{path}", number, shards, index, dim)
        finally:
            local.unlink(missing_ok=True)
        dim, total = piece.vectors.shape[1], total + rows
        kinds.add(piece.ids.dtype == np.int64)
        if len(kinds) > 1:
            raise DataError(f"s3://{path}: integer and text ids are mixed across the parts; export one id type")
        kept.append(piece)
        log(f"shard-job: part {number + 1}/{len(parts)} s3://{path}: kept {len(piece.ids)} of {rows} rows")
    _check_unique(kept, parts)
    ids, vectors = _concatenate(kept, dim)
    log(f"data: kept {len(ids)} of {total} candidates x {dim} from {len(parts)} parts for shard {index} of {shards}")
    source = f"s3://{parts[0].rsplit('/', 1)[0]}/"
    data_info = {"dataset": "imported", "source": source, "parts": len(parts), "items": total, "users": total}
    prepared = Prepared(Catalogue(ids, None, ids, vectors), data_info, {}, {})
    return HomeRows(prepared, total, len(parts))


__all__ = ["HomeRows", "list_parts", "stream_home_rows"]
