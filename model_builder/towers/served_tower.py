"""A trained feature tower rebuilt in plain TensorFlow, for the serving graph.

Keras 3 layers called inside a serving tf.function create their variable
handles inside the function body; TF 2.11's SavedModel loader (the one TF
Serving 2.11 runs) does not restore those, and every call fails with "Could
not find variable ..." (tests/model/test_feature_towers.py runs this graph through TF 2.11's
C-API loader; a Keras tower inside the function fails there). So the exported
tower holds only what that loader restores: `tf.Variable`s created in
`__init__` (weights copied from the Keras tower) and `tf.lookup.StaticHashTable`s
with a default value (vocabularies, unknown -> row 0). The math is the Keras
tower's (keras_feature_tower.py), op for op; tests hold both to 1e-6 and run this
graph through TF 2.11's C-API loader.

Every input is a [B] tensor: ids (the model's id dtype), categorical strings,
float32 numbers (NaN = missing), multi-valued strings joined by "|". Nothing in
here raises on a row's content (unknown values, empty strings, NaN, bad UTF-8
all map to the unknown/missing rows), so a merged batch never fails because
of one request.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from model_builder.towers.feature_encoding import MULTI_SEPARATOR, Encoder, TowerSchema
from model_builder.variable_reads import gather_rows

_DTYPES = {"string": tf.string, "int64": tf.int64, "float32": tf.float32}


def _table(keys: list, key_dtype: tf.DType) -> tf.lookup.StaticHashTable:
    """Vocabulary -> 1..n; anything else -> 0 (the unknown/missing row)."""
    values = list(range(1, len(keys) + 1))
    if not keys:  # a table needs a key: a sentinel that maps to the unknown row anyway
        keys, values = ([-1] if key_dtype == tf.int64 else [""]), [0]
    initializer = tf.lookup.KeyValueTensorInitializer(tf.constant(keys, key_dtype), tf.constant(values, tf.int64))
    return tf.lookup.StaticHashTable(initializer, default_value=0)


class ServingTower(tf.Module):
    """Raw features -> unit vectors, the same as the trained Keras tower."""

    def __init__(self, schema: TowerSchema, weights: dict[str, np.ndarray], name: str) -> None:
        super().__init__(name=name)
        self._schema = schema
        self.tables = []
        self.embeddings = []
        for encoder in schema.encoders:
            key_dtype = tf.int64 if encoder.kind == "id" and schema.id_dtype == "int64" else tf.string
            keys = list(encoder.vocab) if key_dtype == tf.int64 else [str(v) for v in encoder.vocab]
            self.tables.append(None if encoder.kind == "numeric" else _table(keys, key_dtype))
            self.embeddings.append(
                tf.Variable(weights[f"embed/{encoder.name}"], trainable=False, name=f"{name}_embed_{encoder.name}")
            )
        layers = sorted(
            {k.split("/")[0] for k in weights if k.startswith("dense_")}, key=lambda n: int(n.split("_")[1])
        )
        self.kernels = [
            tf.Variable(weights[f"{n}/kernel"], trainable=False, name=f"{name}_{n}_kernel") for n in layers + ["output"]
        ]
        self.biases = [
            tf.Variable(weights[f"{n}/bias"], trainable=False, name=f"{name}_{n}_bias") for n in layers + ["output"]
        ]

    @property
    def schema(self) -> TowerSchema:
        """The encoders this tower was built from."""
        return self._schema

    def input_specs(self) -> dict[str, tf.TensorSpec]:
        """One [B] TensorSpec per input, named like the input (the serving signature's inputs)."""
        return {i["name"]: tf.TensorSpec([None], _DTYPES[i["dtype"]], name=i["name"]) for i in self._schema.inputs()}

    def __call__(self, features: dict[str, tf.Tensor]) -> tf.Tensor:
        """[B] inputs by name -> [B, D] float32 unit vectors."""
        batch = tf.shape(features[self._schema.id_name])[0]
        parts = []
        for encoder, table, embedding in zip(self._schema.encoders, self.tables, self.embeddings):
            value = features[encoder.name]
            if encoder.kind == "numeric":
                standardized, bucket = _numeric(encoder, value)
                parts += [standardized[:, None], gather_rows(embedding, bucket)]
            elif encoder.kind == "multi":
                parts.append(_mean_of_known_tokens(table, embedding, value, batch))
            else:
                if encoder.kind == "categorical":
                    value = _clean(value)
                    if encoder.prefix:
                        value = tf.strings.substr(value, 0, encoder.prefix, unit="UTF8_CHAR")
                parts.append(gather_rows(embedding, table.lookup(value)))
        x = tf.concat(parts, axis=-1)
        for kernel, bias in zip(self.kernels[:-1], self.biases[:-1]):
            x = tf.nn.relu(tf.matmul(x, kernel) + bias)
        x = tf.matmul(x, self.kernels[-1]) + self.biases[-1]
        # keras.layers.UnitNormalization: x * min(rsqrt(sum x^2), 1/1e-12).
        return x * tf.minimum(tf.math.rsqrt(tf.reduce_sum(tf.square(x), axis=-1, keepdims=True)), 1e12)


def _clean(text: tf.Tensor) -> tf.Tensor:
    # Invalid UTF-8 would make the character-unit substr fail the whole merged batch:
    # replace bad bytes first (that row just looks up an unknown value).
    text = tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD)
    return tf.strings.strip(text)


