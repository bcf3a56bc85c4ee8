"""Two-tower (dual encoder) training with in-batch sampled softmax, in Keras 3.

Each tower maps an id to an L2-normalized embedding (id embedding -> dense
layers). Ids reach the towers as row numbers of a vocabulary built here, so the
serving graph never needs Keras: after training, each tower is evaluated on its
whole vocabulary and the resulting tables are what gets exported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402  (after the log-level default)
import tensorflow as tf  # noqa: E402

from model_builder.errors import ConfigError  # noqa: E402


@dataclass(frozen=True)
class TrainConfig:
    """How the towers are trained. Each knob says what it trades."""

    embedding_dim: int = field(default=32, metadata={"help": "output size of both towers; the index and every request scale with it"})
    hidden_units: str = field(default="64", metadata={"help": "comma-separated dense layer sizes after the id embedding; more capacity, slower training"})
    epochs: int = field(default=20, metadata={"help": "passes over the positive interactions"})
    batch_size: int = field(default=256, metadata={"help": "also the number of in-batch negatives per positive; larger = harder negatives, fewer steps"})
    learning_rate: float = field(default=0.003, metadata={"help": "Adam learning rate"})
    temperature: float = field(default=0.1, metadata={"help": "softmax temperature on cosine scores; lower sharpens, too low is unstable"})
    seed: int = field(default=0, metadata={"help": "seed for initialization and shuffling (reproducible builds)"})

    def layer_sizes(self) -> list[int]:
        """Parses `hidden_units` ("64,32" -> [64, 32])."""
        try:
            sizes = [int(s) for s in self.hidden_units.split(",") if s.strip()]
        except ValueError:
            raise ConfigError(f"--hidden-units '{self.hidden_units}': expected comma-separated integers such as 64,32") from None
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


def _tower(name: str, vocab_size: int, cfg: TrainConfig) -> keras.Sequential:
    layers: list[keras.layers.Layer] = [keras.layers.Embedding(vocab_size, max(cfg.layer_sizes()[:1] or [cfg.embedding_dim]))]
    for units in cfg.layer_sizes():
        layers.append(keras.layers.Dense(units, activation="relu"))
    layers.append(keras.layers.Dense(cfg.embedding_dim))
    # Unit vectors: dot product = cosine, so an item is always its own nearest neighbour.
    layers.append(keras.layers.UnitNormalization())
    return keras.Sequential(layers, name=name)


class TwoTower(keras.Model):
    """Scores every user of a batch against every item of the batch (in-batch negatives)."""

    def __init__(self, num_users: int, num_items: int, cfg: TrainConfig, item_log_q: np.ndarray) -> None:
        super().__init__()
        self.user_tower = _tower("user_tower", num_users, cfg)
        self.item_tower = _tower("item_tower", num_items, cfg)
        self.inv_temperature = 1.0 / cfg.temperature
        self.item_log_q = keras.ops.convert_to_tensor(item_log_q.astype(np.float32))

    def call(self, inputs):  # noqa: D102 (Keras contract)
        users, items = inputs
        logits = keras.ops.matmul(self.user_tower(users), keras.ops.transpose(self.item_tower(items)))
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


def train(users: np.ndarray, items: np.ndarray, num_users: int, num_items: int,
          cfg: TrainConfig, verbose: int = 2) -> TrainedTowers:
    """Trains on positive (user row, item row) pairs; returns the embedding tables."""
    cfg.validate()
    if len(users) < 2:
        raise ConfigError("need at least 2 positive interactions to train; lower --min-weight or add data")
    keras.utils.set_random_seed(cfg.seed)
    batch = min(cfg.batch_size, len(users))
    data = (
        tf.data.Dataset.from_tensor_slices(((users.astype(np.int32), items.astype(np.int32)), np.zeros(len(users), np.float32)))
        .shuffle(len(users), seed=cfg.seed, reshuffle_each_iteration=True)
        .batch(batch, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )
    counts = np.bincount(items, minlength=num_items).astype(np.float64) + 1.0
    model = TwoTower(num_users, num_items, cfg, np.log(counts / counts.sum()))
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss=_InBatchSoftmax())
    history = model.fit(data, epochs=cfg.epochs, verbose=verbose, shuffle=False)  # tf.data shuffles
    user_vectors = model.user_tower.predict(np.arange(num_users, dtype=np.int32), batch_size=8192, verbose=0)
    item_vectors = model.item_tower.predict(np.arange(num_items, dtype=np.int32), batch_size=8192, verbose=0)
    return TrainedTowers(
        user_vectors=np.asarray(user_vectors, np.float32),
        item_vectors=np.asarray(item_vectors, np.float32),
        final_loss=float(history.history["loss"][-1]),
    )
