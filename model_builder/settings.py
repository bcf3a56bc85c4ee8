"""Project constants read from versions.env, the repository's single source of truth."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from model_builder.errors import ConfigError

_DEFAULT_FILE = Path(__file__).resolve().parent.parent / "versions.env"


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
