"""Imports TensorFlow without its start-up noise, keeping every other line it prints.

TensorFlow's C++ INFO and WARNING logs are off unless TF_CPP_MIN_LOG_LEVEL says otherwise
(0 shows them all). Errors stay on, but on a machine without a GPU driver the CUDA probe logs
one ERROR line ("failed call to cuInit") that is not an error for a CPU-only build; it is
printed while TensorFlow imports and enumerates its devices, so that window's stderr is
captured and replayed without the probe lines below.

Some C++ code logs through absl directly, past TF_CPP_MIN_LOG_LEVEL (ScaNN's partitioner
training, TF's MLIR pass, all logged before absl::InitializeLog so absl writes every level to
stderr). `filter_native_logs` applies the same level to those lines for the CLI's whole run.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import tempfile
import threading

# Start-up lines that describe the machine, not a problem (TF 2.20 on CPU, any log level).
_PROBE_LINES = re.compile(
    r"failed call to cuInit|Could not find cuda drivers|oneDNN custom operations are on"
    r"|cpu_feature_guard|^To enable the following instructions|before absl::InitializeLog"
)


def quiet_import() -> None:
    """Imports tensorflow and initializes its devices, dropping only the probe lines from stderr."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules or os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        return  # already imported (its lines are out), or the user asked to see everything
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # the CUDA probe runs here
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [
                line for line in captured.read().decode(errors="replace").splitlines() if not _PROBE_LINES.search(line)
            ]
    if kept:
        print("\n".join(kept), file=sys.stderr)


# absl's C++ log line: severity letter, MMDD, time (raw seconds before absl::InitializeLog), thread id,
# file:line] (absl/log/internal/log_format.cc).
_NATIVE_LINE = re.compile(rb"^([IWEF])\d{4} [\d:.]+ +\d+ [^ \]]+:\d+\] ")
_ABSL_PREAMBLE = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
# What each TF_CPP_MIN_LOG_LEVEL hides (tensorflow/core/platform/default/logging.cc: 1 INFO, 2 +WARNING, 3 +ERROR).
_HIDDEN = {"0": b"", "1": b"I", "2": b"IW", "3": b"IWE"}


def filter_native_logs() -> None:
    """Drops absl log lines below TF_CPP_MIN_LOG_LEVEL (default 2) from this process's stderr, and its children's.

    fd 2 becomes a pipe read by a thread that forwards every other line unchanged; at exit fd 2
    is restored and the thread drains what is left.
    """
    hidden = _HIDDEN.get(os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2"), b"IW")
    if not hidden:
        return
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    original = os.dup(2)
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward() -> None:
        with os.fdopen(read_end, "rb") as pipe, os.fdopen(os.dup(original), "wb", buffering=0) as out:
            for line in pipe:
                match = _NATIVE_LINE.match(line)
                if (match and match.group(1) in hidden) or line.startswith(_ABSL_PREAMBLE):
                    continue
                out.write(line)

    thread = threading.Thread(target=forward, name="native-log-filter", daemon=True)
    thread.start()

    def restore() -> None:
        sys.stderr.flush()
        os.dup2(original, 2)  # the pipe's last write end closes: the thread reads to EOF
        thread.join(timeout=2)

    atexit.register(restore)
