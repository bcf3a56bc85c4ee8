"""No served graph gathers rows straight out of a variable.

A ResourceGather switches its variable to copy-on-read for good (TF 2.11:
tensorflow/core/kernels/training_op_helpers.h EnsureSparseVariableAccess, and
tensorflow/core/framework/resource_var.h copy_on_read_mode), after which every dense read copies
it. ScaNN's TensorsToScann reads its dataset variable densely on every call, and the candidate
vectors are that variable: one gather by id made each call copy the catalogue (200k x 64: 6 ms
instead of 0.3 ms per call; model_builder/variable_reads.py). Checked on the op types saved in every kind
of version the builder writes."""

from __future__ import annotations

import pytest
from tensorflow.core.protobuf import saved_model_pb2

SPARSE_READS = {"ResourceGather", "ResourceGatherNd"}


def op_types(version_dir) -> set[str]:
    model = saved_model_pb2.SavedModel.FromString((version_dir / "saved_model.pb").read_bytes())
    graph = model.meta_graphs[0].graph_def
    types = {node.op for node in graph.node}
    for function in graph.library.function:
        types |= {node.op for node in function.node_def}
    return types


def test_every_kind_of_version_reads_its_tables_densely(model_kinds):
    for name, version_dir in model_kinds.items():
        types = op_types(version_dir)
        assert "Scann>TensorsToScann" in types or name.startswith("exact"), name  # the check sees the graph
        assert not types & SPARSE_READS, f"{name}: {sorted(types & SPARSE_READS)}"


@pytest.mark.parametrize("flags", [["--item-attributes", "dataset", "--query", "item"]])
def test_a_filtered_version_reads_its_tables_densely(tmp_path, flags):
    import support

    version_dir = support.build(tmp_path, "--dataset", "movielens-100k", *support.FAST_TRAIN, *flags, model_name="f")
    assert not op_types(version_dir) & SPARSE_READS
