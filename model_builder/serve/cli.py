"""`python -m model_builder serve`: the local server, with tensorflow_model_server's flag names.

Both spellings work (`--model_name` / `--model-name`), except the base path:
`--model_base_path` is TF Serving's (the folder holding version folders) and
`--model-base-path` is ours (the folder holding the model-name folder, as
written by `build --out`). `--model_config_file` (a ModelServerConfig text proto:
several models, version policies, labels) replaces both and --model_name, as in
TF Serving 2.11 (model_servers/server.cc).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from model_builder import settings
from model_builder.errors import ConfigError
from model_builder.serve.config import (
    DEFAULT_MAX_MESSAGE_BYTES,
    SIGTERM_BEHAVIOURS,
    ServerConfig,
    parse_channel_arguments,
    parse_version_labels,
)
from model_builder.serve.model_config import parse_model_config_file


def _flag_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


def add_serve(sub) -> None:
    """Registers the serve subcommand."""
    p = sub.add_parser(
        "serve",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="serve a model over TF Serving's gRPC API (development/test stand-in)",
        description=__doc__.splitlines()[0] + " Production serving is TF Serving in the "
        "google/tf-serving-scann image; this server mirrors its API and behaviour.",
    )
    p.add_argument(
        "--model-base-path",
        dest="parent_base",
        type=Path,
        help="folder holding MODEL_NAME/<version>/ (as `build --out`)",
    )
    p.add_argument(
        "--model_base_path",
        dest="tfs_base",
        type=Path,
        help="TF Serving's meaning: the folder holding <version>/ folders",
    )
    p.add_argument("--model_name", "--model-name", dest="model_name", default=settings.model_name())
    p.add_argument(
        "--model_config_file",
        type=Path,
        help="ModelServerConfig text proto (models, base_path, model_version_policy, version_labels); "
        "when given, --model_name and the base paths are ignored, as TF Serving 2.11 does",
    )
    p.add_argument(
        "--model_config_file_poll_wait_seconds",
        type=float,
        default=0.0,
        help="re-read --model_config_file every N seconds: not supported by this stand-in (only 0)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in containers)")
    p.add_argument("--port", type=int, default=settings.grpc_port(), help="gRPC port")
    p.add_argument(
        "--rest_api_port",
        "--rest-api-port",
        dest="rest_api_port",
        type=int,
        default=settings.rest_port(),
        help="REST port (0 disables)",
    )
    p.add_argument(
        "--file_system_poll_wait_seconds", type=float, default=1.0, help="seconds between scans for new versions"
    )
    p.add_argument(
        "--enable_model_warmup",
        type=_flag_bool,
        nargs="?",
        const=True,
        default=True,
        help="replay assets.extra/tf_serving_warmup_requests before AVAILABLE",
    )
    p.add_argument(
        "--tensorflow_intra_op_parallelism", type=int, default=0, help="threads inside one op (0 = TF default)"
    )
    p.add_argument(
        "--tensorflow_inter_op_parallelism", type=int, default=0, help="ops run in parallel (0 = TF default)"
    )
    p.add_argument(
        "--enable_batching",
        type=_flag_bool,
        nargs="?",
        const=True,
        default=False,
        help="merge concurrent requests per signature like TF Serving 2.11's BatchingSession (queues, "
        "splitting, capacity, one status per merged batch)",
    )
    p.add_argument(
        "--batching_parameters_file",
        type=Path,
        help="TF Serving's BatchingParameters text proto (needs --enable_batching); the image ships "
        "k8s/base/config/batching_parameters.txt",
    )
    p.add_argument(
        "--max_num_load_retries", type=int, default=5, help="retries of a failed load (TF Serving's default)"
    )
    p.add_argument(
        "--load_retry_interval_micros",
        type=int,
        default=60_000_000,
        help="wait between load retries (TF Serving's default: one minute; negative: no wait)",
    )
    p.add_argument(
        "--num_request_iterations_for_warmup",
        type=int,
        default=0,
        help="times each warmup record is replayed (0: once)",
    )
    p.add_argument(
        "--monitoring_config_file",
        type=Path,
        help="MonitoringConfig text proto; enables Prometheus metrics on the REST port",
    )
    p.add_argument(
        "--ssl_config_file",
        type=Path,
        help="SSLConfig text proto (server_key, server_cert, custom_ca, client_verify): TLS on gRPC",
    )
    p.add_argument(
        "--grpc_channel_arguments",
        default="",
        help="k=v,... gRPC server arguments, e.g. grpc.max_connection_age_ms=60000",
    )
    p.add_argument(
        "--version_labels", default="", help="label=version,... (TF Serving keeps these in its model config)"
    )
    p.add_argument(
        "--max_message_bytes",
        type=int,
        default=DEFAULT_MAX_MESSAGE_BYTES,
        help="largest gRPC request/response (default: TF Serving 2.11's 2 GiB - 1, which its flags cannot lower; "
        "a smaller value is a stand-in-only knob)",
    )
    p.add_argument(
        "--on_sigterm",
        choices=SIGTERM_BEHAVIOURS,
        default="ignore",
        help="ignore: TF Serving 2.11 as its image runs it (SIGTERM does nothing, SIGINT exits at once, "
        "the pod ends at SIGKILL); drain: stop taking RPCs and let in-flight ones finish (not 2.11's behaviour)",
    )
    p.add_argument(
        "--shutdown_grace_seconds",
        type=float,
        default=10.0,
        help="--on_sigterm drain: how long in-flight requests may finish",
    )
    p.set_defaults(run=_run)


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """Builds the frozen ServerConfig; the base path rules are explained in the module docstring."""
    models = ()
    if args.model_config_file_poll_wait_seconds > 0:
        # TF Serving re-reads the file and adds/removes models (server.cc PollFilesystemAndReloadConfig);
        # this stand-in loads it once, so refusing is kinder than silently not reloading.
        raise ConfigError(
            "--model_config_file_poll_wait_seconds: re-reading the config file is not supported by the local "
            "server; leave it 0 and restart the server to change models"
        )
    if args.model_config_file is not None:
        # server.cc: a non-empty --model_config_file wins; --model_name/--model_base_path are not read.
        models = parse_model_config_file(args.model_config_file)
        base = models[0].base_path
        args.model_name = models[0].name
    elif args.tfs_base is not None:
        base = args.tfs_base
    elif args.parent_base is not None:
        base = args.parent_base / args.model_name
    else:
        raise ConfigError(
            "give --model-base-path (folder with MODEL_NAME/<version>/) or --model_base_path (folder with <version>/)"
        )
    return ServerConfig(
        model_name=args.model_name,
        model_base_path=base,
        host=args.host,
        port=args.port,
        rest_api_port=args.rest_api_port,
        file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
        enable_model_warmup=args.enable_model_warmup,
        tensorflow_intra_op_parallelism=args.tensorflow_intra_op_parallelism,
        tensorflow_inter_op_parallelism=args.tensorflow_inter_op_parallelism,
        enable_batching=args.enable_batching,
        batching_parameters_file=args.batching_parameters_file,
        max_num_load_retries=args.max_num_load_retries,
        load_retry_interval_micros=args.load_retry_interval_micros,
        num_request_iterations_for_warmup=args.num_request_iterations_for_warmup,
        monitoring_config_file=args.monitoring_config_file,
        ssl_config_file=args.ssl_config_file,
        grpc_channel_arguments=parse_channel_arguments(args.grpc_channel_arguments),
        version_labels=parse_version_labels(args.version_labels),
        max_message_bytes=args.max_message_bytes,
        shutdown_grace_seconds=args.shutdown_grace_seconds,
        on_sigterm=args.on_sigterm,
        models=models,
    )


def _run(args: argparse.Namespace) -> int:
    from model_builder.serve.models import StartupError
    from model_builder.serve.server import LocalServer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = LocalServer(config_from_args(args))
    try:
        server.start()
    except StartupError as err:
        # tensorflow_model_server prints this line and exits non-zero (model_servers/main.cc).
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 1
    server.wait()
    return 0
