"""TF Serving's warmup file: assets.extra/tf_serving_warmup_requests.

A TFRecord of PredictionLog protos (tensorflow-serving-api's own messages,
written with TF's own TFRecord writer). TF Serving replays it while loading a
version, before marking it AVAILABLE, so the first real request does not pay
for building the ScaNN searcher or tracing kernels; our local server does the same.

With --enable_batching the records go through the batching session
(servables/tensorflow/saved_model_warmup_util.cc) and any failing record fails
the load, so every record has a batch input and at most max_batch_size rows
(a bigger one is refused by the batcher: "Task size N is larger than maximum
input batch size M", TF shared_batch_scheduler.h).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from model_builder.contract import (
    EXAMPLES_SIGNATURE,
    FEATURES_SIGNATURE,
    IDS,
    INDEX,
    MAX_EXAMPLES,
    SERVING_SIGNATURE,
    VECTOR_SIGNATURE,
    VECTORS,
)

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
# Batch sizes worth tracing ahead: a single query, a small batch, a batching-merged batch.
BATCH_SIZES = (1, 8, 64)
# TF Serving reads at most this many records (saved_model_warmup_util.cc kMaxNumRecords).
MAX_RECORDS = 1000


def _request(model_name: str, signature: str, inputs: dict[str, np.ndarray]) -> prediction_log_pb2.PredictionLog:
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))


def warmup_logs(model_name: str, query_ids: np.ndarray, query_vectors: np.ndarray, max_batch_size: int) -> list:
    """One request per search signature and batch size (known ids and vectors), plus one for examples.

    Every record has at most `max_batch_size` rows, so TF Serving's batcher accepts it.
    """
    logs = []
    for size in (s for s in BATCH_SIZES if s <= max_batch_size):
        picks = np.arange(size) % len(query_ids)
        ids = query_ids[picks]
        ids = (
            ids.astype(np.int64)
            if ids.dtype == np.int64
            else np.asarray([str(i).encode() for i in ids.tolist()], dtype=object)
        )
        logs.append(_request(model_name, SERVING_SIGNATURE, {IDS: ids}))
        logs.append(_request(model_name, VECTOR_SIGNATURE, {VECTORS: query_vectors[picks].astype(np.float32)}))
    # Every example index a caller may ask for (found or not), within the request size limit.
    logs.append(
        _request(model_name, EXAMPLES_SIGNATURE, {INDEX: np.arange(min(MAX_EXAMPLES, max_batch_size), dtype=np.int64)})
    )
    return logs[:MAX_RECORDS]


def query_vector_logs(model_name: str, query_ids: np.ndarray, max_batch_size: int) -> list:
    """query_vectors records (a --query-side partitioned shard): known ids, one per batch size."""
    from model_builder.contract import QUERY_VECTORS_SIGNATURE

    logs = []
    for size in (s for s in BATCH_SIZES if s <= max_batch_size):
        ids = query_ids[np.arange(size) % len(query_ids)]
        wire = ids if ids.dtype == np.int64 else np.asarray([str(i).encode() for i in ids.tolist()], dtype=object)
        logs.append(_request(model_name, QUERY_VECTORS_SIGNATURE, {IDS: wire}))
    return logs


def feature_logs(model_name: str, raw_inputs: dict[str, np.ndarray], max_batch_size: int) -> list:
    """search_by_features records: stored features of known ids, one per batch size (same limits as above)."""
    count = len(next(iter(raw_inputs.values())))
    logs = []
    for size in (s for s in BATCH_SIZES if s <= max_batch_size):
        picks = np.arange(size) % count
        inputs = {name: _wire(values[picks]) for name, values in raw_inputs.items()}
        logs.append(_request(model_name, FEATURES_SIGNATURE, inputs))
    return logs


def filtered_logs(
    model_name: str, query_ids: np.ndarray, candidate_ids: np.ndarray, widths: tuple[int, int, int], max_batch_size: int
) -> list:
    """search_filtered records (widths: tokens, exclude, numeric): rows without filters (the
    over-fetch path) next to rows whose allow token is in no namespace (they match nothing, so
    the exact path runs too), one record per batch size."""
    from model_builder.contract import FILTERED_SIGNATURE, padding_id

    tokens, exclude, numeric = widths
    logs = []
    for size in (s for s in BATCH_SIZES[:2] if s <= max_batch_size):
        picks = np.arange(size) % len(query_ids)
        allow = np.full((size, tokens), b"", dtype=object)
        allow[1::2, 0] = b"warmup=exact-path"
        pad = padding_id(candidate_ids)
        inputs = {
            IDS: _wire(query_ids[picks]) if query_ids.dtype != np.int64 else query_ids[picks],
            "allow": allow,
            "deny": np.full((size, tokens), b"", dtype=object),
            "exclude": np.full((size, exclude), pad, np.int64) if pad == -1 else np.full((size, exclude), b"", object),
            "lower": np.full((size, numeric), -np.inf, np.float32),
            "upper": np.full((size, numeric), np.inf, np.float32),
            "max_per": np.zeros(size, np.int32),
        }
        logs.append(_request(model_name, FILTERED_SIGNATURE, inputs))
    return logs


def _wire(values: np.ndarray) -> np.ndarray:
    return values if values.dtype != object else np.asarray([str(v).encode() for v in values.tolist()], dtype=object)


def write(version_dir: Path, logs: list) -> Path:
    """Writes the logs as a TFRecord file inside the version folder."""
    path = version_dir / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return path


def read(version_dir: Path) -> list:
    """Parses the warmup file back into PredictionLog protos (raises on corruption)."""
    path = version_dir / WARMUP_FILE
    if not path.is_file():
        return []
    return [prediction_log_pb2.PredictionLog.FromString(raw.numpy()) for raw in tf.data.TFRecordDataset(str(path))]
