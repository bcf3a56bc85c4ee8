"""Row reads of stored tables that never put a variable into copy-on-read mode.

`tf.gather(variable, rows)` becomes a ResourceGather, which calls EnsureSparseVariableAccess
(TF 2.11 headers: tensorflow/core/kernels/training_op_helpers.h) and switches the variable to
`copy_on_read_mode` for good (tensorflow/core/framework/resource_var.h). From then on every dense
ReadVariableOp of it copies the whole tensor. ScaNN's TensorsToScann reads its dataset variable
densely on every call, and the candidate (and, for item -> similar items, query) vectors *are* that
variable: one ResourceGather made each call copy the catalogue's vectors (200k x 64: 5.6 ms of a
6 ms call; 4M x 64: ~100 ms; benchmarks/README.md "Sharding"). Gathering from the variable's
value instead reads it as the tensor it is (a reference, no copy) and gathers from that. Every
served gather goes through here (the feature towers' embeddings too): one rule, checked on the
saved graphs by tests/model/test_no_copy_on_read.py.
"""

from __future__ import annotations

import tensorflow as tf


def gather_rows(table, rows, **kwargs):
    """tf.gather of `rows` from a variable's value (or a tensor), never a ResourceGather."""
    value = table.value() if isinstance(table, tf.Variable) else table
    return tf.gather(value, rows, **kwargs)
