"""Server configuration: one frozen dataclass built in main() from TF Serving's flag names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from model_builder.errors import ConfigError
from model_builder.serve.model_config import ModelEntry

# TF Serving 2.11 receives messages up to 2 GiB - 1: model_servers/server.cc calls
# builder.SetMaxMessageSize(tensorflow::kint32max), and a grpc.max_receive_message_length given in
# --grpc_channel_arguments does not lower it (server.py _grpc_options). The local server defaults
# to the same, so it is no kinder than production to a huge request; --max_message_bytes is a
# stand-in-only knob that TF Serving 2.11 has no equivalent of.
DEFAULT_MAX_MESSAGE_BYTES = 2**31 - 1
RECEIVE_LIMIT_ARGUMENT = "grpc.max_receive_message_length"
# What --on_sigterm does. "ignore" is TF Serving 2.11 as its image runs it: the entrypoint
# /usr/bin/tf_serving_entrypoint.sh is bash without exec, so bash is PID 1 and has no SIGTERM
# handler (the kernel drops the signal for a PID namespace's init), and tensorflow_model_server
# installs none either (tensorflow/serving issue 1853): the process ends only at SIGKILL. SIGINT
# (Ctrl-C, reaching the whole foreground group) takes its default action: immediate exit, no drain.
# "drain" is a graceful server (GOAWAY, in-flight calls finish): not what 2.11 does.
SIGTERM_BEHAVIOURS = ("ignore", "drain")


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
    on_sigterm: str = "ignore"
    # --model_config_file, parsed: when non-empty it replaces model_name/model_base_path (model_config.py).
    models: tuple[ModelEntry, ...] = ()


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
