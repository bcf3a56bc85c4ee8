"""Imports TensorFlow without its start-up noise, keeping every other line it prints.

TensorFlow's C++ INFO and WARNING logs are off unless TF_CPP_MIN_LOG_LEVEL says otherwise
(0 shows them all). Errors stay on, but on a machine without a GPU driver the CUDA probe logs
one ERROR line ("failed call to cuInit") that is not an error for a CPU-only build; it is
printed while TensorFlow imports and enumerates its devices, so that window's stderr is
captured and replayed without the probe lines below. Nothing outside that window is touched.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

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
