"""The towers stage's result: the catalogue to serve (query and candidate vectors) and where it came from.

Three ways in: id towers trained on interactions, feature towers (towers/feature_build.py), or
embeddings imported from elsewhere (towers/imported_embeddings.py). The two trained paths end
in the same place (`_from_trained`): catalogue, data description, popularity order.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from model_builder.build_config import BuildConfig
from model_builder.contract import Catalogue
from model_builder.errors import DataError
from model_builder.towers import evaluation, history, imported_embeddings
from model_builder.towers.training import TrainConfig

Log = Callable[[str], None]


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
    # User -> items with --exclude-seen: each query row's history, which serving_default masks.
    seen: history.SeenItems | None = None
    # The dataset's own item features (MovieLens: genres, release year): `--item-attributes dataset`.
    item_features: object | None = None

    def as_item_to_item(self) -> Prepared:
        """The same towers served item -> similar items (queries are the candidates; no user history)."""
        cat = self.catalogue
        return replace(
            self, catalogue=Catalogue(cat.candidate_ids, None, cat.candidate_ids, cat.candidate_vectors), seen=None
        )


@dataclass(frozen=True)
class _Trained:
    """What either trained path hands to `_from_trained`."""

    user_ids: np.ndarray
    user_vectors: np.ndarray
    item_ids: np.ndarray
    item_vectors: np.ndarray
    item_rows: np.ndarray  # the item row of every positive training pair (popularity)
    users_seen: int
    items_seen: int
    quality: dict
    counts: dict
    feature_towers: object | None = None


def _positives(cfg: BuildConfig, dataset) -> tuple[np.ndarray, float | None]:
    threshold = cfg.min_weight if cfg.min_weight is not None else dataset.default_min_weight
    weights = dataset.interactions.weights
    return (weights >= threshold) if threshold is not None else np.ones(len(weights), bool), threshold


def prepare_trained(cfg: BuildConfig, train_cfg: TrainConfig, log: Log) -> Prepared:
    """Loads the dataset, trains and evaluates the towers, returns the catalogue."""
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
    stamps = inter.timestamps[keep] if inter.timestamps is not None else None
    if cfg.features and dataset.has_features:
        log(f"data: {len(inter)} interactions, {int(keep.sum())} positives (weight >= {threshold}) from {inter.source}")
        trained = _train_features(cfg, train_cfg, dataset, keep, stamps, log)
    else:
        trained = _train_ids(cfg, train_cfg, inter, keep, threshold, stamps, log)
    return _from_trained(cfg, dataset, keep, threshold, trained)


def excluded_rule(cfg: BuildConfig) -> str:
    """What the quality table and serving_default leave out of a user's results (one rule)."""
    if cfg.query == "item":
        return "training items excluded (item -> similar items serves no user)"
    if cfg.exclude_seen:
        return f"each user's {cfg.seen_cap} most recent interactions (any weight) excluded, as served"
    return "nothing excluded, as served (--no-exclude-seen)"


def evaluation_seen(cfg: BuildConfig, inter, user_ids: np.ndarray, item_ids: np.ndarray, held_out) -> dict | None:
    """The served rule applied to the data without the held-out pairs: what the quality table excludes.

    None (item -> similar items: no user is served) keeps the training pairs.
    """
    if cfg.query == "item":
        return None
    if not cfg.exclude_seen:
        return {}
    users, items = history.rows_of(user_ids, inter.user_ids), history.rows_of(item_ids, inter.item_ids)
    return history.evaluation_seen(users, items, inter.timestamps, held_out, cfg.seen_cap)


def _train_ids(cfg: BuildConfig, train_cfg: TrainConfig, inter, keep, threshold, stamps, log: Log) -> _Trained:
    """Id-only towers: leave-last-out quality against most-popular, then (by default) a refit on everything."""
    from model_builder.towers import training

    users, items = evaluation.Vocab.build(inter.user_ids[keep]), evaluation.Vocab.build(inter.item_ids[keep])
    log(
        f"data: {len(inter)} interactions, {int(keep.sum())} positives (weight >= {threshold}), "
        f"{len(users.ids)} users, {len(items.ids)} items from {inter.source}"
    )
    split = evaluation.leave_last_out(users.rows, items.rows, stamps, cfg.holdout_per_user)
    log(f"train: {len(split.train_users)} pairs, {len(split.test_users)} held out; {train_cfg}")
    start = time.perf_counter()
    trained = training.train(split.train_users, split.train_items, len(users.ids), len(items.ids), train_cfg)
    seen = evaluation_seen(cfg, inter, users.ids, items.ids, (split.test_users, split.test_items))
    model_q = evaluation.model_metrics(trained.user_vectors, trained.item_vectors, split, seen=seen)
    popular_q = evaluation.popularity_metrics(split, len(items.ids), seen=seen)
    log(f"quality on held-out interactions (all items ranked, {excluded_rule(cfg)}):")
    for k in evaluation.KS:
        log(
            f"  hit-rate@{k}: two-tower {model_q[f'hit_rate@{k}']:.4f} vs most-popular {popular_q[f'hit_rate@{k}']:.4f}"
            f"   recall@{k}: {model_q[f'recall@{k}']:.4f} vs {popular_q[f'recall@{k}']:.4f}"
        )
    if cfg.refit:
        log("refit: training on all positives for the exported towers")
        trained = training.train(users.rows, items.rows, len(users.ids), len(items.ids), train_cfg)
    quality = {
        "two_tower": model_q,
        "most_popular": popular_q,
        "train_seconds": time.perf_counter() - start,
        "final_loss": trained.final_loss,
        "config": asdict(train_cfg),
        "refit": cfg.refit,
        "excluded": excluded_rule(cfg),
    }
    return _Trained(
        user_ids=users.ids,
        user_vectors=trained.user_vectors,
        item_ids=items.ids,
        item_vectors=trained.item_vectors,
        item_rows=items.rows,
        users_seen=len(users.ids),
        items_seen=len(items.ids),
        quality=quality,
        counts={},
    )


