"""`python -m model_builder <command>`: build, train, verify, inspect, check-compat, serve, demo.

Configuration is parsed once in main() into frozen dataclasses and passed down.
Errors of ours print one line `error: ...` and exit 2 (bad input) or 1 (a gate failed).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from model_builder import settings, tf_startup
from model_builder.cli_args import add_config_arguments, config_from_args
from model_builder.errors import BuilderError

_FORMATTER = argparse.ArgumentDefaultsHelpFormatter


def _add_build(sub) -> None:
    from model_builder.build_config import BuildConfig
    from model_builder.index.config import IndexConfig
    from model_builder.towers.training import TrainConfig

    p = sub.add_parser(
        "build",
        formatter_class=_FORMATTER,
        help="train (or import), index, export and verify a model version",
        description="Builds a verified, versioned ScaNN retrieval SavedModel in TF Serving's layout.",
    )
    add_config_arguments(p, BuildConfig, "build")
    add_config_arguments(p, TrainConfig, "training")
    add_config_arguments(p, IndexConfig, "index")
    p.set_defaults(run=_run_build)


def _run_build(args: argparse.Namespace) -> int:
    from model_builder.build_config import BuildConfig
    from model_builder.index.config import IndexConfig
    from model_builder.pipeline import build
    from model_builder.towers.training import TrainConfig

    cfg = config_from_args(BuildConfig, args)
    if cfg.shards > 1:
        from model_builder.sharding import build_sharded

        sharded = build_sharded(cfg, config_from_args(TrainConfig, args), config_from_args(IndexConfig, args), _log)
        dirs = [str(d) for d in sharded.version_dirs]
        print(json.dumps({"version_dirs": dirs, "version": sharded.version, "manifest": str(sharded.manifest)}))
        return 0
    result = build(cfg, config_from_args(TrainConfig, args), config_from_args(IndexConfig, args), log=_log)
    print(json.dumps({"version_dir": str(result.version_dir), "version": result.info.get("version")}))
    return 0


def _add_train(sub) -> None:
    from model_builder.build_config import BuildConfig
    from model_builder.towers.training import TrainConfig

    p = sub.add_parser(
        "train",
        formatter_class=_FORMATTER,
        help="train and evaluate the towers; write user/item embeddings (.npz)",
        description="Trains the two towers and writes users.npz and items.npz (ids + vectors) for `build --candidates`.",
    )
    p.add_argument("--embeddings-out", default="build/embeddings", help="folder for users.npz and items.npz")
    add_config_arguments(p, BuildConfig, "data")
    add_config_arguments(p, TrainConfig, "training")
    p.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    import numpy as np

    from model_builder.build_config import BuildConfig
    from model_builder.towers.prepare import prepare_trained
    from model_builder.towers.training import TrainConfig

    cfg = config_from_args(BuildConfig, args)
    prepared = prepare_trained(cfg, config_from_args(TrainConfig, args), _log)
    out = Path(args.embeddings_out)
    out.mkdir(parents=True, exist_ok=True)
    cat = prepared.catalogue
    np.savez(
        out / "items.npz",
        ids=cat.candidate_ids.astype(str) if cat.candidate_ids.dtype == object else cat.candidate_ids,
        vectors=cat.candidate_vectors,
    )
    np.savez(
        out / "users.npz",
        ids=cat.query_ids.astype(str) if cat.query_ids.dtype == object else cat.query_ids,
        vectors=cat.vectors_of_queries(),
    )
    (out / "quality.json").write_text(json.dumps(prepared.quality, indent=2, default=str) + "\n")
    _log(f"wrote {out}/items.npz, users.npz, quality.json")
    return 0


def _add_verify(sub) -> None:
    from model_builder.index import recall

    p = sub.add_parser(
        "verify",
        formatter_class=_FORMATTER,
        help="recall gate: compare a version's signatures with exact search",
        description="Loads a version folder and checks recall@k of both search signatures against exact search.",
    )
    p.add_argument("version_dir", type=Path, help="a version folder: BASE/NAME/VERSION")
    p.add_argument("--target-recall", type=float, default=recall.DEFAULT_TARGET_RECALL, help="minimum recall@k")
    p.add_argument("--queries", type=int, default=recall.DEFAULT_QUERIES, help="number of held-out queries")
    p.add_argument(
        "--tuning-queries",
        type=Path,
        default=None,
        help="the file the version was built with (build --tuning-queries; its sha256 is checked against "
        "build_info.json): search_by_vector is scored on its held-out part instead of noisy catalogue vectors",
    )
    p.add_argument("--json", action="store_true", help="print the report as one JSON line")
    p.set_defaults(run=_run_verify)


def _run_verify(args: argparse.Namespace) -> int:
    from model_builder import verify
    from model_builder.errors import DataError

    if not (args.version_dir / "saved_model.pb").is_file():
        raise DataError(f"{args.version_dir}: no saved_model.pb (expected a version folder BASE/NAME/VERSION)")
    vector_queries = None
    if args.tuning_queries is not None:
        from model_builder.export.version_store import read_build_info
        from model_builder.index.tuning_queries import held_out_for_version

        recorded = read_build_info(args.version_dir).get("tuning_queries")
        vector_queries = held_out_for_version(args.tuning_queries, recorded)
    report = verify.verify_version(args.version_dir, args.target_recall, args.queries, vector_queries=vector_queries)
    if args.json:
        print(json.dumps(report))
    else:
        for name, value in report["recall_at_k"].items():
            print(f"{name}: recall@{report['k']} = {value:.4f} (target {args.target_recall})")
        vector = report["vector_queries"]
        print(f"search_by_vector scored on {vector['rows']} vectors: {vector['source']}")
        print("PASSED" if report["passed"] else "FAILED: " + "; ".join(verify.failures(report)))
    return 0 if report["passed"] else 1


def _add_inspect(sub) -> None:
    p = sub.add_parser("inspect", formatter_class=_FORMATTER, help="print a version's build_info.json and signatures")
    p.add_argument("version_dir", type=Path)
    p.add_argument(
        "--frontier",
        action="store_true",
        help="print only the index search's frontier as a table (every structure tried: family, knobs, recall, cost)",
    )
    p.set_defaults(run=_run_inspect)


def _run_inspect(args: argparse.Namespace) -> int:
    from model_builder.export.version_store import read_build_info

    info = read_build_info(args.version_dir)
    if not info:
        from model_builder.errors import DataError

        raise DataError(f"{args.version_dir}: no assets.extra/build_info.json (not a version built by model_builder)")
    if args.frontier:
        from model_builder.index.frontier_table import render

        print(render(info.get("index_search")))
    else:
        print(json.dumps(info, indent=2, sort_keys=True))
    return 0


def _add_shard_job(sub) -> None:
    p = sub.add_parser(
        "shard-job",
        formatter_class=_FORMATTER,
        help="build one shard from candidates in S3 and upload it (a pod of an Indexed Job)",
        description="One shard of `build --shards K` (k8s/README 'Sharding'): downloads --input, builds shard "
        "--shard-index exactly as `build --shards K` does, uploads OUTPUT/<name>-shard-<i>/<version>/ and then "
        "its .published marker. Build arguments (--model-name, --version, index flags, ...) follow `--`.",
    )
    p.add_argument(
        "--input",
        required=True,
        help="s3://bucket/key of the candidates .npz (ids + vectors), or s3://bucket/prefix/ (ending in /) "
        "of part files *.npz, streamed keeping only this shard's rows (needs --query-side partitioned "
        "and --query item)",
    )
    p.add_argument("--output", required=True, help="s3://bucket/prefix the shard versions go under")
    p.add_argument("--shards", type=int, required=True, help="K, the number of shards")
    p.add_argument(
        "--shard-index",
        type=int,
        default=None,
        help="this pod's shard; default: $JOB_COMPLETION_INDEX (set by an Indexed Job)",
    )
    p.add_argument("--scratch", default=tempfile.gettempdir(), help="local working space (an emptyDir in the Job)")
    p.add_argument("build_args", nargs=argparse.REMAINDER, help="-- then `build` arguments")
    p.set_defaults(run=_run_shard_job)


def _run_shard_job(args: argparse.Namespace) -> int:
    import os

    from model_builder.build_config import BuildConfig
    from model_builder.errors import ConfigError
    from model_builder.index.config import IndexConfig
    from model_builder.shard_job import S3Location, ShardJob, run
    from model_builder.towers.training import TrainConfig

    index = args.shard_index if args.shard_index is not None else os.environ.get("JOB_COMPLETION_INDEX")
    if index is None or not str(index).isdigit():
        raise ConfigError(f"no shard: pass --shard-index or set JOB_COMPLETION_INDEX (got {index!r})")
    rest = args.build_args[1:] if args.build_args[:1] == ["--"] else args.build_args
    build = parser().parse_args(["build", "--out", args.scratch, *rest])
    job = ShardJob(
        S3Location.parse(args.input, "--input"),
        S3Location.parse(args.output, "--output"),
        args.shards,
        int(index),
        Path(args.scratch),
        parts=args.input.endswith("/"),
    )
    cfg = config_from_args(BuildConfig, build)
    marker = run(job, cfg, config_from_args(TrainConfig, build), config_from_args(IndexConfig, build), _log)
    print(json.dumps({"published": f"s3://{marker.path}", "shard": job.index, "version": cfg.version}))
    return 0


def _log(message: str) -> None:
    print(message, flush=True)


def parser() -> argparse.ArgumentParser:
    """The full CLI parser (subcommands register themselves)."""
    from model_builder.compat.cli import add_check_compat
    from model_builder.serve.cli import add_serve

    p = argparse.ArgumentParser(
        prog="python -m model_builder", description=__doc__.splitlines()[0], formatter_class=_FORMATTER
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _add_build,
        _add_train,
        _add_verify,
        _add_inspect,
        _add_shard_job,
        add_check_compat,
        add_serve,
        _add_demo,
    ):
        add(sub)
    return p


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo", formatter_class=_FORMATTER, help="build MovieLens 100K, serve it locally, query it over gRPC"
    )
    p.add_argument("--out", default="models", help="model base path")
    p.add_argument("--model-name", default=settings.model_name())
    p.add_argument(
        "--port",
        type=int,
        default=settings.grpc_port(),
        help="gRPC port of the first local server (the second uses PORT+2)",
    )
    p.add_argument(
        "--rest-port",
        type=int,
        default=settings.rest_port(),
        help="REST port of the first local server (the second uses REST_PORT+2)",
    )
    p.set_defaults(run=lambda a: __import__("model_builder.demo", fromlist=["run"]).run(a))


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    tf_startup.filter_native_logs()
    tf_startup.quiet_import()  # before anything imports TensorFlow
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except BuilderError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
