"""Wires the local server: version manager, gRPC servicers, REST, signals, graceful drain."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures

import grpc
from google.protobuf import json_format
from tensorflow_serving.apis import model_pb2

from model_builder.compat import tfs_config
from model_builder.compat.tfs_batching import BatchingParameters
from model_builder.errors import ConfigError
from model_builder.serve import rest
from model_builder.serve.batching import RunCounter
from model_builder.serve.config import RECEIVE_LIMIT_ARGUMENT, ServerConfig
from model_builder.serve.errors import ServingError
from model_builder.serve.metrics import Metrics
from model_builder.serve.model_config import ModelEntry
from model_builder.serve.model_set import ModelSet, entries_labels
from model_builder.serve.models import Batching, LoadRetries, ModelManager
from model_builder.serve.scheduler import SharedBatchScheduler
from model_builder.serve.servicer import ModelServicer, PredictionServicer, add_to_server, status_response

log = logging.getLogger("model_builder.serve")


def _configure_threads(cfg: ServerConfig) -> None:
    import tensorflow as tf

    # Same knobs as tensorflow_model_server's --tensorflow_{intra,inter}_op_parallelism (0 = TF's choice).
    tf.config.threading.set_intra_op_parallelism_threads(cfg.tensorflow_intra_op_parallelism)
    tf.config.threading.set_inter_op_parallelism_threads(cfg.tensorflow_inter_op_parallelism)


def _credentials(cfg: ServerConfig):
    if cfg.ssl_config_file is None:
        return None
    ssl = tfs_config.parse("SSLConfig", cfg.ssl_config_file, "--ssl_config_file")
    if not ssl.server_key or not ssl.server_cert:
        raise ConfigError(f"--ssl_config_file {cfg.ssl_config_file}: server_key and server_cert are required")
    return grpc.ssl_server_credentials(
        [(ssl.server_key.encode(), ssl.server_cert.encode())],
        root_certificates=ssl.custom_ca.encode() or None,
        require_client_auth=bool(ssl.client_verify),
    )


def _grpc_options(cfg: ServerConfig) -> list[tuple[str, object]]:
    """Server channel arguments with TF Serving 2.11's precedence for the receive limit.

    model_servers/server.cc (2.11.0) calls builder.SetMaxMessageSize(kint32max) and then adds each
    --grpc_channel_arguments pair with AddChannelArgument. Its gRPC (TensorFlow 2.11's pin,
    1.27.0-dev, the version string in TF 2.11's _pywrap_tensorflow_internal.so) appends the
    SetMaxMessageSize value after the options in ServerBuilder::BuildAndStart and logs "gRPC
    ServerBuilder receives multiple max_receive_message_length" when an option set it too (grpc
    PR #21597: "logs an error while maintaining the existing behavior"); its message-size filter
    takes the last occurrence (grpc PR #23293: "Earlier, the message_size filter would use the
    last matching argument"). So the flag's value is ignored; the same happens here.
    """
    extra = list(cfg.grpc_channel_arguments)
    if any(key == RECEIVE_LIMIT_ARGUMENT for key, _ in extra):
        log.error("gRPC ServerBuilder receives multiple max_receive_message_length")
        extra = [(key, value) for key, value in extra if key != RECEIVE_LIMIT_ARGUMENT]
    return [
        *extra,
        (RECEIVE_LIMIT_ARGUMENT, cfg.max_message_bytes),
        ("grpc.max_send_message_length", cfg.max_message_bytes),
    ]


def _batching(cfg: ServerConfig) -> Batching | None:
    """--enable_batching: parse the file and start the one shared scheduler, or refuse to start like server.cc."""
    if not cfg.enable_batching:
        if cfg.batching_parameters_file is not None:
            raise ConfigError(
                "--batching_parameters_file is set without --enable_batching (TF Serving refuses to start: "
                '"batching_parameters_file is set without setting enable_batching to true")'
            )
        return None
    params = BatchingParameters.from_file(cfg.batching_parameters_file)
    for name in ("max_batch_size", "max_enqueued_batches", "max_execution_batch_size"):
        if (getattr(params, name) or 0) < 0:
            # TF would read a negative into a size_t (a limit of 2^64); no real server runs with that.
            raise ConfigError(f"--batching_parameters_file {cfg.batching_parameters_file}: {name} is negative")
    try:
        scheduler = SharedBatchScheduler(params.threads(), params.thread_pool_name or "batch_threads")
    except ServingError as err:
        raise ConfigError(f"--batching_parameters_file {cfg.batching_parameters_file}: {err}") from None
    return Batching(params, scheduler)


class LocalServer:
    """The running server; `wait()` blocks until a signal ends it (--on_sigterm: as TF Serving 2.11, or drain)."""

    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
        self.metrics = Metrics()
        self.batching = _batching(cfg)
        if self.batching is not None:
            self.metrics.add_counter(RunCounter.NAME, lambda: self.batching.run_count.value)
        entries = cfg.models or (ModelEntry(cfg.model_name, cfg.model_base_path, labels=cfg.version_labels),)
        self.manager = ModelSet(
            [
                ModelManager(
                    entry.name,
                    entry.base_path,
                    warmup=cfg.enable_model_warmup,
                    labels=dict(entry.labels),
                    batching=self.batching,
                    load_retries=LoadRetries(cfg.max_num_load_retries, cfg.load_retry_interval_micros),
                    warmup_iterations=max(1, cfg.num_request_iterations_for_warmup),
                    policy=entry.policy,
                )
                for entry in entries
            ],
            entries_labels(cfg.models),
        )
        self._stopped = threading.Event()
        self._grpc: grpc.Server | None = None
        self._rest = None

    def start(self) -> None:
        """Loads the first version (blocking, with retries), then binds the ports -- TF Serving's order.

        model_servers/server.cc BuildAndStart: the gRPC and REST servers start only after
        ServerCore::Create returned, i.e. after the first load; if it failed the server exits
        (StartupError), so a client never sees a port that answers nothing but NOT_FOUND.
        """
        cfg = self.cfg
        metrics_path = tfs_config.metrics_path(cfg.monitoring_config_file)
        credentials = _credentials(cfg)
        _configure_threads(cfg)
        log.info(
            "loading %s from %s before opening ports%s",
            cfg.model_name,
            cfg.model_base_path,
            f" (batching: {self.batching.params})" if self.batching else "",
        )
        self.manager.load_first(cfg.file_system_poll_wait_seconds)
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=cfg.max_workers, thread_name_prefix="grpc"),
            options=_grpc_options(cfg),
        )
        add_to_server(
            self._grpc,
            PredictionServicer(self.manager, self.metrics, max_tensor_elements=cfg.max_message_bytes // 4),
            ModelServicer(self.manager, self.metrics),
        )
        address = f"{cfg.host}:{cfg.port}"
        bound = (
            self._grpc.add_secure_port(address, credentials) if credentials else self._grpc.add_insecure_port(address)
        )
        if not bound:
            raise ConfigError(
                f"cannot bind gRPC {address}: port in use or address not available; choose another --port"
            )
        self._grpc.start()
        if cfg.rest_api_port:
            try:
                self._rest = rest.start(
                    cfg.host, cfg.rest_api_port, self._status_json, metrics_path, self.metrics.render
                )
            except OSError as err:
                self._grpc.stop(0)
                raise ConfigError(
                    f"cannot bind REST {cfg.host}:{cfg.rest_api_port}: {err.strerror}; choose another --rest_api_port"
                ) from None
        self.manager.start(cfg.file_system_poll_wait_seconds)
        log.info(
            "serving %s from %s on gRPC %s%s (TLS %s)",
            cfg.model_name,
            cfg.model_base_path,
            address,
            f", REST {cfg.host}:{cfg.rest_api_port}" if cfg.rest_api_port else "",
            "on" if credentials else "off",
        )

    def _status_json(self, name: str, version: int | None, label: str | None) -> tuple[int, str]:
        spec = model_pb2.ModelSpec(name=name, version_label=label or "")
        if version is not None:
            spec.version.value = version
        try:
            response = status_response(self.manager, spec)
        except ServingError as err:
            return (404 if err.code == grpc.StatusCode.NOT_FOUND else 400), '{ "error": "' + str(err).replace(
                '"', "'"
            ) + '" }'
        return 200, json_format.MessageToJson(
            response, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )

    def stop(self) -> None:
        """Stops taking new RPCs, lets in-flight ones finish (bounded by the grace period), then exits."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        log.info("shutting down: draining in-flight requests (up to %.0f s)", self.cfg.shutdown_grace_seconds)
        if self._grpc:
            self._grpc.stop(self.cfg.shutdown_grace_seconds).wait()
        if self.batching:
            self.batching.scheduler.stop()  # past the grace period: nothing queued may keep a request thread waiting
        if self._rest:
            self._rest.shutdown()
        self.manager.stop()
        log.info("stopped")

    def wait(self) -> None:
        """Blocks until the process ends: with --on_sigterm ignore at SIGINT or SIGKILL, else drains first."""
        if self.cfg.on_sigterm == "ignore":
            # config.SIGTERM_BEHAVIOURS: the pod's PID 1 drops SIGTERM, nothing handles SIGINT.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            log.info("SIGTERM is ignored like TF Serving 2.11 in its image; SIGINT or SIGKILL end the server")
            threading.Event().wait()
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
        while not done.wait(0.5):
            pass
        self.stop()
