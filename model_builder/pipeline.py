"""The build: data -> towers (or imported embeddings) -> ScaNN index -> SavedModel -> verified version."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from model_builder import embeddings, evaluate, export, index, index_search, verify, warmup
from model_builder.build_config import BuildConfig
from model_builder.compat import memory, serving_rules
from model_builder.errors import ConfigError, DataError
from model_builder.serving_module import (
    Catalogue,
    RetrievalModule,
    ServingOptions,
    check_not_padding,
)
from model_builder.towers import TrainConfig


@dataclass(frozen=True)
class Prepared:
    """The catalogue to serve plus what we know about where it came from."""

    catalogue: Catalogue
    data_info: dict
    quality: dict
    titles: dict
    # Candidate ids, most positives in the training data first (None for imported embeddings).
    popular_ids: np.ndarray | None = None
    # Feature builds: the plain-TF towers for search_by_features (feature_build.ExportedTowers).
    feature_towers: object | None = None

    def as_item_to_item(self) -> Prepared:
        """The same towers served item -> similar items (queries are the candidates)."""
        cat = self.catalogue
        return replace(self, catalogue=Catalogue(cat.candidate_ids, None, cat.candidate_ids, cat.candidate_vectors))


Log = Callable[[str], None]


def _positives(cfg: BuildConfig, dataset) -> tuple[np.ndarray, float | None]:
    threshold = cfg.min_weight if cfg.min_weight is not None else dataset.default_min_weight
    weights = dataset.interactions.weights
    return (weights >= threshold) if threshold is not None else np.ones(len(weights), bool), threshold


def prepare_trained(cfg: BuildConfig, train_cfg: TrainConfig, log: Log) -> Prepared:
    """Loads the dataset, trains and evaluates the towers, returns the catalogue."""
    from model_builder import towers
    from model_builder.data import load_dataset

    train_cfg.validate()
    dataset = load_dataset(
        cfg.dataset,
        Path(cfg.items) if cfg.items else None,
        Path(cfg.user_features) if cfg.user_features else None,
        Path(cfg.item_features) if cfg.item_features else None,
    )
    inter = dataset.interactions
    keep, threshold = _positives(cfg, dataset)
    if cfg.features and dataset.has_features:
        return _prepare_features(cfg, train_cfg, dataset, keep, threshold, log)
    users, items = evaluate.Vocab.build(inter.user_ids[keep]), evaluate.Vocab.build(inter.item_ids[keep])
    stamps = inter.timestamps[keep] if inter.timestamps is not None else None
    log(
        f"data: {len(inter)} interactions, {int(keep.sum())} positives (weight >= {threshold}), "
        f"{len(users.ids)} users, {len(items.ids)} items from {inter.source}"
    )
    split = evaluate.leave_last_out(users.rows, items.rows, stamps, cfg.holdout_per_user)
    log(f"train: {len(split.train_users)} pairs, {len(split.test_users)} held out; {train_cfg}")
    start = time.perf_counter()
    trained = towers.train(split.train_users, split.train_items, len(users.ids), len(items.ids), train_cfg)
    model_q = evaluate.model_metrics(trained.user_vectors, trained.item_vectors, split)
    popular_q = evaluate.popularity_metrics(split, len(items.ids))
    log("quality on held-out interactions (all items ranked, training items excluded):")
    for k in evaluate.KS:
        log(
            f"  hit-rate@{k}: two-tower {model_q[f'hit_rate@{k}']:.4f} vs most-popular {popular_q[f'hit_rate@{k}']:.4f}"
            f"   recall@{k}: {model_q[f'recall@{k}']:.4f} vs {popular_q[f'recall@{k}']:.4f}"
        )
    if cfg.refit:
        log("refit: training on all positives for the exported towers")
        trained = towers.train(users.rows, items.rows, len(users.ids), len(items.ids), train_cfg)
    quality = {
        "two_tower": model_q,
        "most_popular": popular_q,
        "train_seconds": time.perf_counter() - start,
        "final_loss": trained.final_loss,
        "config": asdict(train_cfg),
        "refit": cfg.refit,
    }
    if cfg.query == "user":
        catalogue = Catalogue(users.ids, trained.user_vectors, items.ids, trained.item_vectors)
    else:
        catalogue = Catalogue(items.ids, None, items.ids, trained.item_vectors)
    data_info = {
        "dataset": dataset.name,
        "source": inter.source,
        "interactions": len(inter),
        "positives": int(keep.sum()),
        "min_weight": threshold,
        "users": len(users.ids),
        "items": len(items.ids),
    }
    popularity = np.bincount(items.rows, minlength=len(items.ids))
    # Stable sort: equally popular items keep id order, so the fallback list is reproducible.
    popular_ids = items.ids[np.argsort(-popularity, kind="stable")]
    return Prepared(catalogue, data_info, quality, dataset.titles, popular_ids)


def _prepare_features(
    cfg: BuildConfig, train_cfg: TrainConfig, dataset, keep: np.ndarray, threshold, log: Log
) -> Prepared:
    """Feature towers (feature_build.py): cold-start quality, items without interactions indexed too."""
    from model_builder import feature_build

    inter = dataset.interactions
    stamps = inter.timestamps[keep] if inter.timestamps is not None else None
    log(f"data: {len(inter)} interactions, {int(keep.sum())} positives (weight >= {threshold}) from {inter.source}")
    opts = feature_build.FeatureSettings(
        cfg.holdout_per_user, cfg.cold_users, cfg.cold_items, cfg.refit, cfg.compare_id_only
    )
    model = feature_build.train_and_evaluate(dataset, keep, stamps, opts, train_cfg, log)
    if cfg.query == "user":
        catalogue = Catalogue(model.users.ids, model.user_vectors, model.items.ids, model.item_vectors)
    else:
        catalogue = Catalogue(model.items.ids, None, model.items.ids, model.item_vectors)
    data_info = {
        "dataset": dataset.name,
        "source": inter.source,
        "interactions": len(inter),
        "positives": int(keep.sum()),
        "min_weight": threshold,
        "users": int(len(np.unique(model.users.rows))),
        "items": int(len(np.unique(model.items.rows))),
        **model.counts,
    }
    popularity = np.bincount(model.items.rows, minlength=len(model.items.ids))
    # Stable sort, as in prepare_trained: the fallback list is reproducible.
    popular_ids = model.items.ids[np.argsort(-popularity, kind="stable")]
    return Prepared(catalogue, data_info, model.quality, dataset.titles, popular_ids, model.exported)


def prepare_imported(cfg: BuildConfig, log: Log) -> Prepared:
    """Reads candidate embeddings (and a query tower); no training."""
    path = Path(cfg.candidates)
    ids, vectors = embeddings.load_candidates(path)
    log(f"data: imported {len(ids)} candidates x {vectors.shape[1]} from {path}")
    if cfg.query == "item":
        catalogue = Catalogue(ids, None, ids, vectors)
    else:
        if cfg.query_embeddings:
            source = cfg.query_embeddings
            query_ids, query_vectors = embeddings.load_candidates(Path(source))
        else:
            source = cfg.query_tower
            query_ids = embeddings.load_query_ids(Path(cfg.query_ids))
            query_vectors = embeddings.run_query_tower(Path(source), query_ids)
        if query_vectors.shape[1] != vectors.shape[1]:
            raise DataError(
                f"{source}: queries have {query_vectors.shape[1]} dims but {path} holds "
                f"{vectors.shape[1]}-dim candidates; both towers must embed into one space"
            )
        log(f"data: {len(query_ids)} query vectors from {source}")
        catalogue = Catalogue(query_ids, query_vectors, ids, vectors)
    data_info = {"dataset": "imported", "source": str(path), "items": len(ids), "users": len(catalogue.query_ids)}
    return Prepared(catalogue, data_info, {}, {})


def _tuning_queries(catalogue: Catalogue, count: int = 1000) -> np.ndarray:
    # A different sample from the recall gate's (seed 0), so the gate checks unseen queries.
    vectors = catalogue.vectors_of_queries()
    picks = np.random.default_rng(20_240).choice(len(vectors), size=min(count, len(vectors)), replace=False)
    return vectors[picks]


def module_factory(
    cfg: BuildConfig, catalogue: Catalogue, fallback_ids: np.ndarray | None = None, query_tower=None
) -> index_search.MakeModule:
    """The serving module for an index and its search knobs: what gets exported, and what the index search times.

    `query_tower` (feature builds, feature_tower.ServingTower) adds the search_by_features signature.
    """

    def make(
        resolved: index.ResolvedIndex, searcher, leaves_to_search: int | None, reorder: int | None
    ) -> RetrievalModule:
        options = ServingOptions(
            k=cfg.k,
            max_batch_size=cfg.max_batch_size,
            num_examples=cfg.num_examples,
            leaves_to_search=leaves_to_search,
            pre_reorder_num_neighbors=reorder,
            unknown_ids=cfg.unknown_ids,
            fallback_ids=fallback_ids,
        )
        return RetrievalModule(catalogue, resolved, searcher, options, query_tower)

    return make


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


def _fallback_ids(cfg: BuildConfig, prepared: Prepared) -> np.ndarray | None:
    """--unknown-ids fallback: the k most popular training items (user -> items and item -> similar alike)."""
    if cfg.unknown_ids != "fallback":
        return None
    if prepared.popular_ids is None:
        raise ConfigError("--unknown-ids fallback needs training interactions to rank items by popularity")
    if len(prepared.popular_ids) < cfg.k:
        raise ConfigError(f"--unknown-ids fallback needs k={cfg.k} items, the data has {len(prepared.popular_ids)}")
    return prepared.popular_ids[: cfg.k]


def _features_info(cfg: BuildConfig, exported) -> dict | None:
    """build_info.json["serving"]["features"]: the feature signature's inputs (clients check against it)."""
    if exported is None:
        return None
    from model_builder.serving_module import FEATURES_SIGNATURE

    return {
        "signature": FEATURES_SIGNATURE,
        "tower": cfg.query,
        "inputs": exported.signature_inputs(cfg.query),
        "multi_separator": "|",
    }


