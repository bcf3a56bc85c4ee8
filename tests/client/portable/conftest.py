"""Fixtures of the portable client tests.

These tests need only retrieval_client, grpcio, numpy and pytest, so the
protobuf/grpcio matrix (tests/client/test_client_matrix.py) runs them in fresh
venvs against local servers started from the main venv, passed in as

    RETRIEVAL_CLIENT_LIVE_TARGETS="string=MODEL@host:port,int64=MODEL@host:port,fallback=MODEL@host:port"

(string and int64: models built with the default --unknown-ids error; fallback: a string-id
model built with --unknown-ids fallback.)

Under the normal test run (main venv) the same fixture starts those servers
itself (tests/client/conftest.py, `local_live_servers`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from grpc_stand_ins import RecordingServer, make_pki, recording_server

LIVE_TARGETS = "RETRIEVAL_CLIENT_LIVE_TARGETS"


@dataclass(frozen=True)
class Live:
    """A local server (python -m model_builder serve) serving one model."""

    id_dtype: str
    model: str
    target: str


def parse_live_targets(spec: str) -> dict[str, Live]:
    """'string=m@h:p,int64=m2@h:p2' -> {"string": Live(...), "int64": Live(...)}."""
    live = {}
    for part in filter(None, spec.split(",")):
        dtype, _, rest = part.partition("=")
        model, _, target = rest.partition("@")
        live[dtype] = Live(dtype, model, target)
    return live


@pytest.fixture(scope="session")
def live_servers(request) -> dict[str, Live]:
    spec = os.environ.get(LIVE_TARGETS)
    if spec:
        return parse_live_targets(spec)
    try:
        local = request.getfixturevalue("local_live_servers")
    except pytest.FixtureLookupError:
        pytest.fail(
            f"no local servers: set {LIVE_TARGETS}=string=MODEL@host:port,int64=...,fallback=... "
            "(python -m model_builder serve ...), or run from the repository's tests/ with the main venv"
        )
    return parse_live_targets(",".join(f"{dtype}={where}" for dtype, where in local.items()))


@pytest.fixture(params=["string", "int64"])
def live(request, live_servers) -> Live:
    return live_servers[request.param]


@pytest.fixture
def recorder() -> Iterator[RecordingServer]:
    with recording_server() as server:
        yield server


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))
