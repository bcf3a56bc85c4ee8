"""Imports ScaNN's TensorFlow ops once, with an error that says how to fix a broken install.

Loading any SavedModel with Scann>* ops requires this import first: it registers
the ops with TensorFlow (otherwise: "Op type not registered 'Scann>TensorsToScann'").
"""

from __future__ import annotations

from model_builder.errors import ConfigError

try:
    import scann  # noqa: F401  (registers the ops)
    from scann.scann_ops.py import scann_ops
except (ImportError, OSError, AttributeError) as err:  # pragma: no cover - exercised only on broken installs
    raise ConfigError(
        f"cannot load ScaNN's TensorFlow ops ({err}); scann is ABI-locked to one TF minor version: "
        "install the pinned pair from requirements/build.txt (make venv)"
    ) from None

__all__ = ["scann_ops"]
