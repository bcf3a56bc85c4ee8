"""Server configuration: one frozen dataclass built in main() from TF Serving's flag names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from model_builder.errors import ConfigError

# TF Serving's default is "no limit"; 64 MiB holds a 1024 x 16k float32 batch and still caps abuse.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ServerConfig:
    """Everything the local server needs; defaults mirror tensorflow_model_server's."""

    model_name: str
    model_base_path: Path
    host: str = "127.0.0.1"
    port: int = 8500
    rest_api_port: int = 8501
    file_system_poll_wait_seconds: float = 1.0
    enable_model_warmup: bool = True
    tensorflow_intra_op_parallelism: int = 0
    tensorflow_inter_op_parallelism: int = 0
    enable_batching: bool = False
    batching_parameters_file: Path | None = None
    max_num_load_retries: int = 5
    load_retry_interval_micros: int = 60_000_000
    num_request_iterations_for_warmup: int = 0
    monitoring_config_file: Path | None = None
    ssl_config_file: Path | None = None
    grpc_channel_arguments: tuple[tuple[str, object], ...] = ()
    version_labels: tuple[tuple[str, int], ...] = ()
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    # Request threads. With batching each waits for its batch, so this bounds how many requests can
    # be queued at once; TF Serving's C++ server has no such small bound (its queue answers
    # UNAVAILABLE when full), so keep it well above the clients a test or benchmark runs.
    max_workers: int = 64
    shutdown_grace_seconds: float = 10.0


def parse_channel_arguments(text: str) -> tuple[tuple[str, object], ...]:
    """Parses TF Serving's --grpc_channel_arguments ("k=v,k2=v2"); integers stay integers."""
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--grpc_channel_arguments: '{item}' is not key=value")
        pairs.append((key.strip(), int(value) if value.strip().lstrip("-").isdigit() else value.strip()))
    return tuple(pairs)


def parse_version_labels(text: str) -> tuple[tuple[str, int], ...]:
    """Parses --version_labels ("stable=3,canary=4")."""
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        label, sep, version = item.partition("=")
        if not sep or not version.strip().isdigit():
            raise ConfigError(f"--version_labels: '{item}' is not label=version")
        pairs.append((label.strip(), int(version)))
    return tuple(pairs)
