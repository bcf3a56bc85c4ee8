"""The filtered signatures' graph (search_filtered, search_by_vector_filtered): the query side as
in the unfiltered ones, then export/filters.py's per-row allowed set, over-fetch or exact path and
crowding. A mixin of serving_graph.RetrievalModule, whose tables and helpers it uses."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from model_builder.variable_reads import gather_rows


class FilteredSignatures:
    """search_filtered / search_by_vector_filtered for RetrievalModule (built with --item-attributes)."""

    def _search_ids_filtered(self, ids, *filters):
        ids = tf.ensure_shape(ids, [None])
        rows = self.query_table.lookup(ids)
        found = rows >= 0
        seen = self._seen_of(rows)
        rows = tf.maximum(rows, 0)
        excluded = [self._own_rows(rows)[:, None]] if self._exclude_query else []  # -1: not in this shard
        if seen is not None:
            excluded.append(tf.cast(seen, tf.int64))  # SEEN_PADDING is past the catalogue: no row
        return self._filtered(gather_rows(self.query_vectors, rows), found, excluded, self._not_found_ids, filters)

    def _search_vectors_filtered(self, vectors, *filters):
        vectors = tf.ensure_shape(vectors, [None, self._dim])
        found = tf.reduce_all(tf.math.is_finite(vectors), axis=1)
        vectors = tf.where(found[:, None], vectors, 0.0)
        return self._filtered(vectors, found, [], self._padding_ids, filters)

    def _filtered(self, queries, found, excluded: list, not_found_ids: np.ndarray, filters) -> dict:
        allow, deny, exclude, lower, upper, max_per = self.filters.ensure_shapes(filters)
        batch = tf.shape(queries)[0]
        excluded = tf.concat([tf.zeros([batch, 0], tf.int64), *excluded], 1)
        allowed = self.filters.allowed(allow, deny, exclude, lower, upper, excluded)
        fetch = self.filters.fetch
        rows, scores = self.filters.search(
            allowed,
            lambda: self._full_width(*self._nearest(queries, fetch, rescore_all=True), fetch),
            lambda batch_rows, items: self._pair_scores(queries, batch_rows, items),
            self._k,
            max_per,
        )
        return self._outputs(rows, scores, found, not_found_ids)
