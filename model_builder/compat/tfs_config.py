"""TF Serving's text-proto config files, parsed with the same schema (field names) it uses.

tensorflow-serving-api ships no Python classes for MonitoringConfig,
BatchingParameters or SSLConfig, so the subsets we read are declared here as
descriptors and parsed with protobuf's own text_format: a file TF Serving
accepts parses the same way here, and a typo fails the same way.
"""

from __future__ import annotations

import functools
from pathlib import Path

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,
)

from model_builder.errors import ConfigError

_F = descriptor_pb2.FieldDescriptorProto
_SCHEMA = {
    "PrometheusConfig": [("enable", 1, _F.TYPE_BOOL, None), ("path", 2, _F.TYPE_STRING, None)],
    "MonitoringConfig": [("prometheus_config", 1, _F.TYPE_MESSAGE, ".scann_serving.tfs.PrometheusConfig")],
    # Every field of TF Serving 2.11's BatchingParameters (servables/tensorflow/session_bundle_config.proto),
    # with its numbers: a field 2.11 does not know fails to parse here as it fails there.
    "BatchingParameters": [
        ("max_batch_size", 1, _F.TYPE_MESSAGE, ".google.protobuf.Int64Value"),
        ("batch_timeout_micros", 2, _F.TYPE_MESSAGE, ".google.protobuf.Int64Value"),
        ("max_enqueued_batches", 3, _F.TYPE_MESSAGE, ".google.protobuf.Int64Value"),
        ("num_batch_threads", 4, _F.TYPE_MESSAGE, ".google.protobuf.Int64Value"),
        ("thread_pool_name", 5, _F.TYPE_MESSAGE, ".google.protobuf.StringValue"),
        ("allowed_batch_sizes", 6, _F.TYPE_INT64, "repeated"),
        ("pad_variable_length_inputs", 7, _F.TYPE_BOOL, None),
        ("enable_large_batch_splitting", 8, _F.TYPE_MESSAGE, ".google.protobuf.BoolValue"),
        ("max_execution_batch_size", 9, _F.TYPE_MESSAGE, ".google.protobuf.Int64Value"),
    ],
    "SSLConfig": [
        ("server_key", 1, _F.TYPE_STRING, None),
        ("server_cert", 2, _F.TYPE_STRING, None),
        ("custom_ca", 3, _F.TYPE_STRING, None),
        ("client_verify", 4, _F.TYPE_BOOL, None),
    ],
}


@functools.lru_cache(maxsize=1)
def _classes() -> dict:
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(
        descriptor_pb2.FileDescriptorProto.FromString(wrappers_pb2.DESCRIPTOR.serialized_pb).SerializeToString()
    )
    file = descriptor_pb2.FileDescriptorProto(
        name="scann_serving_tfs_config.proto",
        package="scann_serving.tfs",
        dependency=["google/protobuf/wrappers.proto"],
        syntax="proto3",
    )
    for name, fields in _SCHEMA.items():
        message = file.message_type.add(name=name)
        for field_name, number, kind, extra in fields:
            label = _F.LABEL_REPEATED if extra == "repeated" else _F.LABEL_OPTIONAL
            f = message.field.add(name=field_name, number=number, type=kind, label=label)
            if kind == _F.TYPE_MESSAGE:
                f.type_name = extra
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"scann_serving.tfs.{name}"))
        for name in _SCHEMA
    }


def parse(kind: str, path: Path, flag: str):
    """Parses a config file of message type `kind`; errors name the flag and the file."""
    try:
        return text_format.Parse(Path(path).read_text(), _classes()[kind]())
    except OSError as err:
        raise ConfigError(f"{flag} {path}: {err.strerror}") from None
    except text_format.ParseError as err:
        raise ConfigError(f"{flag} {path}: not a valid {kind} text proto: {err}") from None


def metrics_path(monitoring_config_file: Path | None) -> str | None:
    """The Prometheus path if the monitoring config enables it, else None."""
    if monitoring_config_file is None:
        return None
    prometheus = parse("MonitoringConfig", monitoring_config_file, "--monitoring_config_file").prometheus_config
    return (prometheus.path or "/monitoring/prometheus/metrics") if prometheus.enable else None