def _numeric(encoder: Encoder, value: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    finite = tf.math.is_finite(value)
    safe = tf.where(finite, value, tf.zeros_like(value))
    standardized = (safe - tf.constant(encoder.mean, tf.float32)) / tf.constant(encoder.std, tf.float32)
    bounds = tf.constant(np.asarray(encoder.boundaries, np.float32).reshape(1, -1))
    bucket = tf.reduce_sum(tf.cast(safe[:, None] >= bounds, tf.int32), axis=1) + 1
    return tf.where(finite, standardized, tf.zeros_like(standardized)), tf.where(finite, bucket, tf.zeros_like(bucket))


def _mean_of_known_tokens(table, embedding: tf.Variable, value: tf.Tensor, batch: tf.Tensor) -> tf.Tensor:
    # The raw op, not tf.strings.split: its RaggedTensor path adds validation Asserts we do not want.
    indices, tokens, _ = tf.raw_ops.StringSplitV2(input=_clean(value), sep=MULTI_SEPARATOR)
    index = table.lookup(tf.strings.strip(tokens))
    known = tf.cast(index > 0, tf.float32)
    rows = indices[:, 0]
    total = tf.math.unsorted_segment_sum(gather_rows(embedding, index) * known[:, None], rows, batch)
    count = tf.math.unsorted_segment_sum(known, rows, batch)
    return total / tf.maximum(count, 1.0)[:, None]


class TowerModule(tf.Module):
    """The tower alone as a SavedModel (signature `tower`: features -> `vectors`), for tests and checks."""

    def __init__(self, tower: ServingTower) -> None:
        super().__init__(name="tower_module")
        self.tower = tower
        self.embed = tf.function(
            lambda features: {"vectors": self.tower(features)}, input_signature=[tower.input_specs()]
        )

    def save(self, path: Path) -> None:
        """Writes the SavedModel with its one signature."""
        tf.saved_model.save(self, str(path), signatures={"tower": self.embed.get_concrete_function()})


def embed(tower: ServingTower, raw: dict[str, np.ndarray], batch_size: int = 4096) -> np.ndarray:
    """Runs the tower eagerly over raw numpy inputs (build time: stored users/items)."""
    names = list(raw)
    count = len(raw[names[0]])
    out = []
    for start in range(0, count, batch_size):
        chunk = {n: tf.constant(raw[n][start : start + batch_size], dtype=_DTYPES[_dtype_of(tower, n)]) for n in names}
        out.append(tower(chunk).numpy())
    return np.concatenate(out) if out else np.zeros((0, tower.kernels[-1].shape[1]), np.float32)


def _dtype_of(tower: ServingTower, name: str) -> str:
    return next(i["dtype"] for i in tower.schema.inputs() if i["name"] == name)
