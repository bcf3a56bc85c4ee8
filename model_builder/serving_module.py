"""The serving graph: a plain tf.Module whose signatures TF Serving runs.

No Keras in here: the query tower is exported as its materialized output table
(the signature takes ids only, so each id's tower output is fixed at build
time), the candidates as a ScaNN searcher serialized with
`serialize_to_module()` and rebuilt with `searcher_from_module()` inside the
functions (the searcher resource is built once per load, then reused).

Every bad input fails inside the graph with an InvalidArgument error whose
message says what to fix, so TF Serving and our local server report the same
thing. Checks avoid tf.rank/static shapes on purpose: with a [None, D]
signature, Grappler folds those to constants and the check would pass
whatever the request sent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from model_builder.index import ResolvedIndex

SERVING_SIGNATURE = "serving_default"
VECTOR_SIGNATURE = "search_by_vector"
EXAMPLES_SIGNATURE = "examples"
SIGNATURES = (SERVING_SIGNATURE, VECTOR_SIGNATURE, EXAMPLES_SIGNATURE)
IDS = "ids"
VECTORS = "vectors"
SCORES = "scores"


@dataclass(frozen=True)
class Catalogue:
    """What gets served: query id -> query vector, and candidate id -> candidate vector.

    `query_vectors is None` means the queries are the candidates themselves
    (item -> similar items); the table is then stored once.
    """

    query_ids: np.ndarray
    query_vectors: np.ndarray | None
    candidate_ids: np.ndarray
    candidate_vectors: np.ndarray

    @property
    def items_are_queries(self) -> bool:
        """True for item -> similar items models."""
        return self.query_vectors is None

    def vectors_of_queries(self) -> np.ndarray:
        """The query tower's output for every query id, row-aligned with `query_ids`."""
        return self.candidate_vectors if self.query_vectors is None else self.query_vectors


@dataclass(frozen=True)
class ServingOptions:
    """Build-time serving behaviour, fixed per version."""

    k: int
    max_batch_size: int = 1024
    num_examples: int = 8
    # Search-time overrides of the index config (set by auto-tuning); None = index default.
    leaves_to_search: int | None = None
    pre_reorder_num_neighbors: int | None = None


def tf_dtype(ids: np.ndarray) -> tf.DType:
    """int64 ids stay int64 on the wire; everything else is served as strings."""
    return tf.int64 if ids.dtype == np.int64 else tf.string


def _id_tensor(ids: np.ndarray) -> tf.Tensor:
    if ids.dtype == np.int64:
        return tf.constant(ids, tf.int64)
    return tf.constant([str(i) for i in ids.tolist()], tf.string)


def _check(condition: tf.Tensor, *message) -> tf.Operation:
    return tf.debugging.Assert(condition, list(message), summarize=10)


