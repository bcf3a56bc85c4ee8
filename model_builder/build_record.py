"""build_info.json: what a version was built from and what its signatures promise (before the
gate's and the memory measurement's results are added by the pipeline)."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from model_builder import contract
from model_builder.build_config import BuildConfig
from model_builder.export.filters import FilterOptions
from model_builder.index.tuning_queries import TuningQueries
from model_builder.towers.prepare import Prepared

# search_by_vector has no user, so nothing to exclude there.
_EXCLUDING_SIGNATURES = [contract.SERVING_SIGNATURE, f"{contract.FEATURES_SIGNATURE} (known ids)"]


@dataclass(frozen=True)
class BuildFacts:
    """What the pipeline decided, as build_info.json records it."""

    cfg: BuildConfig
    prepared: Prepared
    index: dict  # the resolved index and its build time
    tuning: dict | None
    search_record: dict | None
    fallback_ids: np.ndarray | None
    seen: object | None  # towers.history.SeenItems when serving_default excludes histories
    given: TuningQueries | None
    attributes: object | None  # index.attributes.AttributeTables with --item-attributes


def filter_options(cfg: BuildConfig) -> FilterOptions:
    """The filtered signatures' fixed widths and fetch size (build flags)."""
    return FilterOptions(cfg.filter_tokens_width, cfg.filter_exclude_width, cfg.filter_fetch)


def git_commit() -> str:
    """The source commit ($GIT_COMMIT in images, else git), or 'unknown'."""
    if os.environ.get("GIT_COMMIT"):
        return os.environ["GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def runtime_versions() -> dict:
    """Versions that produced the model (stored in build_info.json)."""
    import importlib.metadata as md

    import tensorflow as tf

    from model_builder import __version__

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "scann": md.version("scann"),
        "numpy": np.__version__,
        "model_builder": __version__,
    }


def _filters_info(facts: BuildFacts) -> dict | None:
    """["serving"]["filters"]: widths, vocabulary with item counts, the paths' constants."""
    if facts.attributes is None:
        return None
    cfg = facts.cfg
    options, n = filter_options(cfg), len(facts.prepared.catalogue.candidate_ids)
    return {
        "signatures": [contract.FILTERED_SIGNATURE, contract.VECTOR_FILTERED_SIGNATURE, contract.SCHEMA_SIGNATURE],
        "tokens_width": options.tokens_width,
        "exclude_width": options.exclude_width,
        "fetch": options.fetch_for(cfg.k, n),
        "exact_below_selectivity": options.threshold(cfg.k, n),
        **facts.attributes.to_info(),
    }


def _features_info(cfg: BuildConfig, exported) -> dict | None:
    """["serving"]["features"]: the feature signature's inputs (clients check against it)."""
    if exported is None:
        return None
    return {
        "signature": contract.FEATURES_SIGNATURE,
        "tower": cfg.query,
        "inputs": exported.signature_inputs(cfg.query),
        "multi_separator": "|",
    }


def _exclusion_info(facts: BuildFacts) -> dict | None:
    """["serving"]["exclude_seen"]: the rule, the cap and what the graph fetches."""
    if facts.seen is None:
        return None
    n = len(facts.prepared.catalogue.candidate_ids)
    fetch = contract.neighbours_per_query(facts.cfg.k, False, facts.seen.width, n)
    return {**facts.seen.to_info(), "fetched_per_query": fetch, "signatures": _EXCLUDING_SIGNATURES}


def _id_dtype(ids: np.ndarray) -> str:
    return "int64" if ids.dtype == np.int64 else "string"


def build_info(facts: BuildFacts) -> dict:
    """build_info.json before verification and memory are added."""
    cfg, prepared = facts.cfg, facts.prepared
    catalogue = prepared.catalogue
    return {
        "model_name": cfg.model_name,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "versions": runtime_versions(),
        "data": prepared.data_info,
        "training": prepared.quality,
        "index": facts.index,
        "tuning": facts.tuning,
        "index_search": facts.search_record,
        "tuning_queries": None if facts.given is None else facts.given.to_info(),
        "serving": {
            "k": cfg.k,
            "query": cfg.query,
            "items_are_queries": catalogue.items_are_queries,
            "max_batch_size": cfg.max_batch_size,
            "dimensions": int(catalogue.candidate_vectors.shape[1]),
            "unknown_ids": cfg.unknown_ids,
            "features": _features_info(cfg, prepared.feature_towers),
            "fallback_ids": None if facts.fallback_ids is None else facts.fallback_ids.tolist(),
            "exclude_seen": _exclusion_info(facts),
            "filters": _filters_info(facts),
            "query_id_dtype": _id_dtype(catalogue.query_ids),
            "candidate_id_dtype": _id_dtype(catalogue.candidate_ids),
        },
        "build_config": asdict(cfg),
    }
