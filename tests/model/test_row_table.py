"""id -> row tables read their keys from the restored variable (export/row_table.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from model_builder.export.row_table import row_table

N = 50_000


class _Ids(tf.Module):
    def __init__(self, keys: np.ndarray) -> None:
        super().__init__()
        self.ids = tf.Variable(keys, trainable=False, name="ids")
        self.table = row_table(self.ids)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def rows(self, ids):
        return {"rows": self.table.lookup(ids)}


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    module = _Ids(np.array([f"sku-{i}" for i in range(N)], dtype=object))
    path = tmp_path_factory.mktemp("row_table") / "model"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.rows})
    return path


QUERY = [b"sku-7", b"nope", f"sku-{N - 1}".encode()]
EXPECTED = [7, -1, N - 1]


def test_saved_model_pb_holds_no_copy_of_the_keys(saved):
    # 50k keys as a constant would be >= 400 KB; the graph alone is ~20 KB.
    assert (saved / "saved_model.pb").stat().st_size < 100_000
    assert b"sku-49999" not in (saved / "saved_model.pb").read_bytes()


def test_tf2_loader_restores_the_keys_before_the_table_initializes(saved):
    loaded = tf.saved_model.load(str(saved))
    assert loaded.signatures["serving_default"](ids=tf.constant(QUERY))["rows"].numpy().tolist() == EXPECTED


def test_tf1_session_loader_as_the_local_server_uses_it(saved):
    with tf.compat.v1.Session(graph=tf.Graph()) as session:
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(saved))
        signature = meta.signature_def["serving_default"]
        rows = session.run(signature.outputs["rows"].name, {signature.inputs["ids"].name: QUERY})
    assert rows.tolist() == EXPECTED
