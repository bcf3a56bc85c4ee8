"""Feature encoding shared by training (numpy -> Keras) and the exported tower (TF graph).

Each tower input is encoded into integers (and, for numbers, a standardized
value) by an `Encoder` fitted on the entities that have training interactions:

  id           id -> 1..n for ids with training interactions; anything else -> 0,
               the out-of-vocabulary row (learnt through id dropout), so a new
               user or item is embedded from its other features
  categorical  token (first `prefix` characters) -> 1..n when seen on at least
               `min_count` training entities; unknown or missing -> 0
  numeric      finite value -> (value - mean) / std and a quantile bucket 1..b+1;
               missing or non-finite -> value 0, bucket 0
  multi        tokens -> their indices; unknown tokens are dropped; the tower
               averages the embeddings of the known ones (none known -> zeros)

`served_tower.py` computes the same thing in the serving graph from raw
values (strings, float32, "|"-joined tokens); a test holds them equal.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np

from model_builder.data.features import MULTI_SEPARATOR, FeatureTable, split_tokens

OOV = 0
KINDS = ("id", "categorical", "numeric", "multi")
VALUE_SUFFIX = "#value"  # Keras input holding a numeric feature's standardized value


@dataclass(frozen=True)
class Encoder:
    """How one raw input becomes Keras inputs; JSON-serializable (build_info.json)."""

    name: str
    kind: str
    vocab: tuple = ()
    prefix: int | None = None
    boundaries: tuple[float, ...] = ()
    mean: float = 0.0
    std: float = 1.0

    @property
    def table_size(self) -> int:
        """Rows of this input's embedding table (index 0 = unknown/missing/padding)."""
        return len(self.boundaries) + 2 if self.kind == "numeric" else len(self.vocab) + 1

    def keys(self) -> list[str]:
        """Keras input names this encoder produces."""
        return [self.name, self.name + VALUE_SUFFIX] if self.kind == "numeric" else [self.name]

    def encode(self, values: np.ndarray) -> dict[str, np.ndarray]:
        """Raw values (see FeatureColumn) -> Keras inputs."""
        if self.kind == "numeric":
            return self._encode_numeric(values)
        index = {v: i + 1 for i, v in enumerate(self.vocab)}
        if self.kind == "multi":
            rows = [[index[t] for t in tokens if t in index] for tokens in values.tolist()]
            width = max([len(r) for r in rows] + [1])
            out = np.zeros((len(rows), width), np.int32)
            for i, r in enumerate(rows):
                out[i, : len(r)] = r
            return {self.name: out}
        if self.kind == "categorical":
            values = [v[: self.prefix] if self.prefix else v for v in values.tolist()]
        else:
            values = values.tolist()
        return {self.name: np.asarray([index.get(v, OOV) for v in values], np.int32)}

    def _encode_numeric(self, values: np.ndarray) -> dict[str, np.ndarray]:
        # float32 throughout, in the order the graph computes it, so both give the same bits.
        x = np.asarray(values, np.float64).astype(np.float32)
        finite = np.isfinite(x)
        safe = np.where(finite, x, np.float32(0))
        standardized = (safe - np.float32(self.mean)) / np.float32(self.std)
        bounds = np.asarray(self.boundaries, np.float32)
        bucket = (safe[:, None] >= bounds[None, :]).sum(axis=1).astype(np.int32) + 1
        return {
            self.name: np.where(finite, bucket, 0).astype(np.int32),
            self.name + VALUE_SUFFIX: np.where(finite, standardized, np.float32(0)).astype(np.float32),
        }

    def raw(self, values: np.ndarray) -> np.ndarray:
        """Raw values as the serving signature takes them (str / float32 / "|"-joined str)."""
        if self.kind == "numeric":
            return np.asarray(values, np.float64).astype(np.float32)
        if self.kind == "multi":
            return np.asarray([MULTI_SEPARATOR.join(t) for t in values.tolist()], dtype=object)
        if self.kind == "id" and values.dtype == np.int64:
            return values
        return np.asarray([str(v) for v in values.tolist()], dtype=object)

    def to_dict(self) -> dict:
        """JSON-ready form; feature vocabularies are listed, the id vocabulary only counted."""
        out = asdict(self)
        out["vocab"] = [] if self.kind == "id" else list(self.vocab)
        out["vocab_size"] = len(self.vocab)
        out["boundaries"] = list(self.boundaries)
        return out


