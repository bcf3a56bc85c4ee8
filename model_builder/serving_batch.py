"""The batch size TF Serving's batcher executes, for `--optimize throughput`.

TF Serving merges concurrent requests into batches of at most
`max_execution_batch_size` rows (with `enable_large_batch_splitting`; see
k8s/base/config/batching_parameters.txt): that is the call a throughput-tuned
index is timed at. The file is read from the repository checkout when it is
there; the builder image ships model_builder/ without k8s/, so the value is also
kept here (tests/model/test_index_search.py checks that the two agree).
"""

from __future__ import annotations

import re
from pathlib import Path

BATCHING_FILE = Path(__file__).resolve().parent.parent / "k8s" / "base" / "config" / "batching_parameters.txt"
FALLBACK_EXECUTION_BATCH_SIZE = 8
_FIELD = re.compile(r"^\s*max_execution_batch_size\s*\{\s*value:\s*(\d+)\s*\}", re.MULTILINE)


def read_execution_batch_size(path: Path) -> int | None:
    """max_execution_batch_size from a BatchingParameters text proto, or None when it has none."""
    match = _FIELD.search(path.read_text())
    return int(match.group(1)) if match else None


def execution_batch_size() -> int:
    """The shipped batching file's max_execution_batch_size (the fallback where the file is absent)."""
    if BATCHING_FILE.is_file():
        return read_execution_batch_size(BATCHING_FILE) or FALLBACK_EXECUTION_BATCH_SIZE
    return FALLBACK_EXECUTION_BATCH_SIZE
