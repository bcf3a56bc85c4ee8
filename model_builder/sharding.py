"""`build --shards K`: the candidates split into K models `<name>-shard-<i>`, one version number.

Partitioning: shard = crc32(the id as UTF-8 text) mod K. A hash of the id rather than ranges or
a clustering because it is balanced without looking at the data (each shard gets N/K ± a few
√(N/K)), stateless (no assignment table to store, ship or keep in sync) and computable anywhere:
any process in any language with a CRC-32 (zlib, java.util.zip, Go's hash/crc32) knows which
shard a new item goes to. It gives up locality: every query must ask every shard, which a
fan-out client (client/src/retrieval_client/_sharded.py) does in parallel.

Query side: every shard carries the whole query side (the id table, and the feature tower of
feature models), so `serving_default` (by id), `search_by_vector` and `search_by_features` all
answer on every shard and the client merges by score. The cost is the query table once per
shard: users × dims × 4 bytes + the id (e.g. 10M users × 64 dims = 2.6 GB per shard). The
alternative for millions of users is a query-side model (ids -> vectors) alone plus
`search_by_vector` on candidate-only shards (README "Sharding").

Item -> similar items: every item is a query on every shard (`Catalogue.self_rows` maps a query
to its candidate row in the shard, -1 when another shard holds it), so the query item is never
its own result on any shard, and never in the merged answer.

Each shard runs the whole build (its own index search on N/K candidates, its own gate); then the
merged answer of the published versions is checked against exact search over the full catalogue
and written to `OUT/<name>.shards-<version>.json` (next to the shard folders; a file, so nothing
takes it for a model).

A partitioned item -> similar items shard needs nothing but its own items, so `build_home_shard`
builds it from a catalogue already holding only them (shard-job streaming a prefix of parts,
shard_parts.py); `build_shard` and `build --shards K` are unchanged.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from model_builder.build_config import BuildConfig
from model_builder.errors import ConfigError, VerificationError
from model_builder.export import version_store
from model_builder.towers.history import SEEN_PADDING, SeenItems
from model_builder.towers.prepare import Log, Prepared

if TYPE_CHECKING:  # TensorFlow-free at import (the CLI imports this before TF)
    from model_builder.index.config import IndexConfig
    from model_builder.towers.training import TrainConfig

SHARD_HASH = "crc32(id as UTF-8 text) mod shards"
# scripts/lib.sh k8s_name: the folded name must be a DNS-1123 label of at most 40 characters.
_K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$")


def shard_of(ids: np.ndarray, count: int) -> np.ndarray:
    """The shard of each id: crc32 of its text (int64 ids as decimal) mod `count`."""
    return np.fromiter((zlib.crc32(str(i).encode()) % count for i in ids.tolist()), np.int64, len(ids))


def shard_name(model_name: str, index: int) -> str:
    """TF Serving's model name of shard `index`."""
    return f"{model_name}-shard-{index}"


def check_names(model_name: str, count: int) -> None:
    """Every shard's name folds to a Kubernetes name (scripts/lib.sh k8s_name), or ConfigError."""
    longest = shard_name(model_name, count - 1)
    folded = longest.lower().replace("_", "-").replace(".", "-")
    if not _K8S_NAME.match(folded):
        raise ConfigError(
            f"--model-name '{model_name}' with --shards {count} gives '{folded}', not a Kubernetes name "
            f"(at most 40 characters, letters, digits and -): use a name of at most {33 - len(str(count - 1))} characters"
        )


def _remap_seen(seen: SeenItems | None, to_shard: np.ndarray) -> SeenItems | None:
    """The history table in this shard's candidate rows (items of other shards dropped), re-sorted and narrowed."""
    if seen is None:
        return None
    table = seen.table
    inside = (table != SEEN_PADDING) & (table < len(to_shard))
    mapped = np.where(inside, to_shard[np.where(inside, table, 0)], -1)
    mapped = np.sort(np.where(mapped >= 0, mapped, SEEN_PADDING).astype(np.int32), axis=1)
    width = int((mapped != SEEN_PADDING).sum(axis=1).max(initial=0))
    return replace(seen, table=mapped[:, :width])


