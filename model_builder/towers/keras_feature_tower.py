"""The Keras 3 feature tower used for training (never exported as Keras).

Inputs are encoded by features.py. The tower concatenates, in schema order:
the id embedding, each categorical embedding, for each numeric feature its
standardized value and its bucket embedding, and for each multi-valued feature
the mean embedding of its known tokens; then dense ReLU layers, a linear layer
to the output size, and L2 normalization. served_tower.py re-computes exactly
this with plain TF ops and the weights from `export_weights()`.
"""

from __future__ import annotations

import keras
import numpy as np

from model_builder.towers.feature_encoding import OOV, VALUE_SUFFIX, TowerSchema


class FeatureTower(keras.layers.Layer):
    """Entity row numbers -> unit vectors, from the entities' encoded features."""

    def __init__(self, schema: TowerSchema, inputs: dict[str, np.ndarray], cfg, id_dropout, **kwargs) -> None:
        super().__init__(**kwargs)
        self.schema = schema
        # Encoded features of every entity, kept as constants: a batch gathers its rows.
        self.table = {k: keras.ops.convert_to_tensor(v) for k, v in inputs.items()}
        # Per entity row: the chance a training row hides that entity's id (a number = the same for all).
        count = len(next(iter(inputs.values())))
        self.drop_probability = keras.ops.convert_to_tensor(
            np.broadcast_to(np.asarray(id_dropout, np.float32), (count,)).copy()
        )
        self.any_dropout = bool(np.any(np.asarray(id_dropout) > 0))
        self.seed_generator = keras.random.SeedGenerator(cfg.seed)
        id_dim = (cfg.layer_sizes()[:1] or [cfg.embedding_dim])[0]
        self.embeddings = [
            keras.layers.Embedding(e.table_size, id_dim if e.kind == "id" else cfg.feature_dim, name=f"embed_{e.name}")
            for e in schema.encoders
        ]
        self.hidden = [
            keras.layers.Dense(units, activation="relu", name=f"dense_{i}") for i, units in enumerate(cfg.layer_sizes())
        ]
        self.output_layer = keras.layers.Dense(cfg.embedding_dim, name="output")

    def call(self, rows, training=None):
        inputs = {k: keras.ops.take(v, rows, axis=0) for k, v in self.table.items()}
        if training and self.any_dropout:
            # Id dropout: the out-of-vocabulary row is what a new user/item gets at serving time;
            # without this it would never be trained and cold-start vectors would be noise.
            name = self.schema.id_name
            drop = keras.random.uniform(keras.ops.shape(rows), seed=self.seed_generator) < keras.ops.take(
                self.drop_probability, rows
            )
            inputs[name] = keras.ops.where(drop, keras.ops.zeros_like(inputs[name]) + OOV, inputs[name])
        return self.embed(inputs)

    def embed(self, inputs: dict) -> keras.KerasTensor:
        """Encoded inputs (features.py keys) -> unit vectors."""
        parts = []
        for encoder, embedding in zip(self.schema.encoders, self.embeddings):
            index = inputs[encoder.name]
            if encoder.kind == "multi":
                mask = keras.ops.cast(index > 0, "float32")[..., None]
                total = keras.ops.sum(embedding(index) * mask, axis=1)
                parts.append(total / keras.ops.maximum(keras.ops.sum(mask, axis=1), 1.0))
                continue
            if encoder.kind == "numeric":
                parts.append(keras.ops.expand_dims(keras.ops.cast(inputs[encoder.name + VALUE_SUFFIX], "float32"), -1))
            parts.append(embedding(index))
        x = keras.ops.concatenate(parts, axis=-1)
        for layer in self.hidden:
            x = layer(x)
        return _unit(self.output_layer(x))

    def export_weights(self) -> dict[str, np.ndarray]:
        """Every weight by role: `embed/<input>`, `dense_<i>/kernel|bias`, `output/kernel|bias`."""
        out = {
            f"embed/{e.name}": np.asarray(layer.embeddings.numpy(), np.float32)
            for e, layer in zip(self.schema.encoders, self.embeddings)
        }
        for name, layer in [(f"dense_{i}", h) for i, h in enumerate(self.hidden)] + [("output", self.output_layer)]:
            out[f"{name}/kernel"] = np.asarray(layer.kernel.numpy(), np.float32)
            out[f"{name}/bias"] = np.asarray(layer.bias.numpy(), np.float32)
        return out


def _unit(x):
    # keras.layers.UnitNormalization's formula (x * min(rsqrt(sum x^2), 1/eps)), written out so
    # served_tower.py can repeat it op for op.
    inv_norm = keras.ops.minimum(keras.ops.rsqrt(keras.ops.sum(keras.ops.square(x), axis=-1, keepdims=True)), 1e12)
    return x * inv_norm
