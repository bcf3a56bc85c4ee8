"""Project constants read from versions.env, the repository's single source of truth."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from model_builder.errors import ConfigError

_ROOT = Path(__file__).resolve().parent.parent
_DEFAULT_FILE = _ROOT / "versions.env"
# The serving image's batching file (docker/serving copies it to /etc/tfserving/; the builder
# image keeps it at the same place relative to the package).
IMAGE_BATCHING_FILE = _ROOT / "k8s" / "base" / "config" / "batching_parameters.txt"


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    """Returns the KEY=VALUE pairs of versions.env.

    The file is found next to the package (repo checkout, Docker images copy it
    there) or at $SCANN_SERVING_VERSIONS_FILE.
    """
    path = Path(os.environ.get("SCANN_SERVING_VERSIONS_FILE", _DEFAULT_FILE))
    if not path.is_file():
        raise ConfigError(
            f"{path} not found: model_builder needs versions.env from the repository root "
            "(set SCANN_SERVING_VERSIONS_FILE to its path)"
        )
    pairs: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            pairs[key.strip()] = value.strip()
    return pairs


def model_name() -> str:
    """Default model name (TF Serving's --model_name)."""
    return versions()["MODEL_NAME"]


def grpc_port() -> int:
    """Default gRPC port, the same as TF Serving's."""
    return int(versions()["GRPC_PORT"])


def rest_port() -> int:
    """Default REST port, the same as TF Serving's."""
    return int(versions()["REST_PORT"])