def _partitioned(prepared: Prepared, members: np.ndarray, index: int, count: int) -> Prepared:
    """Shard `index` with --query-side partitioned: its candidates, and only the query ids homed here."""
    cat = prepared.catalogue
    if cat.query_vectors is None:  # item -> similar items: this shard's items are its queries
        catalogue = replace(
            cat,
            query_ids=cat.query_ids[members],
            candidate_ids=cat.candidate_ids[members],
            candidate_vectors=cat.candidate_vectors[members],
        )
        return replace(prepared, catalogue=catalogue, seen=None)
    home = np.flatnonzero(shard_of(cat.query_ids, count) == index)
    catalogue = replace(
        cat,
        query_ids=cat.query_ids[home],
        query_vectors=cat.query_vectors[home],
        candidate_ids=cat.candidate_ids[members],
        candidate_vectors=cat.candidate_vectors[members],
    )
    # build_config refuses history exclusion here (the other shards could not apply it).
    return replace(prepared, catalogue=catalogue, seen=None)


def _with_sharding(
    prepared: Prepared, index: int, count: int, candidates: int, query_side: str, total: int | None
) -> dict:
    """The build's data_info plus what build_info records of this shard."""
    info = {"shard": index, "shards": count, "hash": SHARD_HASH, "candidates": candidates, "query_side": query_side}
    return {**prepared.data_info, "sharding": {**info, "total_candidates": total}}


def shard_prepared(
    prepared: Prepared, shards: np.ndarray, index: int, count: int, query_side: str = "replicated"
) -> Prepared:
    """Shard `index`'s catalogue: its candidates, and the whole query side (replicated) or the
    query ids whose home it is (partitioned: crc32 of the query id mod K, as for candidates)."""
    cat = prepared.catalogue
    members = np.flatnonzero(shards == index)
    to_shard = np.full(len(cat.candidate_ids), -1, np.int64)
    to_shard[members] = np.arange(len(members))
    data_info = _with_sharding(prepared, index, count, len(members), query_side, len(cat.candidate_ids))
    if query_side == "partitioned":
        return replace(_partitioned(prepared, members, index, count), data_info=data_info)
    if cat.query_vectors is None:  # item -> similar items: every item stays a query
        catalogue = replace(
            cat,
            query_vectors=cat.candidate_vectors,
            candidate_ids=cat.candidate_ids[members],
            candidate_vectors=cat.candidate_vectors[members],
            self_rows=to_shard,
        )
    else:
        catalogue = replace(
            cat, candidate_ids=cat.candidate_ids[members], candidate_vectors=cat.candidate_vectors[members]
        )
    return replace(prepared, catalogue=catalogue, data_info=data_info, seen=_remap_seen(prepared.seen, to_shard))


@dataclass(frozen=True)
class ShardedResult:
    """The published shard versions and the merged check."""

    version: int
    version_dirs: list[Path]
    manifest: Path
    merged: dict


def _next_version(cfg: BuildConfig) -> int:
    """One number for every shard: --version, else one above the highest any shard has."""
    if cfg.version is not None:
        return cfg.version
    out = Path(cfg.out)
    return 1 + max(
        [0] + [max(version_store.versions(out / shard_name(cfg.model_name, i)) or [0]) for i in range(cfg.shards)]
    )


def partition(cfg: BuildConfig, prepared: Prepared, log: Log = print) -> tuple[np.ndarray, np.ndarray]:
    """The shard of every candidate and each shard's size; ConfigError when a shard holds k or fewer."""
    shards = shard_of(prepared.catalogue.candidate_ids, cfg.shards)
    sizes = np.bincount(shards, minlength=cfg.shards)
    if sizes.min() < cfg.k + 1:
        raise ConfigError(
            f"{len(shards)} candidates into {cfg.shards} shards leaves shard {int(sizes.argmin())} with "
            f"{int(sizes.min())}, fewer than k + 1 = {cfg.k + 1}: use fewer --shards"
        )
    log(f"sharding: {len(shards)} candidates into {cfg.shards} shards by {SHARD_HASH}: {sizes.tolist()}")
    return shards, sizes


def build_shard(
    cfg: BuildConfig,
    train_cfg: TrainConfig,
    index_cfg: IndexConfig,
    prepared: Prepared,
    shards: np.ndarray,
    index: int,
    version: int,
    log: Log = print,
) -> Path:
    """Builds, gates and publishes shard `index` as OUT/<name>-shard-<index>/<version>: the one path
    `build --shards K` and the Indexed Job's `shard-job` (shard_job.py) both take."""
    part = shard_prepared(prepared, shards, index, cfg.shards, cfg.query_side)
    return _publish(cfg, train_cfg, index_cfg, part, index, version, log)


def _publish(
    cfg: BuildConfig, train_cfg: TrainConfig, index_cfg: IndexConfig, part: Prepared, index: int, version: int, log: Log
) -> Path:
    """Builds, gates and publishes one shard's catalogue as OUT/<name>-shard-<index>/<version>."""
    from model_builder import pipeline

    shard_cfg = replace(cfg, model_name=shard_name(cfg.model_name, index), version=version)
    result = pipeline.build(shard_cfg, train_cfg, index_cfg, lambda m: log(f"[shard {index}] {m}"), part)
    return result.version_dir


