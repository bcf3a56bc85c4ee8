"""The serving graph: a plain tf.Module whose signatures TF Serving runs.

No Keras in here: the query tower is exported as its materialized output table
for `serving_default` (ids only, so each id's tower output is fixed at build
time) and, for feature models, also as the tower itself (plain variables and
hash tables, towers/served_tower.py) behind `search_by_features`; the candidates as a ScaNN searcher serialized with
`serialize_to_module()` and rebuilt from those variables inside the functions by
one shared searcher resource (`_searcher_handle`: built once per load, on the
first search of any signature, then reused by all of them).

Batching-safe by construction (docs: the "Serving contract" in README.md).
TF Serving with --enable_batching concatenates the rows of concurrent requests
into one Session::Run and gives every merged request the same status
(tensorflow_serving/batching/batching_session.cc, ProcessBatch). So:
- every signature takes a batch-dimension input (a Run without inputs fails:
  "Batching Run() must have at least one input tensor", batching_util.h) and
  returns one output row per input row;
- nothing here raises an error that depends on one row's content: a row that
  cannot be answered (unknown id, NaN/Inf in a vector, example index out of
  range) gets `found = false` and padding, the other rows are answered as if
  they were alone;
- no batch-size check: under batching the graph only sees execution batches;
  TF Serving's batcher enforces max_batch_size itself.
The only errors left are about a request's *shape* (EnsureShape), which TF
Serving's batcher cannot merge across requests anyway.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from model_builder.contract import (
    EXAMPLES_SIGNATURE,
    FEATURES_SIGNATURE,
    FOUND,
    IDS,
    INDEX,
    MAX_EXAMPLES,
    QUERY_VECTORS_SIGNATURE,
    SCORES,
    SERVING_SIGNATURE,
    UNKNOWN_ID_POLICIES,
    VECTOR_SIGNATURE,
    VECTORS,
    Catalogue,
    padding_id,
)
from model_builder.export.filtered_signatures import FilteredSignatures
from model_builder.export.filters import (
    FILTERED_SIGNATURE,
    SCHEMA_SIGNATURE,
    VECTOR_FILTERED_SIGNATURE,
    FilterOptions,
    FilterTables,
)
from model_builder.export.row_table import row_table
from model_builder.index.attributes import AttributeTables
from model_builder.index.config import ResolvedIndex
from model_builder.towers.history import SEEN_PADDING
from model_builder.variable_reads import gather_rows


@dataclass(frozen=True)
class ServingOptions:
    """Build-time serving behaviour, fixed per version."""

    k: int
    max_batch_size: int = 1024
    num_examples: int = 8
    # Search-time overrides of the index config (set by auto-tuning); None = index default.
    leaves_to_search: int | None = None
    pre_reorder_num_neighbors: int | None = None
    # "error": an unknown id's row holds padding; "fallback": it holds `fallback_ids` (k candidate
    # ids chosen at build time, e.g. the most popular items). Either way found = false.
    unknown_ids: str = "error"
    fallback_ids: np.ndarray | None = None
    # User -> items with exclusions: [num_query_ids, width] int32, each query row's history as
    # candidate rows, ascending, padded with SEEN_PADDING (towers/history.py). serving_default (and
    # search_by_features for a known id) fetches k + width candidates and drops these.
    seen: np.ndarray | None = None
    # Item attributes (index/attributes.py): adds search_filtered, search_by_vector_filtered and
    # filter_schema (export/filters.py); None = no filtered signatures.
    attributes: AttributeTables | None = None
    filters: FilterOptions = FilterOptions()
    # A shard of a --query-side partitioned build: adds query_vectors (id -> stored vector), the
    # first step of a search by id that the other shards answer by vector (sharding.py).
    query_vectors_signature: bool = False


def tf_dtype(ids: np.ndarray) -> tf.DType:
    """int64 ids stay int64 on the wire; everything else is served as strings."""
    return tf.int64 if ids.dtype == np.int64 else tf.string


def _id_tensor(ids: np.ndarray) -> tf.Tensor:
    if ids.dtype == np.int64:
        return tf.constant(ids, tf.int64)
    return tf.constant([str(i) for i in ids.tolist()], tf.string)


def _with_padding_row(values: np.ndarray, pad) -> np.ndarray:
    """values plus one trailing padding row: row n answers every out-of-range example index."""
    if values.dtype == np.int64:
        return np.concatenate([values, np.full((1, *values.shape[1:]), pad, values.dtype)])
    if values.dtype.kind == "f":
        return np.concatenate([values, np.zeros((1, *values.shape[1:]), values.dtype)])
    return np.asarray([str(i) for i in values.tolist()] + [pad], dtype=object)


class RetrievalModule(FilteredSignatures, tf.Module):
    """Query id(s) or vectors -> top-k candidate ids, scores (descending) and a per-row `found`."""

    def __init__(
        self,
        catalogue: Catalogue,
        index: ResolvedIndex,
        searcher,
        options: ServingOptions,
        query_tower: tf.Module | None = None,
    ) -> None:
        super().__init__(name="retrieval")
        if options.unknown_ids not in UNKNOWN_ID_POLICIES:
            raise ValueError(f"unknown_ids must be one of {UNKNOWN_ID_POLICIES}, got {options.unknown_ids!r}")
        self._k = options.k
        self._dim = int(catalogue.candidate_vectors.shape[1])
        self._options = options
        self._exclude_query = catalogue.items_are_queries
        self._num_candidates = len(catalogue.candidate_ids)
        self._negate = index.distance == "squared_l2"
        self._index = index
        self.candidate_ids = tf.Variable(_id_tensor(catalogue.candidate_ids), trainable=False, name="candidate_ids")
        self.scann = searcher.serialize_to_module() if searcher is not None else None
        # One name per export, so every signature's TensorsToScann op finds the same searcher (below).
        self._searcher_name = f"scann-{uuid.uuid4()}"
        if self.scann is not None and np.array_equal(self.scann.dataset.numpy(), catalogue.candidate_vectors):
            # ScaNN keeps the float vectors for exact re-scoring: reuse them instead of a second copy
            # (at 1M x 64 that is 256 MB less on disk and in the serving process).
            self.candidate_vectors = self.scann.dataset
        else:
            self.candidate_vectors = tf.Variable(catalogue.candidate_vectors, trainable=False, name="candidate_vectors")
        if catalogue.query_vectors is None:
            self.query_vectors = self.candidate_vectors
        else:
            self.query_vectors = tf.Variable(catalogue.query_vectors, trainable=False, name="query_vectors")
        query_keys = _id_tensor(catalogue.query_ids)
        if catalogue.query_vectors is None:
            self.query_ids = self.candidate_ids
        else:
            self.query_ids = tf.Variable(query_keys, trainable=False, name="query_ids")
        # A shard of an item -> similar items model: query row -> its candidate row here (-1: elsewhere).
        self._has_self_rows = catalogue.self_rows is not None
        if self._has_self_rows:
            self.self_rows = tf.Variable(catalogue.self_rows.astype(np.int32), trainable=False, name="self_rows")
        # From the ids variable, not a constant copy of them in saved_model.pb (row_table.py).
        self.query_table = row_table(self.query_ids)
        self._seen_width = self._seen_table(catalogue, options.seen)
        self._padding_ids = np.full(options.k, padding_id(catalogue.candidate_ids), dtype=catalogue.candidate_ids.dtype)
        self._not_found_ids = self._not_found_row(catalogue, options)
        self._examples = self._example_tables(catalogue, options)
        query_dtype = tf_dtype(catalogue.query_ids)
        self.search_ids = tf.function(self._search_ids, input_signature=[tf.TensorSpec([None], query_dtype, name=IDS)])
        self.search_vectors = tf.function(
            self._search_vectors, input_signature=[tf.TensorSpec([None, self._dim], tf.float32, name=VECTORS)]
        )
        self.examples = tf.function(self._examples_fn, input_signature=[tf.TensorSpec([None], tf.int64, name=INDEX)])
        self.query_vectors_signature = options.query_vectors_signature
        if self.query_vectors_signature:
            self.vectors_of_ids = tf.function(
                self._vectors_of_ids, input_signature=[tf.TensorSpec([None], query_dtype, name=IDS)]
            )
        # The query tower itself (served_tower.ServingTower: plain variables + hash tables, loads under
        # TF 2.11), run at request time. serving_default keeps the table above: a known id's row is
        # this tower's output on the id's stored features, computed at build time.
        self.query_tower = query_tower
        if query_tower is not None:
            self.search_features = tf.function(self._search_features, input_signature=[query_tower.input_specs()])
        self.filters = None
        if options.attributes is not None:
            self.filters = FilterTables(options.attributes, catalogue.candidate_ids, options.filters, self._k)
            id_spec = tf.TensorSpec([None], query_dtype, name=IDS)
            vector_spec = tf.TensorSpec([None, self._dim], tf.float32, name=VECTORS)
            specs = self.filters.input_specs
            self.search_ids_filtered = tf.function(self._search_ids_filtered, input_signature=specs(id_spec))
            self.search_vectors_filtered = tf.function(
                self._search_vectors_filtered, input_signature=specs(vector_spec)
            )
            index_spec = [tf.TensorSpec([None], tf.int64, name=INDEX)]
            self.filter_schema = tf.function(self.filters.schema, input_signature=index_spec)

    def signatures(self) -> dict:
        """The signature map for tf.saved_model.save."""
        out = {
            SERVING_SIGNATURE: self.search_ids.get_concrete_function(),
            VECTOR_SIGNATURE: self.search_vectors.get_concrete_function(),
            EXAMPLES_SIGNATURE: self.examples.get_concrete_function(),
        }
        if self.query_vectors_signature:
            out[QUERY_VECTORS_SIGNATURE] = self.vectors_of_ids.get_concrete_function()
        if self.query_tower is not None:
            out[FEATURES_SIGNATURE] = self.search_features.get_concrete_function()
        if self.filters is not None:
            out[FILTERED_SIGNATURE] = self.search_ids_filtered.get_concrete_function()
            out[VECTOR_FILTERED_SIGNATURE] = self.search_vectors_filtered.get_concrete_function()
            out[SCHEMA_SIGNATURE] = self.filter_schema.get_concrete_function()
        return out

    # -- build-time tables ----------------------------------------------------
    def _seen_table(self, catalogue: Catalogue, seen: np.ndarray | None) -> int:
        """Stores the history table plus one padding row (the row unknown ids read); returns its width."""
        if seen is None or catalogue.items_are_queries or seen.shape[1] == 0:
            return 0
        if seen.shape[0] != len(catalogue.query_ids):
            raise ValueError(f"seen has {seen.shape[0]} rows for {len(catalogue.query_ids)} query ids")
        padding = np.full((1, seen.shape[1]), SEEN_PADDING, np.int32)
        self.seen_items = tf.Variable(np.concatenate([seen.astype(np.int32), padding]), trainable=False, name="seen")
        return int(seen.shape[1])

    def _seen_of(self, rows):
        """[B, width] history rows of query rows (-1, unknown: the padding row); None without exclusions."""
        if not self._seen_width:
            return None
        unknown_row = tf.constant(self.seen_items.shape[0] - 1, rows.dtype)
        return gather_rows(self.seen_items, tf.where(rows >= 0, rows, unknown_row))

    def _not_found_row(self, catalogue: Catalogue, options: ServingOptions) -> np.ndarray:
        """The k ids an unknown query id's row holds: padding, or the build-time fallback list."""
        ids = catalogue.candidate_ids
        if options.unknown_ids == "fallback":
            fallback = np.asarray(options.fallback_ids if options.fallback_ids is not None else [])
            if len(fallback) != options.k:
                raise ValueError(f"fallback needs exactly k={options.k} ids, got {len(fallback)}")
            return fallback.astype(ids.dtype)
        return self._padding_ids

    @staticmethod
    def _example_tables(catalogue: Catalogue, options: ServingOptions) -> tuple:
        n = min(options.num_examples, MAX_EXAMPLES, len(catalogue.query_ids), len(catalogue.candidate_ids))
        return (
            n,
            _with_padding_row(catalogue.query_ids[:n], padding_id(catalogue.query_ids)),
            _with_padding_row(catalogue.candidate_ids[:n], padding_id(catalogue.candidate_ids)),
            _with_padding_row(catalogue.candidate_vectors[:n], 0.0),
        )

    # -- graph pieces ---------------------------------------------------------
    def _search_ids(self, ids):
        # A shape error is the only one left: it fails a merged batch only if every request in it
        # sent the wrong rank (TF Serving cannot merge tensors of different shapes anyway).
        ids = tf.ensure_shape(ids, [None])
        rows = self.query_table.lookup(ids)
        found = rows >= 0
        seen = self._seen_of(rows)
        # Unknown rows search with query row 0 and are masked afterwards: one batched search, no branch.
        rows = tf.maximum(rows, 0)
        queries = gather_rows(self.query_vectors, rows)
        return self._answer(
            queries,
            found,
            exclude_rows=self._own_rows(rows) if self._exclude_query else None,
            not_found_ids=self._not_found_ids,
            seen=seen,
        )

    def _vectors_of_ids(self, ids):
        # Per row, no error: an id this shard does not hold gets zeros and found = false (batching-safe).
        ids = tf.ensure_shape(ids, [None])
        rows = self.query_table.lookup(ids)
        found = rows >= 0
        vectors = gather_rows(self.query_vectors, tf.maximum(rows, 0))
        return {VECTORS: tf.where(found[:, None], vectors, 0.0), FOUND: found}

    def _search_vectors(self, vectors):
        vectors = tf.ensure_shape(vectors, [None, self._dim])
        found = tf.reduce_all(tf.math.is_finite(vectors), axis=1)
        # Non-finite rows search with a zero vector (their answer is masked): ScaNN never sees NaN.
        # A scalar fill, not zeros_like: one op fewer per call (benchmarks/overhead.py).
        vectors = tf.where(found[:, None], vectors, 0.0)
        # The unknown-id fallback does not apply: a non-finite vector is the caller's bug, not a new user.
        return self._answer(vectors, found, exclude_rows=None, not_found_ids=self._padding_ids)

    def _search_features(self, features):
        # Every row is answerable: unknown ids and values, missing or non-finite numbers and empty
        # token lists map to the tower's unknown rows (no row-dependent error under batching).
        features = {name: tf.ensure_shape(value, [None]) for name, value in features.items()}
        queries = self.query_tower(features)
        found = tf.ones_like(queries[:, 0], dtype=tf.bool)
        exclude = None
        known = self.query_table.lookup(features[self.query_tower.schema.id_name])
        if self._exclude_query:
            # item -> similar items: a known item is not its own result; -1 (unknown) matches no row.
            exclude = tf.where(known >= 0, self._own_rows(tf.maximum(known, 0)), tf.constant(-1, tf.int64))
        # A known user's history is excluded here too, so a known id sent with its stored features
        # gets serving_default's answer; a new user (unknown id) has none.
        return self._answer(
            queries, found, exclude_rows=exclude, not_found_ids=self._padding_ids, seen=self._seen_of(known)
        )

    def _own_rows(self, rows):
        """Candidate rows of query rows (item -> similar items): the same row, or via a shard's `self_rows`."""
        if not self._has_self_rows:
            return rows
        return tf.cast(gather_rows(self.self_rows, rows), rows.dtype)

    def _examples_fn(self, index):
        index = tf.ensure_shape(index, [None])
        n, query_ids, candidate_ids, candidate_vectors = self._examples
        found = tf.logical_and(index >= 0, index < n)
        rows = tf.where(found, index, tf.constant(n, tf.int64))
        return {
            "query_ids": tf.gather(query_ids, rows),
            "candidate_ids": tf.gather(candidate_ids, rows),
            "candidate_vectors": tf.gather(candidate_vectors, rows),
            FOUND: found,
        }

    def _answer(self, queries, found, exclude_rows, not_found_ids: np.ndarray, seen=None) -> dict:
        fetch = self._k + (1 if exclude_rows is not None else 0)
        if seen is not None:
            # Every row fetches the same count (the width of the table, not its own history's
            # length): a row's answer never depends on the rows merged with it.
            fetch = min(fetch + self._seen_width, self._num_candidates)
        rows, scores = self._full_width(*self._nearest(queries, fetch), fetch)
        excluded = None
        if exclude_rows is not None:
            # item -> similar items: drop the query item itself.
            excluded = tf.equal(rows, tf.cast(exclude_rows, rows.dtype)[:, None])
        if seen is not None:
            # The user's history: each row of `seen` is sorted, so a binary search per candidate.
            at = tf.minimum(tf.searchsorted(seen, rows), self._seen_width - 1)
            in_history = tf.equal(tf.gather(seen, at, batch_dims=1), rows)
            excluded = in_history if excluded is None else tf.logical_or(excluded, in_history)
        if excluded is not None:
            # Keep the best k of the others.
            scores = tf.where(excluded, tf.constant(-np.inf, scores.dtype), scores)
            scores, order = tf.math.top_k(scores, k=self._k, sorted=True)
            rows = tf.gather(rows, order, batch_dims=1)
        return self._outputs(rows, scores, found, not_found_ids)

    def _outputs(self, rows, scores, found, not_found_ids: np.ndarray) -> dict:
        """[B, k] rows and scores -> the signature's outputs (padding where nothing or not found)."""
        ids = gather_rows(self.candidate_ids, rows)
        keep = found[:, None]
        # A found row may end in padding entries (score -inf) when the index yielded fewer than k
        # candidates for that query; our client drops them.
        hit = tf.logical_and(keep, scores > -np.inf)
        return {
            IDS: tf.where(
                keep, tf.where(hit, ids, tf.constant(self._padding_ids)[None, :]), tf.constant(not_found_ids)[None, :]
            ),
            SCORES: tf.where(hit, scores, tf.constant(-np.inf, tf.float32)),
            FOUND: found,
        }

    @staticmethod
    def _full_width(rows, scores, width: int):
        """[B, <=width] search results -> [B, width], short tails as (row 0, -inf).

        ScaNN returns fewer columns when no query of the batch reached `width` candidates (a tree
        searching few, small leaves) and pads a short row within the batch with index 0 and a NaN
        score. Under TF Serving's batching the width would then depend on which requests were merged,
        and a padded index 0 would pass for a real result: pad to `width` and mark every non-finite
        score -inf so both read as "no candidate". An empty batch stays [0, width].
        """
        missing = width - tf.shape(rows)[1]
        rows = tf.pad(rows, [[0, 0], [0, missing]])
        scores = tf.pad(scores, [[0, 0], [0, missing]], constant_values=-np.inf)
        scores = tf.where(tf.math.is_nan(scores), tf.constant(-np.inf, scores.dtype), scores)
        return tf.reshape(rows, [-1, width]), tf.reshape(scores, [-1, width])

    def _exact_scores(self, queries):
        """[B, N] exact similarities (higher is better), as the brute-force path scores them."""
        if self._negate:
            return -(
                tf.reduce_sum(queries**2, 1, keepdims=True)
                - 2 * tf.matmul(queries, self.candidate_vectors, transpose_b=True)
                + tf.reduce_sum(self.candidate_vectors**2, 1)[None, :]
            )
        return tf.matmul(queries, self.candidate_vectors, transpose_b=True)

    def _pair_scores(self, queries, batch_rows, items):
        """[M] exact similarities of queries[batch_rows[m]] and candidate items[m] (filtered exact path)."""
        q = tf.gather(queries, batch_rows)
        v = gather_rows(self.candidate_vectors, items)
        if self._negate:
            return -tf.reduce_sum(tf.square(q - v), 1)
        return tf.reduce_sum(q * v, 1)

    def _nearest(self, queries, count: int, rescore_all: bool = False):
        if self.scann is None:
            scores, rows = tf.math.top_k(self._exact_scores(queries), k=count, sorted=True)
            return tf.cast(rows, tf.int32), scores
        from model_builder.scann_import import scann_ops

        searcher = scann_ops.ScannSearcher(self._searcher_handle())
        reorder = self._options.pre_reorder_num_neighbors
        if rescore_all:  # the filtered pool (export/filters.py): re-score all of it, not the index's default
            reorder = max(reorder or self._index.reorder_num_neighbors or 0, count)
        rows, scores = searcher.search_batched_parallel(
            queries,
            final_num_neighbors=count,
            pre_reorder_num_neighbors=reorder,
            leaves_to_search=self._options.leaves_to_search,
        )
        # ScaNN reports squared L2 as a distance (lower is better); serve "higher is better".
        return rows, (-scores if self._negate else scores)

    def _searcher_handle(self):
        """The ScaNN searcher resource, shared by every signature of this export.

        scann's own `searcher_from_module` leaves TensorsToScann's shared_name empty, and a
        ResourceOpKernel with an empty shared_name builds a searcher private to its kernel
        (tensorflow/core/framework/resource_op_kernel.h), i.e. one per signature that searches:
        each a full copy of the float dataset, the AH codes and the tree (scann_ops/cc/scann.cc,
        ScannInterface::Initialize). A fixed shared_name makes them one resource in the
        session's ResourceMgr (benchmarks/README.md, "Load peak"); scann's create_searcher
        names its resource the same way (scann_ops.py).
        """
        from model_builder.scann_import import scann_ops

        state = self.scann
        return scann_ops.tensors_to_scann(
            state.dataset,
            state.scann_config,
            state.serialized_partitioner,
            state.datapoint_to_token,
            state.ah_codebook,
            state.hashed_dataset,
            state.int8_dataset,
            state.int8_multipliers,
            state.dp_norms,
            shared_name=self._searcher_name,
        )
