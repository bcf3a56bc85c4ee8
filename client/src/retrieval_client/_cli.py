"""`retrieval-client` / `python -m retrieval_client`: the client from a shell.

Exit codes: 0 success; 2 bad arguments, or a request the server rejected as
INVALID_ARGUMENT / NOT_FOUND (one line on stderr naming the problem);
1 any other failure (server unavailable, timeout, ...). With --json, errors
are also one JSON line on stdout: {"error": {"code": ..., "type": ...,
"details": ..., "hint": ..., "exit_code": ...}}.

--version prints this program's version; the model version is --model-version
(`--version N` after a command still works, with a deprecation warning).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import numpy as np

from ._base import DEFAULT_MODEL, DEFAULT_TIMEOUT_S, DEFAULT_WAIT_TIMEOUT_S
from ._client import RetrievalClient
from ._errors import InvalidRequestError, ModelNotFoundError, RetrievalError
from ._filters import range_flags, token_flags
from ._types import Examples, ModelMetadata, SearchResult, TlsConfig, VersionStatus
from ._version import __version__

DEFAULT_TARGET = "127.0.0.1:8500"
EXIT_FAILURE = 1
EXIT_USAGE = 2
_PROGRAM_VERSION = object()  # --version given without a value


class UsageError(ValueError):
    """A command line argparse refused; main() reports it like any bad argument."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(f"{message} (see --help)")
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and still exit code 2), as JSON with --json."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(self.prog, message)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows "(default: ...)" for every option that has a meaningful default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


def _common_options() -> _Parser:
    common = _Parser(add_help=False)
    group = common.add_argument_group("server")
    group.add_argument(
        "--target", default=DEFAULT_TARGET, help="host:port or dns:///name.namespace.svc.cluster.local:port"
    )
    group.add_argument("--model", default=DEFAULT_MODEL, help="model name on the server")
    pin = group.add_mutually_exclusive_group()
    pin.add_argument("--model-version", type=int, default=None, help="model version (default: the latest available)")
    pin.add_argument(
        "--model-version-label",
        "--version-label",
        dest="model_version_label",
        default=None,
        help="model version label (TF Serving's version_labels)",
    )
    # Before 0.2 `--version N` meant the model version: still accepted, with a warning.
    # Without a value it prints the program version, as at the top level.
    pin.add_argument(
        "--version",
        dest="legacy_version",
        metavar="N",
        nargs="?",
        const=_PROGRAM_VERSION,
        default=None,
        help="without N: print the program version; with N: deprecated, use --model-version",
    )
    group.add_argument("--json", action="store_true", help="print JSON instead of a table")
    group.add_argument(
        "--header",
        dest="headers",
        metavar="KEY=VALUE",
        action="append",
        type=_header,
        default=[],
        help="gRPC metadata sent with every call, e.g. 'authorization=Bearer TOKEN'; repeat for more",
    )
    tls = common.add_argument_group("TLS (any of these flags turns TLS on)")
    tls.add_argument("--tls", action="store_true", help="use TLS with the system's CA roots")
    tls.add_argument("--tls-ca", metavar="PATH", default=None, help="PEM CA bundle that signed the server certificate")
    tls.add_argument("--tls-cert", metavar="PATH", default=None, help="PEM client certificate (mutual TLS)")
    tls.add_argument("--tls-key", metavar="PATH", default=None, help="PEM client key (mutual TLS)")
    tls.add_argument("--tls-server-name", metavar="NAME", default=None, help="name to verify in the server certificate")
    return common