def build_home_shard(
    cfg: BuildConfig,
    train_cfg: TrainConfig,
    index_cfg: IndexConfig,
    prepared: Prepared,
    index: int,
    version: int,
    total_candidates: int | None,
    log: Log = print,
) -> Path:
    """Shard `index` of an item -> similar items build with --query-side partitioned from a catalogue
    that already holds only this shard's items (shard-job streaming parts: shard_parts.py).

    A partitioned item shard needs nothing but its own rows (its items are its candidates and its
    queries), so the other shards' rows never have to be loaded. Only this shard's size can be
    checked (partition() checks all K); `total_candidates` (the parts' row count) goes to build_info.
    """
    cat = prepared.catalogue
    if cfg.query_side != "partitioned" or cat.query_vectors is not None:
        raise ConfigError("a shard built from its own rows only needs --query-side partitioned and --query item")
    strays = np.flatnonzero(shard_of(cat.candidate_ids, cfg.shards) != index)
    if len(strays):
        raise ConfigError(f"id {cat.candidate_ids[strays[0]]!r} is not homed in shard {index} of {cfg.shards}")
    count = len(cat.candidate_ids)
    if count < cfg.k + 1:
        raise ConfigError(
            f"shard {index} of {cfg.shards} holds {count} candidates, fewer than k + 1 = {cfg.k + 1}: use fewer --shards"
        )
    data_info = _with_sharding(prepared, index, cfg.shards, count, "partitioned", total_candidates)
    log(f"sharding: shard {index} of {cfg.shards} by {SHARD_HASH}: {count} of {total_candidates} candidates")
    part = replace(prepared, catalogue=replace(cat, query_ids=cat.candidate_ids), data_info=data_info, seen=None)
    return _publish(cfg, train_cfg, index_cfg, part, index, version, log)


def build_sharded(cfg: BuildConfig, train_cfg: TrainConfig, index_cfg: IndexConfig, log: Log = print) -> ShardedResult:
    """Prepares the catalogue once, builds and publishes every shard, then checks the merged answer."""
    from model_builder.towers.prepare import prepare_imported, prepare_trained

    cfg.validate()
    index_cfg.validate()
    check_names(cfg.model_name, cfg.shards)
    prepared = prepare_imported(cfg, log) if cfg.candidates else prepare_trained(cfg, train_cfg, log)
    shards, sizes = partition(cfg, prepared, log)
    version = _next_version(cfg)
    dirs = [build_shard(cfg, train_cfg, index_cfg, prepared, shards, i, version, log) for i in range(cfg.shards)]
    from model_builder.sharded_verify import merged_check

    served = prepared if cfg.exclude_seen else replace(prepared, seen=None)  # what the shards exclude
    merged = merged_check(dirs, served, cfg.k, cfg.verify_queries, cfg.target_recall, cfg.query_side)
    manifest = Path(cfg.out) / f"{cfg.model_name}.shards-{version}.json"
    body = {
        "model_name": cfg.model_name,
        "version": version,
        "shards": [
            {"model_name": shard_name(cfg.model_name, i), "candidates": int(sizes[i])} for i in range(cfg.shards)
        ],
        "hash": SHARD_HASH,
        "query_side": cfg.query_side,
        "merged_verification": merged,
    }
    # Whole or absent: written beside, then renamed over (a reader never sees half a manifest).
    partial = manifest.with_name(f".{manifest.name}.tmp-{os.getpid()}")
    partial.write_text(json.dumps(body, indent=2) + "\n")
    os.replace(partial, manifest)
    recalls = ", ".join(f"{k} {v:.4f}" for k, v in merged["recall_at_k"].items())
    log(f"sharding: merged recall@{cfg.k} over {cfg.shards} shards vs exact search on the whole catalogue: {recalls}")
    if not merged["passed"]:
        raise VerificationError(
            f"merged answer of the {cfg.shards} shards (version {version}) fails: {'; '.join(merged['failures'])}; "
            f"see {manifest}: do not deploy these versions, rebuild with a higher --target-recall per shard"
        )
    return ShardedResult(version, dirs, manifest, merged)


__all__ = [
    "SHARD_HASH",
    "ShardedResult",
    "build_home_shard",
    "build_shard",
    "build_sharded",
    "partition",
    "check_names",
    "shard_name",
    "shard_of",
    "shard_prepared",
]
