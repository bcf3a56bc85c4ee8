"""Fixtures of the reliability tests: the shared small models (tests/server/harness.py) and a server for bad inputs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import support
from server import harness


@pytest.fixture(scope="session")
def items_model(tmp_path_factory):
    """2000 string-id items, item -> similar items, K=10, version 1."""
    return harness.items_model(tmp_path_factory)


@pytest.fixture(scope="session")
def items_v2_model(tmp_path_factory):
    """Same ids, other vectors, K=5, version 2."""
    return harness.items_v2_model(tmp_path_factory)


@pytest.fixture(scope="session")
def slow_model(tmp_path_factory):
    """K=1500: a batch of 1024 ids takes seconds."""
    return harness.slow_model(tmp_path_factory)


@pytest.fixture(scope="session")
def bad_input_server(items_model, tmp_path_factory) -> Iterator[support.RunningServer]:
    """The local server on the items model (label stable=1) that every bad input is thrown at."""
    logs = tmp_path_factory.mktemp("bad-input-server")
    with support.local_server(items_model.parent.parent, harness.MODEL, "--version_labels", "stable=1", log_dir=logs) as server:
        server.wait_available(1)
        yield server


@pytest.fixture
def raw(bad_input_server) -> Iterator[harness.Raw]:
    channel = harness.Raw(bad_input_server.target)
    yield channel
    channel.close()