def _deadline(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout-s", type=float, default=DEFAULT_TIMEOUT_S, help="deadline of each RPC, in seconds")


def _k(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-k", "--k", type=int, default=None, help="neighbours per query (default: all K the model returns)"
    )


def _vector(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


def _header(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip().lower(), value


def _feature(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    return name.strip(), value


def _feature_row(pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
    row: dict[str, str] = {}
    for name, value in pairs:
        if name in row:
            raise ValueError(f"--feature {name} given twice; join the values of a multi-valued feature with '|'")
        row[name] = value
    return row


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (public for the tests and --help)."""
    parser = _Parser(prog="retrieval-client", description=__doc__, formatter_class=_Formatter)
    parser.add_argument(
        "--version",
        "--version-info",
        action="version",
        version=f"%(prog)s {__version__}",
        help="print the program version and exit",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    common = [_common_options()]

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, parents=common, help=help_text, description=help_text, formatter_class=_Formatter
        )

    search = command(
        "search",
        "nearest candidates for query ids (signature serving_default), or for one query "
        "described by its features (--feature; signature search_by_features)",
    )
    query = search.add_mutually_exclusive_group(required=True)
    query.add_argument("--id", dest="ids", metavar="ID", action="append", help="query id; repeat for a batch")
    query.add_argument(
        "--feature",
        dest="features",
        metavar="NAME=VALUE",
        action="append",
        type=_feature,
        help="one feature of the query, e.g. --feature age=24 --feature occupation=technician; "
        "multi-valued: --feature 'genres=Action|Comedy'; features left out are sent as missing "
        "(leave out the id for a new user); `metadata` lists the names",
    )
    _k(search)
    _deadline(search)
    filters = search.add_argument_group("filters (signature search_filtered; models built with --item-attributes)")
    filters.add_argument(
        "--allow", metavar="NS=TOKEN", action="append", help="results need one of these tokens per namespace; repeat"
    )
    filters.add_argument(
        "--deny", metavar="NS=TOKEN", action="append", help="results have none of these tokens; repeat"
    )
    filters.add_argument(
        "--where",
        metavar="NAME=LOW:HIGH",
        action="append",
        help="inclusive numeric range, a side may be empty: year=1990:",
    )
    filters.add_argument("--exclude", metavar="ID", action="append", help="an id never returned; repeat")
    filters.add_argument(
        "--max-per", type=int, default=None, help="at most this many results per value of the crowding attribute"
    )

    vector = command("search-vector", "nearest candidates for query embeddings (signature search_by_vector)")
    vector.add_argument(
        "--vector",
        dest="vectors",
        metavar="FLOATS",
        action="append",
        required=True,
        type=_vector,
        help="comma-separated floats; repeat for a batch; write --vector=-0.1,... for a leading minus",
    )
    _k(vector)
    _deadline(vector)

    _deadline(command("status", "state of every model version"))
    wait = command("wait", "poll until a model version is AVAILABLE")
    wait.add_argument("--timeout-s", type=float, default=DEFAULT_WAIT_TIMEOUT_S, help="give up after this many seconds")
    _deadline(command("metadata", "signatures with input/output dtypes and shapes"))
    _deadline(command("examples", "known ids the model publishes for smoke tests"))
    return parser


def _tls(args: argparse.Namespace) -> TlsConfig | None:
    if not (args.tls or args.tls_ca or args.tls_cert or args.tls_key or args.tls_server_name):
        return None
    return TlsConfig(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)


def _plain(value: Any) -> Any:
    """numpy / dataclass values -> JSON-ready Python values."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [list(map(str, header))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def _show_results(queries: Sequence[Any], results: list[SearchResult]) -> str:
    blocks = []
    for query, result in zip(queries, results, strict=True):
        pairs = zip(result.ids.tolist(), result.scores.tolist(), strict=True)
        rows = [(rank, i, f"{s:.6f}") for rank, (i, s) in enumerate(pairs, 1)]
        blocks.append(f"query {query}:\n" + _table(rows, ("rank", "id", "score")))
    return "\n\n".join(blocks)


def _show_metadata(meta: ModelMetadata) -> str:
    lines = [f"model {meta.model} version {meta.version}"]
    for name, sig in meta.signatures.items():
        lines.append(f"signature {name}" + (f" ({sig.method_name})" if sig.method_name else ""))
        for kind, specs in (("input", sig.inputs), ("output", sig.outputs)):
            for tensor, spec in specs.items():
                lines.append(
                    f"  {kind:6} {tensor}: {spec.dtype} {spec.shape if spec.shape is not None else '<unknown rank>'}"
                )
    return "\n".join(lines)


def _show_examples(ex: Examples) -> str:
    rows = [(i, ex.candidate_vectors[n].shape[0]) for n, i in enumerate(ex.candidate_ids.tolist())]
    return f"query ids: {' '.join(map(str, ex.query_ids.tolist()))}\n" + _table(rows, ("candidate id", "vector dim"))


def _show_status(statuses: list[VersionStatus]) -> str:
    rows = [
        (s.version, s.state, "" if s.error_code == "OK" else f"{s.error_code}: {s.error_message}") for s in statuses
    ]
    return _table(rows, ("version", "state", "error")) if rows else "no versions"


def _execute(client: RetrievalClient, args: argparse.Namespace) -> tuple:
    """(value for --json, human-readable text)."""
    if args.command == "search" and args.features:
        if args.allow or args.deny or args.where or args.exclude or args.max_per:
            raise ValueError("--allow/--deny/--where/--exclude/--max-per filter --id searches, not --feature ones")
        row = _feature_row(args.features)
        results = client.search_by_features([row], k=args.k, timeout_s=args.timeout_s)
        shown = [" ".join(f"{name}={value}" for name, value in row.items())]
        return {"model": client.model, "results": [{"query": row, **_plain(r)} for r in results]}, _show_results(
            shown, results
        )
    if args.command == "search":
        results = client.search(
            args.ids,
            k=args.k,
            timeout_s=args.timeout_s,
            exclude=args.exclude,
            allow=token_flags(args.allow, "--allow"),
            deny=token_flags(args.deny, "--deny"),
            where=range_flags(args.where),
            max_per=args.max_per,
        )
        data: dict[str, Any] = {
            "model": client.model,
            "results": [{"query": q, **_plain(r)} for q, r in zip(args.ids, results, strict=True)],
        }
        return data, _show_results(args.ids, results)
    if args.command == "search-vector":
        results = client.search_by_vector(args.vectors, k=args.k, timeout_s=args.timeout_s)
        data = {"model": client.model, "results": [_plain(r) for r in results]}
        return data, _show_results([f"#{n}" for n in range(len(results))], results)
    if args.command == "status":
        statuses = client.status(timeout_s=args.timeout_s)
        return {"model": client.model, "versions": _plain(statuses)}, _show_status(statuses)
    if args.command == "wait":
        status = client.wait_until_available(timeout_s=args.timeout_s)
        return _plain(status), f"model {client.model} version {status.version} {status.state}"
    if args.command == "metadata":
        meta = client.metadata(timeout_s=args.timeout_s)
        return _plain(meta), _show_metadata(meta)
    ex = client.examples(timeout_s=args.timeout_s)
    return _plain(ex), _show_examples(ex)


def _model_version(args: argparse.Namespace) -> int | None:
    """--model-version, or the deprecated --version N (checked and warned about)."""
    legacy = args.legacy_version
    if legacy is None:
        return args.model_version
    try:
        number = int(legacy)
    except ValueError:
        raise ValueError(
            f"--version takes no value (program version) or an integer (deprecated model version), "
            f"got {legacy!r}; use --model-version N"
        ) from None
    print(
        "retrieval-client: warning: --version N for the model version is deprecated; use --model-version N",
        file=sys.stderr,
    )
    return number


def _error_json(exc: BaseException, exit_code: int) -> str:
    """One JSON line describing a failure (--json)."""
    if isinstance(exc, RetrievalError):
        code, details, hint = exc.code.name, exc.details, exc.hint
    else:  # refused before sending: the same category as the server's INVALID_ARGUMENT
        code, details, hint = "INVALID_ARGUMENT", str(exc), None
    error = {"code": code, "type": type(exc).__name__, "details": details, "hint": hint, "exit_code": exit_code}
    return json.dumps({"error": error}, ensure_ascii=False)


def _fail(prog: str, exc: BaseException, exit_code: int, as_json: bool) -> int:
    """One line on stderr, always; with --json also the JSON error line on stdout."""
    print(f"{prog}: error: {exc}".replace("\n", " "), file=sys.stderr)
    if as_json:
        print(_error_json(exc, exit_code))
    return exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        return _fail(exc.prog, exc, EXIT_USAGE, "--json" in argv)
    prog = f"{parser.prog} {args.command}"
    if args.legacy_version is _PROGRAM_VERSION:
        print(f"{parser.prog} {__version__}")
        return 0
    try:
        client = RetrievalClient(
            args.target,
            args.model,
            version=_model_version(args),
            version_label=args.model_version_label,
            tls=_tls(args),
            headers=args.headers,
        )
        with client:
            data, text = _execute(client, args)
    except (ValueError, TypeError, InvalidRequestError, ModelNotFoundError) as exc:
        return _fail(prog, exc, EXIT_USAGE, args.json)
    except RetrievalError as exc:
        return _fail(prog, exc, EXIT_FAILURE, args.json)
    print(json.dumps(data, indent=2, ensure_ascii=False) if args.json else text)
    return 0