@dataclass(frozen=True)
class TowerSchema:
    """Every input of one tower, the id first."""

    side: str
    id_dtype: str  # "int64" or "string"
    encoders: tuple[Encoder, ...]

    @property
    def id_name(self) -> str:
        """The id input's name (`user_id` or `item_id`)."""
        return self.encoders[0].name

    def feature_names(self) -> list[str]:
        """Raw input names: the id, then the features in file order."""
        return [e.name for e in self.encoders]

    def raw_inputs(self, ids: np.ndarray, table: FeatureTable | None) -> dict[str, np.ndarray]:
        """Raw values for `ids` from the stored features (what a caller would send)."""
        values = self._values(ids, table)
        return {e.name: e.raw(values[e.name]) for e in self.encoders}

    def encode(self, ids: np.ndarray, table: FeatureTable | None) -> dict[str, np.ndarray]:
        """Keras inputs for `ids` from the stored features."""
        values = self._values(ids, table)
        out: dict[str, np.ndarray] = {}
        for encoder in self.encoders:
            out.update(encoder.encode(values[encoder.name]))
        return out

    def encode_raw(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Keras inputs from raw serving values (the numpy twin of the graph)."""
        out: dict[str, np.ndarray] = {}
        for e in self.encoders:
            values = raw[e.name]
            if e.kind == "multi":
                parsed = np.empty(len(values), dtype=object)
                parsed[:] = [split_tokens(_text(v)) for v in values.tolist()]
                values = parsed
            elif e.kind == "categorical":
                values = np.asarray([_text(v).strip() for v in values.tolist()], dtype=object)
            elif e.kind == "id" and values.dtype != np.int64:
                values = np.asarray([_text(v) for v in values.tolist()], dtype=object)
            out.update(e.encode(values))
        return out

    def _values(self, ids: np.ndarray, table: FeatureTable | None) -> dict[str, np.ndarray]:
        values = {self.id_name: ids}
        if table is not None and len(self.encoders) > 1:
            aligned = table.align(ids)
            values.update({c.name: c.values for c in aligned.columns})
        return values

    def to_dict(self) -> dict:
        """JSON-ready form: inputs with kind and wire dtype, and the fitted encoders."""
        return {
            "side": self.side,
            "id_dtype": self.id_dtype,
            "inputs": self.inputs(),
            "encoders": [e.to_dict() for e in self.encoders],
        }

    def inputs(self) -> list[dict]:
        """The serving signature's inputs: name, kind and wire dtype, in order."""
        dtypes = {"categorical": "string", "numeric": "float32", "multi": "string", "id": self.id_dtype}
        return [{"name": e.name, "kind": e.kind, "dtype": dtypes[e.kind]} for e in self.encoders]


def _text(value) -> str:
    # Bad UTF-8 becomes U+FFFD, as the graph's unicode_transcode(errors="replace") does.
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _vocab(counts: Counter, min_count: int) -> tuple:
    return tuple(sorted(v for v, n in counts.items() if n >= min_count and v != ""))


def fit_encoder(column, trained: np.ndarray, min_count: int) -> Encoder:
    """Fits one feature's encoder on the rows of entities with training interactions."""
    values = column.values[trained]
    if column.kind == "categorical":
        tokens = [v[: column.prefix] if column.prefix else v for v in values.tolist()]
        return Encoder(column.name, "categorical", _vocab(Counter(tokens), min_count), prefix=column.prefix)
    if column.kind == "multi":
        return Encoder(
            column.name, "multi", _vocab(Counter(t for tokens in values.tolist() for t in set(tokens)), min_count)
        )
    x = np.asarray(values, np.float64)
    x = x[np.isfinite(x)].astype(np.float32)
    if len(x) == 0:
        return Encoder(column.name, "numeric")
    qs = np.quantile(x, np.arange(1, column.buckets) / column.buckets) if column.buckets > 1 else []
    bounds = tuple(float(b) for b in np.unique(np.asarray(qs, np.float32)))
    std = float(np.float32(x.std())) or 1.0
    return Encoder(column.name, "numeric", boundaries=bounds, mean=float(np.float32(x.mean())), std=std)


def fit_schema(
    side: str,
    id_name: str,
    ids: np.ndarray,
    counts: np.ndarray,
    table: FeatureTable | None,
    min_count: int = 2,
    id_min_count: int = 1,
) -> TowerSchema:
    """A tower's encoders: `ids` are every entity, `counts` their training interactions.

    Ids with fewer than `id_min_count` interactions get no id row of their own: they train
    the unknown row, which so learns what a rarely seen (or new) entity looks like.
    """
    trained = counts > 0
    # Negative and empty ids never get an id row: clients send them (the serving padding values)
    # for a new user who has no id yet, and they must mean "unknown".
    usable = (ids >= 0) if ids.dtype == np.int64 else np.asarray([str(i) != "" for i in ids.tolist()], bool)
    id_encoder = Encoder(id_name, "id", tuple(ids[(counts >= id_min_count) & usable].tolist()))
    encoders = [id_encoder]
    if table is not None:
        aligned = table.align(ids)
        encoders += [fit_encoder(column, trained, min_count) for column in aligned.columns]
    return TowerSchema(side, "int64" if ids.dtype == np.int64 else "string", tuple(encoders))
