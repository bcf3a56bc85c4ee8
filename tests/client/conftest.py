"""Fixtures for the client tests: a real gRPC TF Serving stand-in on 127.0.0.1, and the
real local servers (python -m model_builder serve) on the demo-like session models."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import support
from support import harness, tls

CLIENT_DIR = support.REPO / "client"

# Before fake_tfs imports TensorFlow: keep its C++ start-up chatter out of the test logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from fake_tfs import FakeModel, FakeTfServing  # noqa: E402  (after the log-level default above)


@pytest.fixture
def make_server() -> Iterator[Callable[..., FakeTfServing]]:
    """Factory: make_server(FakeModel(...), typed_values=..., server_credentials=...)."""
    servers = []

    def start(model: FakeModel | None = None, **kwargs) -> FakeTfServing:
        server = FakeTfServing(model, **kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(make_server) -> FakeTfServing:
    """A string-id model server."""
    return make_server()


def _write_fake_catalogue(path: Path) -> Path:
    model = FakeModel()
    np.savez(path, ids=np.array([i.decode() for i in model.ids]), vectors=model.vectors)
    return path


@pytest.fixture(scope="session")
def fake_catalogue_server(tmp_path_factory) -> Iterator[SimpleNamespace]:
    """FakeModel's catalogue (40 x 8, ids item-N, K=5, version 3) built for real and served by the local server.

    Queries are the candidates themselves (--query-embeddings with the same file), as in the fake.
    """
    version_dir = harness.shared_build(
        tmp_path_factory,
        "fake-catalogue",
        "--candidates",
        "{fake}",
        "--query-embeddings",
        "{fake}",
        "-k",
        "5",
        "--version",
        "3",
        "--verify-queries",
        "40",
        files={"fake.npz": _write_fake_catalogue},
    )
    logs = tmp_path_factory.mktemp("fake-catalogue-server")
    with support.local_server(version_dir.parent.parent, harness.MODEL, log_dir=logs) as running:
        running.wait_available(3)
        yield SimpleNamespace(target=running.target, model=FakeModel())


@pytest.fixture(params=["fake", "local-server"])
def any_server(request):
    """For assertions that hold for any server: the fake, then the real local server on the fake's catalogue."""
    return request.getfixturevalue("server" if request.param == "fake" else "fake_catalogue_server")


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory) -> dict[str, Path]:
    """A throw-away CA, a server certificate for DNS:retrieval.test only, and a client pair."""
    tmp = tmp_path_factory.mktemp("tls")
    tls.make_ca(tmp, "ca")
    tls.make_signed(tmp, "server", "ca", "subjectAltName=DNS:retrieval.test")
    tls.make_signed(tmp, "client", "ca", "extendedKeyUsage=clientAuth")
    return {p.stem + p.suffix.replace(".", "_"): p for p in tmp.iterdir()}


@pytest.fixture(scope="session")
def local_live_servers(request, tmp_path_factory) -> Iterator[dict[str, str]]:
    """The real local server on a string-id model (synthetic CSV), on the demo's int-id
    MovieLens model and on the string-id model built with --unknown-ids fallback:
    {"string": "MODEL@host:port", "int64": ..., "fallback": ...} for tests/client/portable
    (the format of its RETRIEVAL_CLIENT_LIVE_TARGETS, which the matrix runs pass). With that
    variable set, the servers it names are used instead (nothing is built or started)."""
    given = os.environ.get("RETRIEVAL_CLIENT_LIVE_TARGETS")
    if given:
        yield dict(part.split("=", 1) for part in given.split(","))
        return
    models = {
        "string": request.getfixturevalue("synthetic_model"),
        "int64": request.getfixturevalue("movielens_model"),
        "fallback": request.getfixturevalue("fallback_model_dir"),
    }
    logs = tmp_path_factory.mktemp("client-live-servers")
    with contextlib.ExitStack() as stack:
        servers = {
            dtype: stack.enter_context(
                support.local_server(version_dir.parent.parent, version_dir.parent.name, log_dir=logs)
            )
            for dtype, version_dir in models.items()
        }
        for dtype, server in servers.items():
            server.wait_available(int(models[dtype].name))
        yield {dtype: f"{server.model_name}@{server.target}" for dtype, server in servers.items()}


@pytest.fixture(scope="session")
def client_dist(tmp_path_factory) -> dict[str, Path]:
    """The client's sdist and wheel, built once per session with `python -m build` (PEP 517,
    isolated build env) from a copy of client/, so the checkout gets no build/ or egg-info."""
    import shutil

    work = tmp_path_factory.mktemp("client-dist")
    source = work / "client"
    shutil.copytree(CLIENT_DIR, source, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__"))
    # cwd=work: `python -m build` run from the repo root would import the checkout's build/ output
    # folder as the `build` package.
    run = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(work / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=work,
    )
    assert run.returncode == 0, f"python -m build failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    [sdist] = (work / "dist").glob("*.tar.gz")
    [wheel] = (work / "dist").glob("*.whl")
    return {"sdist": sdist, "wheel": wheel}
