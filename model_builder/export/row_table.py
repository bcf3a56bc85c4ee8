"""id -> row hash tables initialized from a restored variable, not from a graph constant.

`tf.lookup.KeyValueTensorInitializer(numpy_keys, ...)` saves its keys (and the row numbers)
as constants inside the initializer function in saved_model.pb. TF Serving's loader then
parses, copies and imports them before the table's init op runs: with 1M string ids that was
+195 MiB at graph import and +556 MiB at init (benchmarks/README.md, "Load peak"). Reading the
ids variable the model already stores costs neither: both loaders restore variables before
they run init ops (tensorflow/cc/saved_model/loader.cc, RestoreSession then RunInitOp;
tf.saved_model.load restores the checkpoint before initializing resources).
"""

from __future__ import annotations

import tensorflow as tf


class RowsOfVariable(tf.lookup.KeyValueTensorInitializer):
    """Table initializer: each key of a 1-D variable -> its row (int64), read at init time."""

    def __init__(self, keys: tf.Variable) -> None:
        # The base class's own keys/values stay empty; only the dtypes are used.
        super().__init__(tf.zeros([0], keys.dtype), tf.zeros([0], tf.int64))
        self._keys_variable = keys

    def initialize(self, table):
        """The init op: LookupTableImportV2 of (variable value, 0..n-1), as the base class imports its tensors."""
        keys = self._keys_variable.read_value()
        rows = tf.range(tf.size(keys, out_type=tf.int64))
        return tf.raw_ops.LookupTableImportV2(table_handle=table.resource_handle, keys=keys, values=rows)


def row_table(keys: tf.Variable) -> tf.lookup.StaticHashTable:
    """key -> row in `keys`, -1 for unknown keys."""
    return tf.lookup.StaticHashTable(RowsOfVariable(keys), default_value=-1)
