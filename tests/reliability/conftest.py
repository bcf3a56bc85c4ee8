"""Fixtures of the reliability tests: a server for bad inputs (the small models are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import support
from support import harness


@pytest.fixture(scope="session")
def bad_input_server(items_model, tmp_path_factory) -> Iterator[support.RunningServer]:
    """The local server on the items model (label stable=1) that every bad input is thrown at."""
    with harness.shared_server(
        tmp_path_factory, "bad-input-server", items_model, "--version_labels", "stable=1"
    ) as server:
        yield server


@pytest.fixture
def raw(bad_input_server) -> Iterator[harness.Raw]:
    channel = harness.Raw(bad_input_server.target)
    yield channel
    channel.close()
