"""The index structures the build's search tries, the rule of thumb's first.

A structure is what needs a (re)build: the family (brute force, AH, tree + AH),
the number of leaves, AH's dimensions per code block and code size. Search-time
knobs (leaves to search, reorder depth) are swept per structure (recall_sweep.py).

Order matters because the time budget cuts the tail: the rule of thumb first
(it is also the fallback), then the structures most likely to serve faster at
the same recall for this catalogue size, the full scans (brute force, AH
without a tree) last on large catalogues, where their cost grows with N.
Flags the user set (--algorithm, --num-leaves, --dimensions-per-block,
--hash-type) pin that part of the structure.
"""

from __future__ import annotations

import math
from dataclasses import replace

from model_builder.index.config import (
    DEFAULT_DIMENSIONS_PER_BLOCK,
    DEFAULT_HASH_TYPE,
    IndexConfig,
    ResolvedIndex,
    resolve,
)

# A leaf of fewer points than this wastes the tree: its centre costs as much to score as its members.
MIN_POINTS_PER_LEAF = 20


def structure_key(index: ResolvedIndex) -> tuple:
    """What identifies a build: family, leaves, AH block size and code size."""
    return (index.algorithm, index.num_leaves, index.dimensions_per_block, index.hash_type)


def describe(index: ResolvedIndex) -> str:
    """A short label: 'tree_ah leaves=1000 dpb=2 lut16'."""
    parts = [index.algorithm]
    if index.num_leaves:
        parts.append(f"leaves={index.num_leaves}")
    if index.dimensions_per_block:
        parts += [f"dpb={index.dimensions_per_block}", str(index.hash_type)]
    return " ".join(parts)


def leaf_counts(num_candidates: int) -> list[int]:
    """Leaf counts around sqrt(N): the rule of thumb's, then twice (smaller leaves: less to scan per
    query, a longer build), then half."""
    root = math.sqrt(num_candidates)
    most = max(2, num_candidates // MIN_POINTS_PER_LEAF)
    return list(dict.fromkeys(min(most, max(2, int(round(root * f)))) for f in (1.0, 2.0, 0.5)))


def _codes(cfg: IndexConfig) -> list[tuple[int, str]]:
    """(dimensions per block, hash type) pairs: the default first; lut256 where it buys accuracy (4 dims/code)."""
    blocks = [cfg.dimensions_per_block] if cfg.dimensions_per_block else [DEFAULT_DIMENSIONS_PER_BLOCK, 4, 1]
    hashes = [cfg.hash_type] if cfg.hash_type else [DEFAULT_HASH_TYPE, "lut256"]
    pairs = [(b, h) for b in blocks for h in hashes]
    if not cfg.hash_type:
        # 8-bit codes over 4 dims take the bytes 4-bit codes over 2 dims take, with finer quantization;
        # over 1-2 dims they only make the scan slower (ScaNN's own advice: lut256 with more dims per block).
        pairs = [(b, h) for b, h in pairs if h == DEFAULT_HASH_TYPE or b >= 4 or cfg.dimensions_per_block]
    return pairs


def candidates(cfg: IndexConfig, rule: ResolvedIndex) -> list[ResolvedIndex]:
    """Every structure to try, the rule of thumb (`rule`) first, without duplicates.

    Below --brute-force-below the rule's exact scoring is the only structure (unless --algorithm asks
    for another family): a search there costs tens of microseconds per query, next to a fixed
    ~0.2 ms per call, and an index would give up exactness for a share of that.
    """
    n, dim, k = rule.num_candidates, rule.dimensions, rule.k
    if cfg.algorithm == "auto" and rule.algorithm == "brute_force":
        return [rule]
    families = [cfg.algorithm] if cfg.algorithm != "auto" else ["tree_ah", "ah", "brute_force"]
    leaves = [cfg.num_leaves] if cfg.num_leaves else leaf_counts(n)
    codes = _codes(cfg)
    out: list[ResolvedIndex] = [rule]
    for family in families:
        if family == "brute_force":
            out.append(_resolved(cfg, "brute_force", n, dim, k))
            continue
        for leaf_count in leaves if family == "tree_ah" else [None]:
            for blocks, hash_type in codes:
                out.append(
                    _resolved(
                        cfg, family, n, dim, k, num_leaves=leaf_count, dimensions_per_block=blocks, hash_type=hash_type
                    )
                )
    unique: dict[tuple, ResolvedIndex] = {}
    for index in out:
        unique.setdefault(structure_key(index), index)
    return sorted(unique.values(), key=lambda index: _priority(index, rule))


def _resolved(cfg: IndexConfig, family: str, n: int, dim: int, k: int, **structure) -> ResolvedIndex:
    # Leaves to search and reorder depth are swept per structure: start each from its own rule of thumb.
    changed = replace(cfg, algorithm=family, num_leaves_to_search=None, **structure)
    if family != "tree_ah":
        changed = replace(changed, num_leaves=None)
    return replace(resolve(changed, n, dim, k), reason=f"index search candidate ({family})")


def _priority(index: ResolvedIndex, rule: ResolvedIndex) -> tuple:
    """Sort key: the rule first; then partitioned structures, default codes before others; full scans last."""
    if structure_key(index) == structure_key(rule):
        return (0,)
    scans_everything = index.algorithm != "tree_ah"
    large = rule.num_candidates >= 100_000
    family_rank = {"tree_ah": 0, "ah": 1, "brute_force": 2}[index.algorithm]
    # Below 100k a full scan is cheap enough to rival a tree: interleave by code choice instead.
    group = (1 + family_rank) if large else 1
    codes = (index.dimensions_per_block != DEFAULT_DIMENSIONS_PER_BLOCK) + (index.hash_type != DEFAULT_HASH_TYPE)
    leaves_off = abs(math.log((index.num_leaves or 1) / (rule.num_leaves or math.sqrt(rule.num_candidates))))
    return (group, codes, scans_everything and not large, leaves_off, family_rank)
