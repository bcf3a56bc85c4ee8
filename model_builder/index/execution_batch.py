"""The batch size TF Serving's batcher executes, for `--optimize throughput`.

TF Serving merges concurrent requests into batches of at most
`max_execution_batch_size` rows (with `enable_large_batch_splitting`; see
k8s/base/config/batching_parameters.txt): that is the call a throughput-tuned
index is timed at. The file is read with the same parser and queue rules the
serving-rules gate and the local server use (compat/tfs_batching.py).
"""

from __future__ import annotations

from pathlib import Path

from model_builder import settings

BATCHING_FILE = settings.IMAGE_BATCHING_FILE
# Only where model_builder runs without the repository's k8s/ folder (the builder image ships it).
FALLBACK_EXECUTION_BATCH_SIZE = 8


def read_execution_batch_size(path: Path) -> int:
    """The largest batch TF Serving executes with this BatchingParameters file."""
    from model_builder.compat.tfs_batching import BatchingParameters

    queue = BatchingParameters.from_file(path).queue_options()
    # Without splitting, a merged batch grows up to max_batch_size (the input limit).
    return queue.max_execution_batch_size if queue.enable_large_batch_splitting else queue.input_batch_size_limit


def execution_batch_size() -> int:
    """The shipped batching file's execution batch (the fallback where the file is absent)."""
    return read_execution_batch_size(BATCHING_FILE) if BATCHING_FILE.is_file() else FALLBACK_EXECUTION_BATCH_SIZE
