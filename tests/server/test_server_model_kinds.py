"""Every model kind loads on a batching server (its warmup replayed through the batcher, as TF Serving 2.11
does with --enable_batching) and answers every warmup record and every signature as the SavedModel does.

With the old graph (an `examples` signature without inputs, replayed by the warmup file) the
server cannot load any of these versions: the batcher refuses the record ("Batching Run() must
have at least one input tensor", tensorflow_serving/batching/batching_util.h), the first load
fails, the server exits -- see test_server_startup.py for that failure on its own.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

import model_builder.scann_import  # noqa: F401  (Scann ops before loading)
import support
from model_builder.export import warmup
from model_builder.export.version_store import read_build_info
from support import harness


def _same(got: dict, want: dict, exact: bool) -> list[str]:
    problems = []
    for name, value in want.items():
        value = value.numpy()
        if name not in got or got[name].shape != value.shape:
            problems.append(f"{name}: shape {None if name not in got else got[name].shape} != {value.shape}")
        elif value.dtype.kind == "f":
            if not np.allclose(got[name], value, rtol=1e-5, atol=1e-6, equal_nan=True):
                problems.append(f"{name}: values differ")
        elif exact and got[name].tolist() != value.tolist():
            problems.append(f"{name}: values differ")
    return problems


def _requests(loaded, info: dict) -> list:
    """One request per signature, each with rows that cannot be answered among the known ones."""
    examples = loaded.signatures["examples"](index=tf.range(64, dtype=tf.int64))
    found = examples["found"].numpy()
    known = examples["query_ids"].numpy()[found]
    unknown = np.array([b"no-such-id"], dtype=object) if known.dtype == object else np.array([10**15], np.int64)
    vectors = examples["candidate_vectors"].numpy()[found][:4].copy()
    vectors[1] = np.nan
    return [
        ("serving_default", {"ids": np.concatenate([known[:3], unknown, known[3:5]])}),
        ("search_by_vector", {"vectors": vectors}),
        ("examples", {"index": np.arange(-2, 70, dtype=np.int64)}),
    ]


def test_every_warmup_record_and_signature_of_every_model_kind_through_a_batching_server(model_kinds, tmp_path):
    problems, counts = [], {}
    for kind, version_dir in model_kinds.items():
        info = read_build_info(version_dir)
        loaded = tf.saved_model.load(str(version_dir))
        exact = True  # same TF and ScaNN in-process: even approximate kinds answer identically
        records = [
            (
                r.predict_log.request.model_spec.signature_name,
                {k: tf.make_ndarray(v) for k, v in r.predict_log.request.inputs.items()},
            )
            for r in warmup.read(version_dir)
        ]
        calls = [*records, *_requests(loaded, info)]
        with support.local_server(version_dir.parent.parent, version_dir.parent.name, log_dir=tmp_path) as server:
            server.wait_available(
                int(version_dir.name), timeout=300
            )  # the load replayed the warmup through the batcher
            raw = harness.Raw(server.target)
            for signature, inputs in calls:
                response = raw.predict(
                    harness.predict_request(signature, inputs, model=version_dir.parent.name), timeout=120
                )
                want = loaded.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
                problems += [f"{kind} {signature}: {p}" for p in _same(harness.outputs(response), want, exact)]
            raw.close()
        counts[kind] = (len(records), sorted({s for s, _ in records}), sorted(loaded.signatures))
    print(counts)
    assert problems == [], problems[:10]
    # Every signature a model exports (feature models add search_by_features) has warmup records.
    assert all(
        warmed == exported and {"examples", "search_by_vector", "serving_default"} <= set(exported)
        for _, warmed, exported in counts.values()
    ), counts
