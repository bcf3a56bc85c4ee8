"""retrieval-client CLI: output formats and exit codes, against the real gRPC stand-in."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
from fake_tfs import FakeModel

from retrieval_client._cli import main


def run(capsys, *args):
    """(exit code, stdout, stderr); argparse exits via SystemExit, main() returns."""
    try:
        code = main(list(args))
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def test_search_table_and_json(any_server, capsys):
    code, out, _ = run(capsys, "search", "--target", any_server.target, "--id", "item-1", "--id", "item-2", "-k", "3")
    assert code == 0
    assert "query item-1:" in out and "query item-2:" in out and out.count("\n") >= 8
    code, out, _ = run(capsys, "search", "--target", any_server.target, "--id", "item-1", "--json")
    data = json.loads(out)
    assert data["results"][0]["query"] == "item-1"
    assert data["results"][0]["ids"][0] == "item-1" and len(data["results"][0]["ids"]) == 5


def test_int_model_takes_numeric_ids_from_the_command_line(make_server, capsys):
    server = make_server(FakeModel(id_dtype="int64"))
    code, out, _ = run(capsys, "search", "--target", server.target, "--id", "1005", "--json")
    assert code == 0 and json.loads(out)["results"][0]["ids"][0] == 1005
    code, _, err = run(capsys, "search", "--target", server.target, "--id", "abc")
    assert code == 2 and err.count("\n") == 1 and "not in this model version: [abc]" in err


def test_search_vector_status_metadata_examples_wait(any_server, capsys):
    vector = ",".join(str(v) for v in any_server.model.vectors[4])
    code, out, _ = run(capsys, "search-vector", "--target", any_server.target, f"--vector={vector}", "--json")
    assert code == 0 and json.loads(out)["results"][0]["ids"][0] == "item-4"
    code, out, _ = run(capsys, "status", "--target", any_server.target)
    assert code == 0 and "AVAILABLE" in out
    code, out, _ = run(capsys, "metadata", "--target", any_server.target, "--json")
    assert json.loads(out)["signatures"]["search_by_vector"]["inputs"]["vectors"] == {
        "dtype": "float32",
        "shape": [-1, 8],
    }
    code, out, _ = run(capsys, "examples", "--target", any_server.target)
    assert code == 0 and "query ids: item-0 item-1" in out
    code, out, _ = run(capsys, "wait", "--target", any_server.target, "--timeout-s", "5")
    assert code == 0 and out.strip() == "model scann_model version 3 AVAILABLE"


@pytest.mark.parametrize(
    "args, needle",
    [
        (["search", "--id", "__nope__"], "__nope__"),  # server INVALID_ARGUMENT
        (["search", "--model", "other", "--id", "x"], "other"),  # server NOT_FOUND
        (["search", "--id", "item-1", "-k", "99"], "K=5"),  # k > K
        (["search-vector", "--vector", "1,x"], "not a comma-separated list"),  # argparse
        (["search"], "--id"),  # missing argument
        (["search", "--id", "1", "--model-version", "1", "--model-version-label", "a"], "not allowed with"),
        (["search", "--id", "1", "--version", "x"], "--model-version"),
    ],
)
def test_usage_and_rejected_requests_exit_2_with_one_line(any_server, capsys, args, needle):
    code, _, err = run(capsys, *args, "--target", any_server.target)
    assert code == 2
    assert err.count("\n") == 1 and needle in err, err


def test_unavailable_server_exits_1(capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, _, err = run(capsys, "status", "--target", f"127.0.0.1:{port}", "--timeout-s", "1")
    assert code == 1 and err.startswith("retrieval-client status: error: UNAVAILABLE")


def test_help_shows_defaults_via_python_m():
    run_ = subprocess.run(
        [sys.executable, "-m", "retrieval_client", "search", "--help"], capture_output=True, text=True
    )
    assert run_.returncode == 0
    text = " ".join(run_.stdout.split())  # undo argparse's line wrapping
    assert "(default: 127.0.0.1:8500)" in text and "(default: scann_model)" in text
    assert "(default: 5.0)" in text


def test_version_flags_are_unambiguous(server, capsys):
    from retrieval_client import __version__

    for args in (["--version"], ["status", "--version"], ["--version-info"]):
        code, out, _ = run(capsys, *args)
        assert code == 0 and out.strip() == f"retrieval-client {__version__}", args
    code, _, err = run(capsys, "status", "--target", server.target, "--model-version", "9")
    assert code == 2 and "Specific" in err  # the server was asked for model version 9
    # Before 0.2 --version N meant the model version: still honoured, with a warning.
    code, _, err = run(capsys, "status", "--target", server.target, "--version", "9")
    assert code == 2 and "deprecated; use --model-version N" in err and "Specific" in err
    code, out, _ = run(capsys, "status", "--target", server.target, "--version", "3")
    assert code == 0 and "AVAILABLE" in out


@pytest.mark.parametrize(
    "args, code, status, kind",
    [
        (["search", "--id", "__nope__"], 2, "INVALID_ARGUMENT", "InvalidRequestError"),
        (["search", "--model", "other", "--id", "x"], 2, "NOT_FOUND", "ModelNotFoundError"),
        (["search", "--id", "item-1", "-k", "99"], 2, "INVALID_ARGUMENT", "ValueError"),
        (["search"], 2, "INVALID_ARGUMENT", "UsageError"),
    ],
)
def test_json_errors_are_one_json_line_with_the_code(server, capsys, args, code, status, kind):
    exit_code, out, err = run(capsys, *args, "--target", server.target, "--json")
    assert exit_code == code and err.count("\n") == 1, "the one-line message stays on stderr"
    assert out.count("\n") == 1
    error = json.loads(out)["error"]
    assert (error["code"], error["type"], error["exit_code"]) == (status, kind, code)
    assert error["details"]


def test_json_error_for_an_unavailable_server_carries_the_hint(capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, out, _ = run(capsys, "status", "--target", f"127.0.0.1:{port}", "--timeout-s", "0.5", "--json")
    error = json.loads(out)["error"]
    assert code == 1 and error["code"] == "UNAVAILABLE" and "check the target address" in error["hint"]