def _train_features(cfg: BuildConfig, train_cfg: TrainConfig, dataset, keep, stamps, log: Log) -> _Trained:
    """Feature towers (feature_build.py): cold-start quality, items without interactions indexed too."""
    from model_builder.towers import feature_build

    rule = "training" if cfg.query == "item" else ("history" if cfg.exclude_seen else "none")
    opts = feature_build.FeatureSettings(
        cfg.holdout_per_user,
        cfg.cold_users,
        cfg.cold_items,
        cfg.refit,
        cfg.compare_id_only,
        rule,
        cfg.seen_cap,
        excluded_rule(cfg),
    )
    model = feature_build.train_and_evaluate(dataset, keep, stamps, opts, train_cfg, log)
    return _Trained(
        user_ids=model.users.ids,
        user_vectors=model.user_vectors,
        item_ids=model.items.ids,
        item_vectors=model.item_vectors,
        item_rows=model.items.rows,
        users_seen=int(len(np.unique(model.users.rows))),
        items_seen=int(len(np.unique(model.items.rows))),
        quality=model.quality,
        counts=model.counts,
        feature_towers=model.exported,
    )


def _from_trained(cfg: BuildConfig, dataset, keep: np.ndarray, threshold, trained: _Trained) -> Prepared:
    """The catalogue of either trained path, its data description and the items by popularity."""
    if cfg.query == "user":
        catalogue = Catalogue(trained.user_ids, trained.user_vectors, trained.item_ids, trained.item_vectors)
    else:
        catalogue = Catalogue(trained.item_ids, None, trained.item_ids, trained.item_vectors)
    inter = dataset.interactions
    data_info = {
        "dataset": dataset.name,
        "source": inter.source,
        "interactions": len(inter),
        "positives": int(keep.sum()),
        "min_weight": threshold,
        "users": trained.users_seen,
        "items": trained.items_seen,
        **trained.counts,
    }
    popularity = np.bincount(trained.item_rows, minlength=len(trained.item_ids))
    # Stable sort: equally popular items keep id order, so the fallback list is reproducible.
    popular_ids = trained.item_ids[np.argsort(-popularity, kind="stable")]
    seen = None
    if cfg.query == "user" and cfg.exclude_seen:
        seen = history.seen_table(
            history.rows_of(trained.user_ids, inter.user_ids),
            history.rows_of(trained.item_ids, inter.item_ids),
            inter.timestamps,
            len(trained.user_ids),
            cfg.seen_cap,
        )
    return Prepared(
        catalogue,
        data_info,
        trained.quality,
        dataset.titles,
        popular_ids,
        trained.feature_towers,
        seen=seen,
        item_features=dataset.item_features,
    )


def prepare_imported(cfg: BuildConfig, log: Log) -> Prepared:
    """Reads candidate embeddings (and a query tower); no training."""
    path = Path(cfg.candidates)
    ids, vectors = imported_embeddings.load_candidates(path)
    log(f"data: imported {len(ids)} candidates x {vectors.shape[1]} from {path}")
    if cfg.query == "item":
        catalogue = Catalogue(ids, None, ids, vectors)
    else:
        if cfg.query_embeddings:
            source = cfg.query_embeddings
            query_ids, query_vectors = imported_embeddings.load_candidates(Path(source))
        else:
            source = cfg.query_tower
            query_ids = imported_embeddings.load_query_ids(Path(cfg.query_ids))
            query_vectors = imported_embeddings.run_query_tower(Path(source), query_ids)
        if query_vectors.shape[1] != vectors.shape[1]:
            raise DataError(
                f"{source}: queries have {query_vectors.shape[1]} dims but {path} holds "
                f"{vectors.shape[1]}-dim candidates; both towers must embed into one space"
            )
        log(f"data: {len(query_ids)} query vectors from {source}")
        catalogue = Catalogue(query_ids, query_vectors, ids, vectors)
    data_info = {"dataset": "imported", "source": str(path), "items": len(ids), "users": len(catalogue.query_ids)}
    return Prepared(catalogue, data_info, {}, {})
