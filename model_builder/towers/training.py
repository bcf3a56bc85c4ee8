"""Two-tower (dual encoder) training with in-batch sampled softmax, in Keras 3.

Id-only towers map an id to an L2-normalized embedding (id embedding -> dense
layers). Feature towers (`FeatureTower`) embed the id *and* the user's or
item's side features, with id dropout so the out-of-vocabulary id row learns
to stand for "a user/item we know only from its features". Entities reach the
towers as row numbers; the serving graph never needs Keras: after training the
towers are evaluated on every entity, and feature towers are re-built in plain
TensorFlow by served_tower.py from `export_weights()`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras
import tensorflow as tf

from model_builder.errors import ConfigError


@dataclass(frozen=True)
class TrainConfig:
    """How the towers are trained. Each knob says what it trades."""

    embedding_dim: int = field(
        default=32, metadata={"help": "output size of both towers; the index and every request scale with it"}
    )
    hidden_units: str = field(
        default="64",
        metadata={"help": "comma-separated dense layer sizes after the id embedding; more capacity, slower training"},
    )
    epochs: int = field(default=20, metadata={"help": "passes over the positive interactions"})
    batch_size: int = field(
        default=256,
        metadata={"help": "also the number of in-batch negatives per positive; larger = harder negatives, fewer steps"},
    )
    learning_rate: float = field(default=0.003, metadata={"help": "Adam learning rate"})
    temperature: float = field(
        default=0.1, metadata={"help": "softmax temperature on cosine scores; lower sharpens, too low is unstable"}
    )
    logq_weight: float = field(
        default=1.5,
        metadata={
            "help": "weight of the logQ (item frequency) correction of in-batch negatives; 1 is the textbook value. Higher ranks popular items higher: on MovieLens 100K feature towers 1.5 vs 1 raised warm and new users' hit-rate@10 and cut how many new items reach a top-100 (model_builder/README.md)"
        },
    )
    seed: int = field(default=0, metadata={"help": "seed for initialization and shuffling (reproducible builds)"})
    feature_dim: int = field(
        default=16,
        metadata={"help": "embedding size of each side feature (feature towers); larger = more capacity per feature"},
    )
    item_id_dropout_rows: int = field(
        default=3,
        metadata={
            "help": "feature towers: training rows per item and epoch whose item id is hidden, so the unknown-item row learns what a typical item (and so a new one) looks like; items with no more interactions than this are served from their features. 3 with --id-dropout 0.25 (vs 5 and 0.2) lifted warm users to id-only level without costing new users, MovieLens 100K, 5 seeds (benchmarks/README.md)"
        },
    )
    feature_min_count: int = field(
        default=2,
        metadata={
            "help": "feature towers: a feature value seen on fewer training users/items maps to the unknown row (which so learns what rare values look like)"
        },
    )
    id_dropout: float = field(
        default=0.25,
        metadata={
            "help": "feature towers: share of training rows whose user id is replaced by the unknown id, so new users are embedded from their features; lower helps known users and costs new ones (0.1-0.15: new users below most-popular), 0.5 was worse for both on MovieLens 100K"
        },
    )

    def layer_sizes(self) -> list[int]:
        """Parses `hidden_units` ("64,32" -> [64, 32])."""
        try:
            sizes = [int(s) for s in self.hidden_units.split(",") if s.strip()]
        except ValueError:
            raise ConfigError(
                f"--hidden-units '{self.hidden_units}': expected comma-separated integers such as 64,32"
            ) from None
        if any(s <= 0 for s in sizes):
            raise ConfigError(f"--hidden-units '{self.hidden_units}': sizes must be positive")
        return sizes

    def validate(self) -> None:
        """Rejects values training cannot use, naming the flag."""
        self.layer_sizes()
        for name in ("embedding_dim", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
        if self.embedding_dim < 2:
            raise ConfigError("--embedding-dim must be at least 2")
        if not 0 < self.temperature <= 10:
            raise ConfigError("--temperature must be in (0, 10]")
        if min(self.feature_dim, self.feature_min_count) < 1 or self.item_id_dropout_rows < 0:
            raise ConfigError(
                "--feature-dim and --feature-min-count must be at least 1, --item-id-dropout-rows at least 0"
            )
        if not 0 <= self.logq_weight <= 5:
            raise ConfigError("--logq-weight must be in [0, 5]")
        if not 0 <= self.id_dropout < 1:
            raise ConfigError("--id-dropout must be in [0, 1)")


def _tower(name: str, vocab_size: int, cfg: TrainConfig) -> keras.Sequential:
    layers: list[keras.layers.Layer] = [
        keras.layers.Embedding(vocab_size, max(cfg.layer_sizes()[:1] or [cfg.embedding_dim]))
    ]
    for units in cfg.layer_sizes():
        layers.append(keras.layers.Dense(units, activation="relu"))
    layers.append(keras.layers.Dense(cfg.embedding_dim))
    # Unit vectors: dot product = cosine, so an item is always its own nearest neighbour.
    layers.append(keras.layers.UnitNormalization())
    return keras.Sequential(layers, name=name)


class TwoTower(keras.Model):
    """Scores every user of a batch against every item of the batch (in-batch negatives).

    Both towers take entity row numbers: id-only towers (`_tower`) or `FeatureTower`s.
    """

    def __init__(
        self, user_tower: keras.layers.Layer, item_tower: keras.layers.Layer, cfg: TrainConfig, item_log_q: np.ndarray
    ) -> None:
        super().__init__()
        self.user_tower = user_tower
        self.item_tower = item_tower
        self.inv_temperature = 1.0 / cfg.temperature
        self.item_log_q = keras.ops.convert_to_tensor(cfg.logq_weight * item_log_q.astype(np.float32))

    def call(self, inputs, training=None):
        users, items = inputs
        logits = keras.ops.matmul(
            self.user_tower(users, training=training), keras.ops.transpose(self.item_tower(items, training=training))
        )
        # logQ correction: in-batch negatives are drawn in proportion to item
        # frequency; subtracting log(frequency) makes the scores estimate the full
        # softmax, so serving the raw dot product does not under-rank popular items.
        logits = logits * self.inv_temperature - keras.ops.take(self.item_log_q, items)[None, :]
        # The same item twice in a batch is not a negative for the other row.
        same = keras.ops.equal(keras.ops.expand_dims(items, 1), keras.ops.expand_dims(items, 0))
        diagonal = keras.ops.eye(keras.ops.shape(items)[0], dtype="bool")
        return keras.ops.where(keras.ops.logical_and(same, ~diagonal), -1e9, logits)


class _InBatchSoftmax(keras.losses.Loss):
    def call(self, y_true, y_pred):
        del y_true  # the positive of row i is column i
        labels = keras.ops.arange(keras.ops.shape(y_pred)[0])
        return keras.losses.sparse_categorical_crossentropy(labels, y_pred, from_logits=True)


@dataclass(frozen=True)
class TrainedTowers:
    """Both towers evaluated on their whole vocabularies (row i = id i)."""

    user_vectors: np.ndarray
    item_vectors: np.ndarray
    final_loss: float


def _fit(
    make_towers, users: np.ndarray, items: np.ndarray, num_items: int, cfg: TrainConfig, verbose: int
) -> tuple[TwoTower, float]:
    """Trains a TwoTower over `make_towers()` on positive (user row, item row) pairs."""
    cfg.validate()
    if len(users) < 2:
        raise ConfigError("need at least 2 positive interactions to train; lower --min-weight or add data")
    keras.utils.set_random_seed(cfg.seed)
    batch = min(cfg.batch_size, len(users))
    data = (
        tf.data.Dataset.from_tensor_slices(
            ((users.astype(np.int32), items.astype(np.int32)), np.zeros(len(users), np.float32))
        )
        .shuffle(len(users), seed=cfg.seed, reshuffle_each_iteration=True)
        .batch(batch, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )
    counts = np.bincount(items, minlength=num_items).astype(np.float64) + 1.0
    model = TwoTower(*make_towers(), cfg, np.log(counts / counts.sum()))
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss=_InBatchSoftmax())
    history = model.fit(data, epochs=cfg.epochs, verbose=verbose, shuffle=False)  # tf.data shuffles
    return model, float(history.history["loss"][-1])


def _embed_all(tower: keras.layers.Layer, count: int) -> np.ndarray:
    rows = np.arange(count, dtype=np.int32)
    return np.concatenate(
        [np.asarray(tower(rows[s : s + 8192], training=False), np.float32) for s in range(0, max(count, 1), 8192)]
    )[:count]


def train(
    users: np.ndarray, items: np.ndarray, num_users: int, num_items: int, cfg: TrainConfig, verbose: int = 2
) -> TrainedTowers:
    """Trains id-only towers on positive (user row, item row) pairs; returns the embedding tables."""
    model, loss = _fit(
        lambda: (_tower("user_tower", num_users, cfg), _tower("item_tower", num_items, cfg)),
        users,
        items,
        num_items,
        cfg,
        verbose,
    )
    return TrainedTowers(_embed_all(model.user_tower, num_users), _embed_all(model.item_tower, num_items), loss)


@dataclass(frozen=True)
class TrainedFeatureTowers:
    """Feature towers evaluated on every entity (row i = entity i), plus their weights for export."""

    user_vectors: np.ndarray
    item_vectors: np.ndarray
    final_loss: float
    user_weights: dict[str, np.ndarray]
    item_weights: dict[str, np.ndarray]
    keras_towers: tuple  # (user, item) FeatureTower layers: tests compare the exported towers with them


def train_features(
    users: np.ndarray,
    items: np.ndarray,
    user_inputs: dict[str, np.ndarray],
    item_inputs: dict[str, np.ndarray],
    user_schema,
    item_schema,
    cfg: TrainConfig,
    verbose: int = 2,
) -> TrainedFeatureTowers:
    """Trains feature towers; `*_inputs` are the encoded features of every entity row (features.py)."""
    from model_builder.towers.keras_feature_tower import FeatureTower

    num_users, num_items = _rows(user_inputs), _rows(item_inputs)
    item_drop = item_id_dropout(np.bincount(items, minlength=num_items), cfg.item_id_dropout_rows)
    model, loss = _fit(
        lambda: (
            FeatureTower(user_schema, user_inputs, cfg, cfg.id_dropout, name="user_tower"),
            FeatureTower(item_schema, item_inputs, cfg, item_drop, name="item_tower"),
        ),
        users,
        items,
        num_items,
        cfg,
        verbose,
    )
    return TrainedFeatureTowers(
        _embed_all(model.user_tower, num_users),
        _embed_all(model.item_tower, num_items),
        loss,
        model.user_tower.export_weights(),
        model.item_tower.export_weights(),
        (model.user_tower, model.item_tower),
    )


def item_id_dropout(counts: np.ndarray, rows: int) -> np.ndarray:
    """Per item, the chance a training row hides its id: about `rows` hidden rows per item and epoch.

    Users drop ids uniformly (a new user is like a typical user). Items must not: uniform dropout
    teaches the unknown-item row the popularity of a typical *interaction*, i.e. of a hit, and
    every new item then topped every new user's list (measured on MovieLens 100K). Hiding about
    the same number of rows of every item makes the unknown row a typical *catalogue* item. Items
    with `rows` interactions or fewer are always hidden; item_vocabulary_min_count() keeps them
    out of the vocabulary, so they are served from their features like new items.
    """
    return (
        np.minimum(1.0, rows / np.maximum(counts, 1)).astype(np.float32)
        if rows > 0
        else np.zeros(len(counts), np.float32)
    )


def item_vocabulary_min_count(rows: int) -> int:
    """Training interactions an item needs for an id row of its own (see item_id_dropout)."""
    return rows + 1


def _rows(inputs: dict[str, np.ndarray]) -> int:
    return len(next(iter(inputs.values())))