@dataclass(frozen=True)
class BuildResult:
    """Where the verified version went and what it contains."""

    version_dir: Path
    info: dict
    prepared: Prepared


def build(
    cfg: BuildConfig,
    train_cfg: TrainConfig,
    index_cfg: index.IndexConfig,
    log: Log = print,
    prepared: Prepared | None = None,
) -> BuildResult:
    """Runs the whole build; the version is published only if verification passes.

    `prepared` skips data loading and training (the demo trains once and builds two models).
    """
    cfg.validate()
    index_cfg.validate()
    started = time.perf_counter()
    if prepared is None:
        prepared = prepare_imported(cfg, log) if cfg.candidates else prepare_trained(cfg, train_cfg, log)
    catalogue = prepared.catalogue
    check_not_padding(catalogue.candidate_ids, prepared.data_info.get("source", cfg.dataset))
    fallback_ids = _fallback_ids(cfg, prepared)
    vectors = catalogue.candidate_vectors
    extra = 1 if catalogue.items_are_queries else 0  # the query item itself is dropped from its results
    resolved = index.resolve(index_cfg, len(vectors), vectors.shape[1], cfg.k + extra)
    log(f"index: {resolved.describe()}")
    exported = prepared.feature_towers
    query_tower = exported.towers[cfg.query] if exported else None
    tuning = searched = None
    if cfg.tune and resolved.algorithm != "exact":
        # With items as queries the search measures recall@(k+1) including the query item (nearly
        # always found; a tree may miss it), while the gate measures the k others: ask for the recall that means the
        # gate's target (at k=10, 0.95 of the others is (1 + 9.5) / 11 = 0.9545 with the item).
        search_target = (1 + cfg.k * cfg.target_recall) / (cfg.k + 1) if extra else cfg.target_recall
        searched = index_search.search(
            index_cfg,
            resolved,
            vectors,
            _tuning_queries(catalogue),
            cfg.k + extra,
            search_target,
            module_factory(cfg, catalogue, fallback_ids, query_tower),
            log,
            gate_queries=min(cfg.verify_queries, len(catalogue.vectors_of_queries())),  # what the gate samples
        )
        resolved, searcher, index_seconds, tuning = (
            searched.index,
            searched.searcher,
            searched.build_seconds,
            searched.tuning,
        )
    else:
        searcher, index_seconds = index.build_searcher(vectors, resolved, cfg.k + extra)
        log(f"index: built in {index_seconds:.1f} s")
    module = module_factory(cfg, catalogue, fallback_ids, query_tower)(
        resolved, searcher, tuning.leaves_to_search if tuning else None, tuning.reorder if tuning else None
    )
    info = {
        "model_name": cfg.model_name,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "versions": runtime_versions(),
        "data": prepared.data_info,
        "training": prepared.quality,
        "index": {**resolved.to_dict(), "build_seconds": round(index_seconds, 3)},
        "tuning": tuning.to_dict() if tuning else None,
        "index_search": searched.record if searched else None,
        "serving": {
            "k": cfg.k,
            "query": cfg.query,
            "items_are_queries": catalogue.items_are_queries,
            "max_batch_size": cfg.max_batch_size,
            "dimensions": int(vectors.shape[1]),
            "unknown_ids": cfg.unknown_ids,
            "features": _features_info(cfg, exported),
            "fallback_ids": None if fallback_ids is None else fallback_ids.tolist(),
            "query_id_dtype": "int64" if catalogue.query_ids.dtype == np.int64 else "string",
            "candidate_id_dtype": "int64" if catalogue.candidate_ids.dtype == np.int64 else "string",
        },
        "build_config": asdict(cfg),
    }

    def write(tmp: Path, version: int) -> None:
        log(f"export: writing version {version} into {tmp.parent}")
        export.save_module(module, module.signatures(), tmp)
        logs = warmup.warmup_logs(
            cfg.model_name, catalogue.query_ids, catalogue.vectors_of_queries(), cfg.max_batch_size
        )
        if exported:
            logs += warmup.feature_logs(cfg.model_name, exported.examples[cfg.query], cfg.max_batch_size)
        warmup.write(tmp, logs[: warmup.MAX_RECORDS])
        export.write_build_info(tmp, {**info, "version": version})

    def check(tmp: Path) -> None:
        batching_file = (
            Path(cfg.batching_parameters) if cfg.batching_parameters else serving_rules.default_batching_file()
        )
        serving_rules.enforce(serving_rules.check_all(tmp, batching_file))
        log(
            f"serving rules of TF Serving 2.11 --enable_batching: ok ({batching_file or 'no batching file: model checked alone'})"
        )
        log(f"verify: loading the export in a fresh process; recall@{cfg.k} must be >= {cfg.target_recall}")
        report = verify.verify_in_fresh_process(tmp, cfg.target_recall, cfg.verify_queries)
        recalls = ", ".join(f"{k} {v:.4f}" for k, v in report["recall_at_k"].items())
        log(
            f"verify: recall@{report['k']} vs exact search: {recalls}; {report['warmup_records_replayed']} warmup requests replayed"
        )
        full = export.read_build_info(tmp)
        full["verification"] = {**report, "version_dir": None}
        export.write_build_info(tmp, full)
        # Deploy sizing: peak RSS of loading + warming in the serving-runtime stand-in (compat/memory.py).
        memory.record(tmp, log)

    version_dir = export.publish(Path(cfg.out), cfg.model_name, cfg.version, write, check)
    info = export.read_build_info(version_dir)
    log(f"published {version_dir} in {time.perf_counter() - started:.0f} s")
    return BuildResult(version_dir, info, prepared)
