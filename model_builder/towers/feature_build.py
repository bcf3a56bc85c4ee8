"""The feature path of the build: side features -> feature towers -> cold-start quality -> exported towers.

Entities are every user (item) that has a positive interaction *or* a
features row, so an item nobody has interacted with yet still enters the
index, embedded by the item tower from its features. Quality is measured
with a share of users and items held out of training entirely (evaluation.py),
next to the most-popular baseline and, on warm users, the id-only towers
trained on the same split. Then (with refit) the towers are trained again on
every positive and rebuilt as plain-TF `ServingTower`s, which also compute the
vectors the index and the id signature serve.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from model_builder.data.features import FeatureTable
from model_builder.towers import evaluation, feature_encoding, history, training
from model_builder.towers.served_tower import ServingTower, embed
from model_builder.towers.training import TrainConfig


@dataclass(frozen=True)
class FeatureSettings:
    """The build options the feature path needs (see build_config.BuildConfig for their help)."""

    holdout_per_user: int = 1
    cold_users: float = 0.2
    cold_items: float = 0.1
    refit: bool = True
    compare_id_only: bool = True
    # What warm users are never recommended in the quality table (the served rule, towers/history.py):
    # "history" (their seen_cap most recent interactions), "none", or "training" (the training pairs).
    seen_rule: str = "training"
    seen_cap: int = 500
    excluded: str = "training items excluded"  # the rule in words, for the quality table


@dataclass(frozen=True)
class Universe:
    """Sorted ids of every entity; `rows` maps each positive interaction to its entity row."""

    ids: np.ndarray
    rows: np.ndarray

    @classmethod
    def build(cls, interaction_ids: np.ndarray, table: FeatureTable | None) -> Universe:
        """Entities with interactions plus entities that only have features."""
        pool = (
            interaction_ids
            if table is None
            else np.concatenate([interaction_ids, table.ids.astype(interaction_ids.dtype)])
        )
        ids = np.unique(pool)
        return cls(ids, np.searchsorted(ids, interaction_ids).astype(np.int64))


@dataclass(frozen=True)
class ExportedTowers:
    """What the serving graph needs from a feature build: the towers, and known rows to warm them with."""

    towers: dict[str, ServingTower]
    examples: dict[str, dict[str, np.ndarray]]  # side -> raw inputs of up to WARMUP_ROWS stored entities

    def signature_inputs(self, side: str) -> list[dict]:
        """The feature signature's inputs (name, kind, wire dtype) for `side`'s tower."""
        return self.towers[side].schema.inputs()


WARMUP_ROWS = 64


@dataclass(frozen=True)
class FeatureModel:
    """What the build serves: every entity's vector, and the towers that compute them."""

    users: Universe
    items: Universe
    user_vectors: np.ndarray
    item_vectors: np.ndarray
    exported: ExportedTowers
    quality: dict
    counts: dict


def fit(users: Universe, items: Universe, train_users: np.ndarray, train_items: np.ndarray, dataset, cfg: TrainConfig):
    """Fits both schemas on the training pairs and trains the feature towers; returns (trained, user schema, item schema)."""
    user_counts = np.bincount(train_users, minlength=len(users.ids))
    item_counts = np.bincount(train_items, minlength=len(items.ids))
    user_schema = feature_encoding.fit_schema(
        "user", "user_id", users.ids, user_counts, dataset.user_features, cfg.feature_min_count
    )
    item_schema = feature_encoding.fit_schema(
        "item",
        "item_id",
        items.ids,
        item_counts,
        dataset.item_features,
        cfg.feature_min_count,
        training.item_vocabulary_min_count(cfg.item_id_dropout_rows),
    )
    trained = training.train_features(
        train_users,
        train_items,
        user_schema.encode(users.ids, dataset.user_features),
        item_schema.encode(items.ids, dataset.item_features),
        user_schema,
        item_schema,
        cfg,
    )
    return trained, user_schema, item_schema