class RetrievalModule(tf.Module):
    """Query id(s) or vectors -> top-k candidate ids and scores (descending)."""

    def __init__(self, catalogue: Catalogue, index: ResolvedIndex, searcher, options: ServingOptions) -> None:
        super().__init__(name="retrieval")
        self._k = options.k
        self._dim = int(catalogue.candidate_vectors.shape[1])
        self._options = options
        self._index = index
        self._exclude_query = catalogue.items_are_queries
        self._negate = index.distance == "squared_l2"
        self.candidate_ids = tf.Variable(_id_tensor(catalogue.candidate_ids), trainable=False, name="candidate_ids")
        self.scann = searcher.serialize_to_module() if searcher is not None else None
        if self.scann is not None and np.array_equal(self.scann.dataset.numpy(), catalogue.candidate_vectors):
            # ScaNN keeps the float vectors for exact re-scoring: reuse them instead of a second copy
            # (at 1M x 64 that is 256 MB less on disk and in the serving process).
            self.candidate_vectors = self.scann.dataset
        else:
            self.candidate_vectors = tf.Variable(catalogue.candidate_vectors, trainable=False, name="candidate_vectors")
        if catalogue.items_are_queries:
            self.query_vectors = self.candidate_vectors
        else:
            self.query_vectors = tf.Variable(catalogue.query_vectors, trainable=False, name="query_vectors")
        query_keys = _id_tensor(catalogue.query_ids)
        if catalogue.items_are_queries:
            self.query_ids = self.candidate_ids
        else:
            self.query_ids = tf.Variable(query_keys, trainable=False, name="query_ids")
        self.query_table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(query_keys, tf.range(len(catalogue.query_ids), dtype=tf.int64)),
            default_value=-1,
        )
        n = min(options.num_examples, len(catalogue.query_ids), len(catalogue.candidate_ids))
        self._examples = (query_keys[:n], _id_tensor(catalogue.candidate_ids[:n]), tf.constant(catalogue.candidate_vectors[:n]))
        query_dtype = tf_dtype(catalogue.query_ids)
        self.search_ids = tf.function(self._search_ids, input_signature=[tf.TensorSpec([None], query_dtype, name=IDS)])
        self.search_vectors = tf.function(self._search_vectors, input_signature=[tf.TensorSpec([None, self._dim], tf.float32, name=VECTORS)])
        self.examples = tf.function(self._examples_fn, input_signature=[])

    def signatures(self) -> dict:
        """The signature map for tf.saved_model.save."""
        return {
            SERVING_SIGNATURE: self.search_ids.get_concrete_function(),
            VECTOR_SIGNATURE: self.search_vectors.get_concrete_function(),
            EXAMPLES_SIGNATURE: self.examples.get_concrete_function(),
        }

    # -- graph pieces ---------------------------------------------------------
    def _batch_checks(self, batch_size: tf.Tensor, what: str) -> list[tf.Operation]:
        limit = self._options.max_batch_size
        return [
            _check(batch_size > 0, f"empty batch: send at least one {what}"),
            _check(batch_size <= limit, f"batch too large: at most {limit} {what}s per request, got", batch_size,
                   "- split the request"),
        ]

    def _search_ids(self, ids):
        shape = tf.shape(ids)
        checks = self._batch_checks(shape[0], "id")
        checks.append(_check(tf.equal(tf.size(ids), shape[0]), "'ids' must be a 1-D list of ids, got shape", shape))
        with tf.control_dependencies(checks):
            ids = tf.reshape(ids, [-1])
        rows = self.query_table.lookup(ids)
        unknown = tf.boolean_mask(ids, rows < 0)
        with tf.control_dependencies([_check(tf.equal(tf.size(unknown), 0),
                                             "unknown query id(s), not in this model version:", unknown)]):
            rows = tf.identity(rows)
        queries = tf.gather(self.query_vectors, rows)
        return self._top_k(queries, exclude_rows=rows if self._exclude_query else None)

    def _search_vectors(self, vectors):
        shape = tf.shape(vectors)
        checks = self._batch_checks(shape[0], "vector")
        checks.append(_check(
            tf.logical_and(tf.equal(tf.size(vectors), shape[0] * self._dim), tf.equal(shape[-1], self._dim)),
            f"'vectors' must have shape [batch, {self._dim}], got", shape,
        ))
        with tf.control_dependencies(checks):
            vectors = tf.reshape(vectors, [-1, self._dim])
        vectors = tf.debugging.check_numerics(vectors, "'vectors' contain NaN or Inf")
        return self._top_k(vectors, exclude_rows=None)

    def _examples_fn(self):
        query_ids, candidate_ids, candidate_vectors = self._examples
        return {"query_ids": query_ids, "candidate_ids": candidate_ids, "candidate_vectors": candidate_vectors}

    def _top_k(self, queries, exclude_rows):
        extra = 1 if exclude_rows is not None else 0
        rows, scores = self._nearest(queries, self._k + extra)
        if exclude_rows is not None:
            # item -> similar items: drop the query item itself, keep the best k others.
            is_self = tf.equal(rows, tf.cast(exclude_rows, rows.dtype)[:, None])
            scores = tf.where(is_self, tf.fill(tf.shape(scores), -np.inf), scores)
            scores, order = tf.math.top_k(scores, k=self._k, sorted=True)
            rows = tf.gather(rows, order, batch_dims=1)
        rows = tf.ensure_shape(rows, [None, self._k])
        scores = tf.ensure_shape(scores, [None, self._k])
        return {IDS: tf.gather(self.candidate_ids, rows), SCORES: scores}

    def _nearest(self, queries, count: int):
        if self.scann is None:
            if self._negate:
                sims = -(tf.reduce_sum(queries**2, 1, keepdims=True) - 2 * tf.matmul(queries, self.candidate_vectors, transpose_b=True)
                         + tf.reduce_sum(self.candidate_vectors**2, 1)[None, :])
            else:
                sims = tf.matmul(queries, self.candidate_vectors, transpose_b=True)
            scores, rows = tf.math.top_k(sims, k=count, sorted=True)
            return tf.cast(rows, tf.int32), scores
        from model_builder.scann_import import scann_ops

        searcher = scann_ops.searcher_from_module(self.scann)
        rows, scores = searcher.search_batched_parallel(
            queries,
            final_num_neighbors=count,
            pre_reorder_num_neighbors=self._options.pre_reorder_num_neighbors,
            leaves_to_search=self._options.leaves_to_search,
        )
        # ScaNN reports squared L2 as a distance (lower is better); serve "higher is better".
        return rows, (-scores if self._negate else scores)
