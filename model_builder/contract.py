"""The serving contract in plain Python: names, padding and sizes that the config, the build and the graph share.

TF-free on purpose: `build_config`, the CLI and the tests read these without importing TensorFlow.
What each signature returns is documented once, in the top-level README ("Serving contract").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model_builder.errors import DataError

SERVING_SIGNATURE = "serving_default"
VECTOR_SIGNATURE = "search_by_vector"
EXAMPLES_SIGNATURE = "examples"
SIGNATURES = (SERVING_SIGNATURE, VECTOR_SIGNATURE, EXAMPLES_SIGNATURE)
# Models with feature towers also take the query's features (one [B] input per feature, see
# towers/served_tower.py): a user never seen in training is answered from them.
FEATURES_SIGNATURE = "search_by_features"
# Models built with --item-attributes: per-request filters and crowding (export/filters.py).
FILTERED_SIGNATURE = "search_filtered"
VECTOR_FILTERED_SIGNATURE = "search_by_vector_filtered"
SCHEMA_SIGNATURE = "filter_schema"
# Shards built with --query-side partitioned: a query id -> its stored vector (found = false when
# another shard holds the id), so a client can ask the other shards by vector (sharding.py).
QUERY_VECTORS_SIGNATURE = "query_vectors"
QUERY_SIDES = ("replicated", "partitioned")
IDS = "ids"
VECTORS = "vectors"
SCORES = "scores"
FOUND = "found"
INDEX = "index"
EXAMPLE_OUTPUTS = ("query_ids", "candidate_ids", "candidate_vectors", FOUND)
# The examples signature publishes at most this many known ids; a caller that does not know n
# asks for 0..MAX_EXAMPLES-1 and keeps the found rows.
MAX_EXAMPLES = 64
UNKNOWN_ID_POLICIES = ("error", "fallback")
# What a row that found nothing holds in `ids`. Unambiguous: the builder rejects candidate ids
# equal to these (check_not_padding).
STRING_PADDING = ""
INT64_PADDING = -1


@dataclass(frozen=True)
class Catalogue:
    """What gets served: query id -> query vector, and candidate id -> candidate vector.

    `query_vectors is None` means the queries are the candidates themselves
    (item -> similar items); the table is then stored once. A shard of an item -> similar items
    model (sharding.py) holds a part of the candidates but every item as a query: `self_rows`
    then gives each query row its candidate row in this shard (-1: the item lives in another
    shard), so the query item is still never its own result.
    """

    query_ids: np.ndarray
    query_vectors: np.ndarray | None
    candidate_ids: np.ndarray
    candidate_vectors: np.ndarray
    self_rows: np.ndarray | None = None

    @property
    def items_are_queries(self) -> bool:
        """True for item -> similar items models (whole or one shard)."""
        return self.query_vectors is None or self.self_rows is not None

    def vectors_of_queries(self) -> np.ndarray:
        """The query tower's output for every query id, row-aligned with `query_ids`."""
        return self.candidate_vectors if self.query_vectors is None else self.query_vectors


def neighbours_per_query(
    k: int, items_are_queries: bool, seen_width: int = 0, num_candidates: int | None = None
) -> int:
    """How many neighbours the index returns for k results: k + 1 when items are the queries,
    because the query item itself (nearly always its own nearest neighbour) is dropped; k + the
    history table's width when a user's history is excluded (every row fetches that many, at
    most the catalogue). The serving graph fetches exactly this; the index search tunes for it."""
    if items_are_queries:
        return k + 1
    if seen_width:
        return min(k + seen_width, num_candidates) if num_candidates else k + seen_width
    return k


def recall_goal_with_query_item(k: int, target: float, items_are_queries: bool) -> float:
    """The recall@neighbours_per_query() that means `target` on the k results a client sees.

    With items as queries the index search counts the query item among its k + 1 (nearly always
    found; a tree may miss it), the gate scores the k others: at k=10, 0.95 of the others is
    (1 + 9.5) / 11 = 0.9545 with the item.
    """
    return (1 + k * target) / (k + 1) if items_are_queries else target


def padding_id(ids: np.ndarray):
    """The id a not-found row holds for this id column's dtype ("" or -1)."""
    return INT64_PADDING if ids.dtype == np.int64 else STRING_PADDING


def check_not_padding(ids: np.ndarray, source: str) -> None:
    """Rejects candidate ids a client could not tell from padding ("" or a negative int64)."""
    if ids.dtype == np.int64:
        bad = ids[ids < 0]
        if len(bad):
            raise DataError(
                f"{source}: candidate id {int(bad[0])} is negative; negative ids are reserved "
                f"(a row that found nothing holds {INT64_PADDING}): renumber the items from 0"
            )
        return
    if any(str(i) == STRING_PADDING for i in ids.tolist()):
        raise DataError(
            f"{source}: a candidate id is the empty string, which is reserved "
            '(a row that found nothing holds ""): give every item a non-empty id'
        )