def train_and_evaluate(
    dataset, keep: np.ndarray, stamps: np.ndarray | None, opts: FeatureSettings, cfg: TrainConfig, log
) -> FeatureModel:
    """Trains feature towers, measures warm and cold-start quality, returns the exported towers and vectors."""
    inter = dataset.interactions
    users = Universe.build(inter.user_ids[keep], dataset.user_features)
    items = Universe.build(inter.item_ids[keep], dataset.item_features)
    n_items = len(items.ids)
    split = evaluation.cold_start_split(
        users.rows, items.rows, stamps, opts.holdout_per_user, opts.cold_users, opts.cold_items, cfg.seed
    )
    warm = split.warm
    log(f"features: users {_describe(dataset.user_features)}; items {_describe(dataset.item_features)}")
    log(
        f"cold start: {len(split.cold_users)} users and {len(split.cold_items)} items held out of training entirely; "
        f"train: {len(warm.train_users)} pairs, {len(warm.test_users)} warm pairs held out; {cfg}"
    )
    started = time.perf_counter()
    trained, user_schema, item_schema = fit(users, items, warm.train_users, warm.train_items, dataset, cfg)
    scored = {
        "features": evaluation.vector_score_rows(trained.user_vectors, trained.item_vectors),
        "most_popular": evaluation.popularity_score_rows(warm.train_items, n_items),
    }
    if opts.compare_id_only:
        log("id-only towers on the same split (comparison on warm users)")
        ids_only = training.train(warm.train_users, warm.train_items, len(users.ids), n_items, cfg)
        servable = np.bincount(warm.train_items, minlength=n_items) > 0  # the id-only index holds trained items only
        scored["id_only"] = evaluation.vector_score_rows(ids_only.user_vectors, ids_only.item_vectors, servable)
    quality = _quality(split, scored, n_items, _warm_seen(inter, users, items, split, opts))
    quality["excluded"] = opts.excluded
    # Which items were never trained on (tests look for them in new users' results).
    quality["cold_start"]["held_out_item_ids"] = items.ids[split.cold_items].tolist()
    for line in quality_table(quality):
        log(line)
    if opts.refit:
        log("refit: training the feature towers on all positives for the export")
        trained, user_schema, item_schema = fit(users, items, users.rows, items.rows, dataset, cfg)
    user_tower = ServingTower(user_schema, trained.user_weights, "user_tower")
    item_tower = ServingTower(item_schema, trained.item_weights, "item_tower")
    # Served vectors come from the exported towers themselves, so the id signature and the
    # feature signature agree exactly for a known id sent with its stored features.
    user_raw = user_schema.raw_inputs(users.ids, dataset.user_features)
    item_raw = item_schema.raw_inputs(items.ids, dataset.item_features)
    user_vectors, item_vectors = embed(user_tower, user_raw), embed(item_tower, item_raw)
    exported = ExportedTowers(
        {"user": user_tower, "item": item_tower},
        {
            "user": {k: v[:WARMUP_ROWS] for k, v in user_raw.items()},
            "item": {k: v[:WARMUP_ROWS] for k, v in item_raw.items()},
        },
    )
    quality.update(
        {
            "train_seconds": time.perf_counter() - started,
            "final_loss": trained.final_loss,
            "config": asdict(cfg),
            "refit": opts.refit,
            "towers": "features",
            "schema": {"user": user_schema.to_dict(), "item": item_schema.to_dict()},
        }
    )
    interacted = np.bincount(items.rows, minlength=n_items) > 0
    counts = {
        "catalogue_users": len(users.ids),
        "catalogue_items": n_items,
        "items_without_interactions": int((~interacted).sum()),
        "users_without_interactions": int((np.bincount(users.rows, minlength=len(users.ids)) == 0).sum()),
    }
    return FeatureModel(users, items, user_vectors, item_vectors, exported, quality, counts)


def _describe(table: FeatureTable | None) -> str:
    if table is None:
        return "id only"
    return f"{len(table)} rows, " + ", ".join(f"{c.name} ({c.kind})" for c in table.columns)


def _warm_seen(inter, users: Universe, items: Universe, split: evaluation.ColdStartSplit, opts: FeatureSettings):
    """What the quality table excludes for warm users (None: their training pairs)."""
    if opts.seen_rule == "training":
        return None
    if opts.seen_rule == "none":
        return {}
    user_rows, item_rows = history.rows_of(users.ids, inter.user_ids), history.rows_of(items.ids, inter.item_ids)
    # Held-out users are not warm; held-out items are the cold-item targets, not history.
    cold = np.isin(user_rows, split.cold_users) | np.isin(item_rows, split.cold_items)
    held_out = (split.warm.test_users, split.warm.test_items)
    return history.evaluation_seen(np.where(cold, -1, user_rows), item_rows, inter.timestamps, held_out, opts.seen_cap)


def _quality(split: evaluation.ColdStartSplit, scored: dict, n_items: int, seen: dict | None) -> dict:
    warm = {name: evaluation.split_metrics(score, split.warm, n_items, 0, seen) for name, score in scored.items()}
    cold = {
        name: evaluation.cold_start_metrics(split, score, n_items, cold_users=name != "id_only", seen=seen)
        for name, score in scored.items()
    }
    return {
        # The served (feature) model and the baseline on warm users, under the keys id-only builds use.
        "two_tower": warm["features"],
        "most_popular": warm["most_popular"],
        "id_only": warm.get("id_only"),
        "cold_start": {
            "held_out_users": int(len(split.cold_users)),
            "held_out_items": int(len(split.cold_items)),
            "warm_users": warm,
            "cold_users": {name: c["cold_users"] for name, c in cold.items() if c["cold_users"] is not None},
            "cold_items": {name: c["cold_items"] for name, c in cold.items()},
        },
    }


def quality_table(quality: dict) -> list[str]:
    """The cold-start table as printed by the build and `make demo`."""
    cold = quality["cold_start"]
    lines = [
        f"quality (held out: {cold['held_out_users']} users and {cold['held_out_items']} items never trained on; "
        f"all items ranked, {quality.get('excluded', 'training items excluded')}):",
        f"  {'':38}{'features':>10}{'id-only':>10}{'popular':>10}",
    ]

    def row(label: str, part: dict, metric: str) -> None:
        cells = []
        for name in ("features", "id_only", "most_popular"):
            value = (part.get(name) or {}).get(metric)
            cells.append(f"{value:10.4f}" if value is not None else f"{'n/a':>10}")
        lines.append(f"  {label:38}" + "".join(cells))

    for k in evaluation.KS:
        row(f"warm users hit-rate@{k}", cold["warm_users"], f"hit_rate@{k}")
    for k in evaluation.KS:
        row(f"held-out users hit-rate@{k}", cold["cold_users"], f"hit_rate@{k}")
    for k in evaluation.KS:
        row(f"held-out items hit-rate@{k}", cold["cold_items"], f"hit_rate@{k}")
        row(f"held-out items reachable in a top-{k}", cold["cold_items"], f"coverage@{k}")
    lines.append("  n/a: id-only towers cannot embed a user they never saw (unknown id)")
    return lines
