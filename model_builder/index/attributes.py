"""Item attributes for per-request filters: token namespaces, numeric values, a crowding attribute.

Input format (`build --item-attributes FILE`): the item features format (README "Data format",
data/features.py), CSV or Parquet, one row per `item_id`:
- `multi` columns (tokens joined by `|`) and `categorical` columns become token namespaces
  named after the column (`genre:multi` -> tokens `genre=Comedy`, `genre=Drama`);
- `numeric` columns become numeric attributes (an empty cell: the item has no value, so it
  fails every bounded range on that attribute).
`--item-attributes dataset` takes the dataset's own item features (MovieLens 100K: namespace
`genre` from u.item's genre flags, numeric `year` from its release date).

Catalogue items without a row have no tokens and no numeric values; rows of ids outside the
catalogue are ignored. Everything is aligned to the candidate rows here, so the serving graph
only stores dense tensors (export/filters.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model_builder.data.features import FeatureTable
from model_builder.errors import ConfigError, DataError

# Attribute names for the built-in MovieLens features (the feature towers keep theirs).
MOVIELENS_NAMES = {"genres": "genre", "release_year": "year"}
# Request tokens are "namespace=token": a namespace cannot hold the separator.
SEPARATOR = "="
# Dense [N, T] membership: refuse catalogues where it would not fit comfortably in memory.
MAX_MEMBERSHIP_CELLS = 1 << 30


@dataclass(frozen=True)
class AttributeTables:
    """Item attributes aligned to the candidate rows.

    vocabulary: every "namespace=token", sorted; `membership[row, t]` says item `row` has token t.
    numeric_names / numeric: float32 [N, A], NaN = no value.
    crowding: the namespace results are crowded by (None: crowding unavailable); `crowd_group`
    int32 [N] is the item's first token in it (its index in `vocabulary`), or T + row for an
    item without one (a group of its own).
    """

    vocabulary: tuple[str, ...]
    membership: np.ndarray
    numeric_names: tuple[str, ...]
    numeric: np.ndarray
    crowding: str | None
    crowd_group: np.ndarray

    @property
    def namespaces(self) -> tuple[str, ...]:
        """Token namespaces, sorted."""
        return tuple(sorted({token.split(SEPARATOR, 1)[0] for token in self.vocabulary}))

    def to_info(self) -> dict:
        """build_info.json["serving"]["filters"]["attributes"]: what a request may name."""
        counts = self.membership.sum(axis=0).astype(int).tolist()
        return {
            "namespaces": {
                ns: {
                    t.split(SEPARATOR, 1)[1]: c for t, c in zip(self.vocabulary, counts) if t.startswith(ns + SEPARATOR)
                }
                for ns in self.namespaces
            },
            "numeric": list(self.numeric_names),
            "crowding": self.crowding,
        }


def from_feature_table(
    table: FeatureTable, candidate_ids: np.ndarray, crowding: str | None = None, renames: dict | None = None
) -> AttributeTables:
    """Token and numeric attributes of every candidate row from a features table."""
    renames = renames or {}
    aligned = table.align(_as_catalogue_ids(table.ids, candidate_ids, table.source))
    per_namespace: dict[str, list[tuple[str, ...]]] = {}
    numeric: dict[str, np.ndarray] = {}
    for column in aligned.columns:
        name = renames.get(column.name, column.name)
        if column.kind == "numeric":
            numeric[name] = column.values.astype(np.float32)
        elif column.kind == "multi":
            per_namespace[name] = [tuple(str(t) for t in v) for v in column.values.tolist()]
        else:
            per_namespace[name] = [(str(v),) if str(v) else () for v in column.values.tolist()]
    return _tables(per_namespace, numeric, len(candidate_ids), crowding, table.source)


def _as_catalogue_ids(ids: np.ndarray, candidate_ids: np.ndarray, source: str) -> np.ndarray:
    """The catalogue's ids, refusing a table whose ids can never match them (int vs text)."""
    if (ids.dtype == np.int64) != (candidate_ids.dtype == np.int64):
        kinds = ("integers", "strings") if ids.dtype == np.int64 else ("strings", "integers")
        raise DataError(f"{source}: item ids are {kinds[0]} but the catalogue's ids are {kinds[1]}")
    return candidate_ids


def _tables(
    per_namespace: dict[str, list[tuple[str, ...]]], numeric: dict[str, np.ndarray], n: int, crowding, source: str
) -> AttributeTables:
    for name in [*per_namespace, *numeric]:
        if SEPARATOR in name or not name:
            raise DataError(f"{source}: attribute name {name!r} must be non-empty without {SEPARATOR!r}")
    vocabulary = sorted({f"{ns}{SEPARATOR}{t}" for ns, rows in per_namespace.items() for r in rows for t in r if t})
    if n * max(len(vocabulary), 1) > MAX_MEMBERSHIP_CELLS:
        raise DataError(f"{source}: {len(vocabulary)} tokens x {n} items is too large for the dense membership table")
    position = {token: i for i, token in enumerate(vocabulary)}
    membership = np.zeros((n, len(vocabulary)), dtype=bool)
    first = np.full(n, -1, np.int64)
    for ns, rows in per_namespace.items():
        for row, tokens in enumerate(rows):
            for token in tokens:
                if token:
                    membership[row, position[f"{ns}{SEPARATOR}{token}"]] = True
            if ns == crowding and tokens and tokens[0]:
                first[row] = position[f"{ns}{SEPARATOR}{tokens[0]}"]
    if crowding is not None and crowding not in per_namespace:
        known = ", ".join(sorted(per_namespace)) or "none"
        raise ConfigError(
            f"--crowding-attribute {crowding!r} is not a token namespace of the item attributes ({known})"
        )
    names = tuple(sorted(numeric))
    values = np.stack([numeric[a] for a in names], axis=1) if names else np.zeros((n, 0), np.float32)
    group = np.where(first >= 0, first, len(vocabulary) + np.arange(n)).astype(np.int32)
    return AttributeTables(tuple(vocabulary), membership, names, values.astype(np.float32), crowding, group)


def brute_force_filter(
    tables: AttributeTables,
    allow: dict[str, list[str]] | None = None,
    deny: dict[str, list[str]] | None = None,
    where: dict[str, tuple[float, float]] | None = None,
) -> np.ndarray:
    """bool [N]: the reference semantics of a request's filters, in numpy (tests, recall)."""
    n = tables.membership.shape[0]
    keep = np.ones(n, dtype=bool)
    column = {token: i for i, token in enumerate(tables.vocabulary)}
    for ns, tokens in (allow or {}).items():
        hits = np.zeros(n, dtype=bool)
        for t in tokens:
            if f"{ns}{SEPARATOR}{t}" in column:
                hits |= tables.membership[:, column[f"{ns}{SEPARATOR}{t}"]]
        keep &= hits
    for ns, tokens in (deny or {}).items():
        for t in tokens:
            if f"{ns}{SEPARATOR}{t}" in column:
                keep &= ~tables.membership[:, column[f"{ns}{SEPARATOR}{t}"]]
    for name, (lo, hi) in (where or {}).items():
        values = tables.numeric[:, tables.numeric_names.index(name)]
        if np.isfinite(lo) or np.isfinite(hi):
            keep &= (values >= lo) & (values <= hi)
    return keep
