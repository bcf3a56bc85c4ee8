"""Per-request filters and crowding inside the serving graph (signatures `search_filtered`,
`search_by_vector_filtered`; wire contract in README.md "Serving contract").

Batching-safe by construction. TF Serving 2.11 concatenates the rows of concurrent requests
along dimension 0 (tensorflow_serving/batching/batching_session.cc MergeInputTensors) and only
pads other dimensions with `pad_variable_length_inputs`, which pads with the tensor's first
element (batching/batching_util.h AddPadding) and which our batching file does not enable. So
every per-row input has a FIXED width published in the signature, and the client pads with a
value meaning "nothing": "" for tokens, the id padding ("" / -1) for excluded ids, -inf/+inf
for numeric bounds, 0 for max_per. No input value raises: a row whose filter matches nothing
gets padding (`found` stays true), its neighbours are untouched.

Per row: `allowed` [B, N] = token allow/deny (packed int32 token bitsets per item: one AND per
word, no dense table converted per call), numeric ranges, excluded ids, the query item and the
user's history. Its exact selectivity s = allowed / N picks the path: s * fetch >= safety * k ->
the row keeps the allowed among ScaNN's `fetch` (a build constant) nearest; otherwise it scores
only its allowed items (a gather of at most safety * k * N / fetch rows, then top_k; at 1M x 64
and 0.1% that is 1k dot products instead of a 1M-row matmul). Each path runs only when some row
of the batch takes it, and a row's choice depends on its own s only, so a row's answer never
depends on the rows merged with it (benchmarks/filtered.py measures both paths). Crowding then keeps at most max_per per crowding group, greedily by
score, over that fetched pool.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from model_builder.contract import FILTERED_SIGNATURE, SCHEMA_SIGNATURE, VECTOR_FILTERED_SIGNATURE
from model_builder.index.attributes import SEPARATOR, AttributeTables
from model_builder.variable_reads import gather_rows

ALLOW = "allow"
DENY = "deny"
EXCLUDE = "exclude"
LOWER = "lower"
UPPER = "upper"
MAX_PER = "max_per"
__all__ = ["FILTERED_SIGNATURE", "SCHEMA_SIGNATURE", "VECTOR_FILTERED_SIGNATURE", "FilterOptions", "FilterTables"]
# filter_schema's entries: "token:<ns>=<token>", "numeric:<name>" (in the order of lower/upper's
# columns), "crowding:<ns>", "fetch:<n>", "threshold:<s>".
ENTRY = "entry"
SIZE = "size"


@dataclass(frozen=True)
class FilterOptions:
    """Build constants of the filtered signatures (published in the signature shapes and filter_schema)."""

    tokens_width: int = 16
    exclude_width: int = 64
    # ScaNN over-fetch per row on the approximate path (capped at the catalogue).
    fetch: int = 1024
    # A row takes the approximate path when it expects >= safety * k allowed items among `fetch`.
    safety: float = 4.0

    def fetch_for(self, k: int, num_candidates: int) -> int:
        """The pool every row draws from: at least k, at most the catalogue."""
        return int(min(max(self.fetch, k), num_candidates))

    def threshold(self, k: int, num_candidates: int) -> float:
        """Lowest selectivity served by the approximate path (below: exact scoring of the allowed set)."""
        fetch = self.fetch_for(k, num_candidates)
        return 0.0 if fetch >= num_candidates else min(1.0, self.safety * k / fetch)


class FilterTables(tf.Module):
    """The attribute tensors and lookup tables the filtered signatures read."""

    def __init__(self, tables: AttributeTables, candidate_ids: np.ndarray, options: FilterOptions, k: int) -> None:
        super().__init__(name="filters")
        n = len(candidate_ids)
        self.num_candidates = n
        self.options = options
        self.num_tokens = len(tables.vocabulary)
        self.num_numeric = len(tables.numeric_names)
        self.fetch = options.fetch_for(k, n)
        self.tables_k = k
        self.threshold = options.threshold(k, n)
        self.int_ids = candidate_ids.dtype == np.int64
        self.tables = tables
        vocabulary = list(tables.vocabulary) or ["\0none"]
        namespaces = list(tables.namespaces)
        self.namespace_of_token = np.asarray(
            [namespaces.index(t.split(SEPARATOR, 1)[0]) if tables.vocabulary else -1 for t in vocabulary], np.int32
        )
        self.num_namespaces = len(namespaces)
        # Packed bitsets, not a dense [N, T] table: item row -> int32 words, bit t % 32 of word t // 32
        # set when the item has token t (1M items x 64 tokens: 8 MB instead of 64 MB of int8, and no
        # per-call float conversion of the table). A request's tokens become the same words, so
        # "has one of these tokens" is one AND per word per item.
        self.words = max(1, -(-self.num_tokens // 32))
        self.bits = tf.Variable(_pack(tables.membership, self.words), trainable=False, name="membership_bits")
        in_namespace = self.namespace_of_token[None, :] == np.arange(len(namespaces))[:, None]
        self.namespace_bits = _pack(in_namespace, self.words)  # [G, words]: the tokens of namespace g
        self.numeric = tf.Variable(tables.numeric, trainable=False, name="numeric")
        self.crowd_group = tf.Variable(tables.crowd_group, trainable=False, name="crowd_group")
        self.token_table = _table(tf.constant(vocabulary), len(vocabulary))
        self.namespace_table = _table(tf.constant(namespaces or ["\0none"]), max(len(namespaces), 1))
        keys = candidate_ids if self.int_ids else np.asarray([str(i) for i in candidate_ids.tolist()], dtype=object)
        self.row_table = _table(tf.constant(keys, tf.int64 if self.int_ids else tf.string), n)
        entries = [f"token:{t}" for t in tables.vocabulary] + [f"numeric:{a}" for a in tables.numeric_names]
        entries += [f"crowding:{tables.crowding or ''}", f"fetch:{self.fetch}", f"threshold:{self.threshold:.6g}"]
        self.entries = entries

    # -- the allowed mask -------------------------------------------------------
    def allowed(self, allow, deny, exclude, lower, upper, excluded_rows):
        """bool [B, N]: items the row's filters let through; `excluded_rows` [B, E] int (-1 = none)."""
        # Every [B, N] pass costs ~1 ms at 1M items: a part no row of the batch uses is skipped
        # (tf.cond); skipped or not, it yields the same mask, so batch-mates never change a row.
        batch = tf.shape(allow)[0]
        rows = tf.concat([self.row_table.lookup(exclude), excluded_rows], 1)
        any_rows = tf.reduce_any((rows >= 0) & (rows < self.num_candidates))
        keep = tf.logical_not(self._if_any(any_rows, lambda: self._rows_mask(rows), batch))
        deny_bits = self._token_bits(deny)
        denied = self._if_any(tf.reduce_any(deny_bits != 0), lambda: self._has_any(deny_bits), batch)
        keep = tf.logical_and(keep, tf.logical_not(denied))
        # allow: per namespace named in the row, the item needs one of its tokens.
        namespace = self.namespace_table.lookup(tf.strings.regex_replace(allow, f"{SEPARATOR}.*$", ""))
        used = tf.not_equal(allow, "")
        # A non-empty allow entry in no known namespace (or without "=") matches no item.
        keep = tf.logical_and(keep, tf.logical_not(tf.reduce_any(used & (namespace < 0), 1))[:, None])
        allowed_bits = self._token_bits(allow)
        for g in range(self.num_namespaces):
            bits = tf.bitwise.bitwise_and(allowed_bits, tf.constant(self.namespace_bits[g : g + 1]))
            active = tf.reduce_any(used & tf.equal(namespace, g), 1)[:, None]
            outside = self._if_any(
                tf.reduce_any(active),
                lambda b=bits, a=active: tf.logical_and(a, tf.logical_not(self._has_any(b))),
                batch,
            )
            keep = tf.logical_and(keep, tf.logical_not(outside))
        if self.num_numeric:
            values = self.numeric[None, :, :]
            inside = (values >= lower[:, None, :]) & (values <= upper[:, None, :])
            # -inf..+inf is no bound (and lets an item without a value through).
            unbounded = (lower == -np.inf) & (upper == np.inf)
            keep = tf.logical_and(keep, tf.reduce_all(inside | unbounded[:, None, :], 2))
        return keep

    def _token_bits(self, tokens):
        """[B, W] "ns=token" strings -> int32 [B, words]: the row's tokens as packed bits (unknown, "" -> none)."""
        one_hot = tf.reduce_max(tf.one_hot(self.token_table.lookup(tokens), self.words * 32, dtype=tf.int32), axis=1)
        # Distinct powers of two (bit 31 is -2**31 in int32) sum to the word without overflow.
        powers = tf.constant(np.left_shift(np.uint32(1), np.arange(32, dtype=np.uint32)).view(np.int32))
        return tf.reduce_sum(tf.reshape(one_hot, [-1, self.words, 32]) * powers, axis=2)

    def _if_any(self, flag, mask_fn, batch):
        """mask_fn() (bool [B, N]) when `flag`, else all false, without computing it."""
        return tf.cond(flag, mask_fn, lambda: tf.zeros([batch, self.num_candidates], tf.bool))

    def _has_any(self, row_bits):
        """int32 [B, words] -> bool [B, N]: the item has at least one of the row's tokens."""
        if self.words == 1:
            return tf.not_equal(tf.bitwise.bitwise_and(self.bits[:, 0][None, :], row_bits), 0)
        both = tf.bitwise.bitwise_and(self.bits[None, :, :], row_bits[:, None, :])
        return tf.reduce_any(tf.not_equal(both, 0), axis=2)

    def _rows_mask(self, rows):
        """[B, E] candidate rows (-1 = none) -> bool [B, N], via one scatter (no [B, E, N] one-hot)."""
        n = self.num_candidates
        rows = tf.cast(rows, tf.int32)
        rows = tf.where((rows >= 0) & (rows < n), rows, n)  # column n collects the padding
        batch = tf.broadcast_to(tf.range(tf.shape(rows)[0])[:, None], tf.shape(rows))
        indices = tf.reshape(tf.stack([batch, rows], -1), [-1, 2])
        hits = tf.scatter_nd(indices, tf.ones([tf.shape(indices)[0]], tf.int32), [tf.shape(rows)[0], n + 1])
        return hits[:, :n] > 0

    # -- search over the allowed set ---------------------------------------------
    def search(self, allowed, approximate, pair_scores, k: int, max_per):
        """[B, k] (rows, scores) of the allowed, crowded; -inf where nothing is left.

        approximate(): ScaNN's [B, fetch] (rows, scores); pair_scores(batch_rows, items): [M] exact
        similarities of query batch_rows[m] and candidate row items[m].
        """
        n, fetch = self.num_candidates, self.fetch
        # The exact count (one pass over the mask), not an estimate from the per-token counts: with
        # deny, numeric ranges and several namespaces those would only bound it.
        count = tf.reduce_sum(tf.cast(allowed, tf.int64), 1)
        by_index = (
            count * fetch >= int(math.ceil(self.options.safety * k * n)) if fetch < n else tf.ones_like(count, tf.bool)
        )
        batch = tf.shape(allowed)[0]
        # Each branch runs only when some row of the batch takes it; a row reads only its own branch.
        rows_a, scores_a = tf.cond(tf.reduce_any(by_index), approximate, lambda: self._nothing(batch))
        rows_e, scores_e = tf.cond(
            tf.reduce_all(by_index),
            lambda: self._nothing(batch),
            lambda: self._exact(tf.logical_and(allowed, tf.logical_not(by_index)[:, None]), pair_scores),
        )
        rows = tf.where(by_index[:, None], rows_a, rows_e)
        scores = tf.where(by_index[:, None], scores_a, scores_e)
        ok = tf.gather(allowed, rows, batch_dims=1) & (scores > -np.inf)
        ok = ok & self._crowded(rows, ok, max_per)
        scores = tf.where(ok, scores, tf.constant(-np.inf, tf.float32))
        scores, order = tf.math.top_k(scores, k=k, sorted=True)
        return tf.gather(rows, order, batch_dims=1), scores

    def _nothing(self, batch):
        return tf.zeros([batch, self.fetch], tf.int32), tf.fill([batch, self.fetch], tf.constant(-np.inf, tf.float32))

    def exact_width(self, k: int) -> int:
        """Most items an exact-path row can have: below the threshold, count < safety * k * N / fetch."""
        return int(min(self.num_candidates, math.ceil(self.options.safety * k * self.num_candidates / self.fetch)))

    def _exact(self, need, pair_scores):
        """[B, fetch] best (rows, scores) among each row's `need` items, scoring only those (a gather,
        not a [B, N] matmul): at 1% of 1M that is 10k dot products instead of 1M."""
        width = self.exact_width(self.tables_k)
        coords = tf.where(need)  # [M, 2] (batch row, item), row-major: each row's items in order
        batch_rows, items = coords[:, 0], coords[:, 1]
        per_row = tf.reduce_sum(tf.cast(need, tf.int64), 1)
        position = tf.range(tf.shape(coords, tf.int64)[0]) - tf.gather(tf.cumsum(per_row, exclusive=True), batch_rows)
        slots = tf.stack([batch_rows, position], 1)
        shape = tf.stack([tf.shape(need, tf.int64)[0], width])
        scores = tf.tensor_scatter_nd_update(
            tf.fill(shape, tf.constant(-np.inf, tf.float32)), slots, pair_scores(batch_rows, items)
        )
        rows = tf.tensor_scatter_nd_update(tf.zeros(shape, tf.int32), slots, tf.cast(items, tf.int32))
        top, order = tf.math.top_k(scores, k=min(self.fetch, width), sorted=True)
        return _pad_to(tf.gather(rows, order, batch_dims=1), top, self.fetch)

    def _crowded(self, rows, ok, max_per):
        """bool [B, P]: within its crowding group, the entry is among the first max_per valid ones.

        The pool is in score order; a stable sort by group keeps that order inside each group, so
        an entry's rank in its group is its distance to the group's first entry (O(P log P)).
        """
        pool = tf.shape(rows)[1]
        position = tf.broadcast_to(tf.range(pool)[None, :], tf.shape(rows))
        # Entries that are not valid get a group of their own (negative), so they never count.
        group = tf.where(ok, gather_rows(self.crowd_group, rows), -1 - position)
        order = tf.argsort(group, axis=1, stable=True)
        sorted_group = tf.gather(group, order, batch_dims=1)
        starts = tf.concat([tf.ones_like(sorted_group[:, :1], tf.bool), sorted_group[:, 1:] != sorted_group[:, :-1]], 1)
        run = tf.cumsum(tf.cast(starts, tf.int32), axis=1) - 1
        segment = tf.range(tf.shape(rows)[0])[:, None] * pool + run
        first = tf.math.unsorted_segment_min(tf.reshape(position, [-1]), tf.reshape(segment, [-1]), tf.size(rows))
        rank_sorted = position - tf.gather(first, segment)
        # Back to pool order: rank[order[i]] = rank_sorted[i].
        rank = tf.gather(rank_sorted, tf.argsort(order, axis=1), batch_dims=1)
        return (max_per[:, None] <= 0) | (rank < max_per[:, None])

    # -- inputs and the schema ----------------------------------------------------
    def input_specs(self, id_spec: tf.TensorSpec) -> list[tf.TensorSpec]:
        """The filtered signature's inputs after the query input (fixed widths: batching-safe)."""
        o = self.options
        return [
            id_spec,
            tf.TensorSpec([None, o.tokens_width], tf.string, name=ALLOW),
            tf.TensorSpec([None, o.tokens_width], tf.string, name=DENY),
            tf.TensorSpec([None, o.exclude_width], tf.int64 if self.int_ids else tf.string, name=EXCLUDE),
            tf.TensorSpec([None, self.num_numeric], tf.float32, name=LOWER),
            tf.TensorSpec([None, self.num_numeric], tf.float32, name=UPPER),
            tf.TensorSpec([None], tf.int32, name=MAX_PER),
        ]

    def ensure_shapes(self, filters) -> tuple:
        """The filter inputs checked against their fixed widths: a request of another width fails
        its Run with INVALID_ARGUMENT (TF Serving's batcher could not merge it with others anyway)."""
        o = self.options
        widths = (o.tokens_width, o.tokens_width, o.exclude_width, self.num_numeric, self.num_numeric)
        checked = [tf.ensure_shape(t, [None, w]) for t, w in zip(filters[:5], widths)]
        return (*checked, tf.ensure_shape(filters[5], [None]))

    def schema(self, index):
        """filter_schema: entry `index` (int64 [B]) of the published schema, and its size."""
        index = tf.ensure_shape(index, [None])
        size = len(self.entries)
        found = (index >= 0) & (index < size)
        entries = tf.constant(self.entries + [""])
        return {
            ENTRY: tf.gather(entries, tf.where(found, index, size)),
            SIZE: tf.fill(tf.shape(index), tf.constant(size, tf.int64)),
            "found": found,
        }


def _pad_to(rows, scores, width: int):
    """[B, w <= width] -> [B, width] with (row 0, -inf) columns."""
    missing = width - tf.shape(rows)[1]
    rows = tf.pad(rows, [[0, 0], [0, missing]])
    scores = tf.pad(scores, [[0, 0], [0, missing]], constant_values=-np.inf)
    return tf.reshape(rows, [-1, width]), tf.reshape(scores, [-1, width])


def _pack(membership: np.ndarray, words: int) -> np.ndarray:
    """bool [N, T] -> int32 [N, words]: bit t % 32 of word t // 32 (little-endian bit order)."""
    padded = np.zeros((membership.shape[0], words * 32), bool)
    padded[:, : membership.shape[1]] = membership
    return np.packbits(padded, axis=1, bitorder="little").view("<u4").astype(np.uint32).view(np.int32)


def _table(keys, n: int):
    return tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(keys, tf.range(n, dtype=tf.int64)), default_value=-1
    )
