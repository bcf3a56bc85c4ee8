"""Fixtures of the local-server tests: a shared running server (the small models are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import support
from support import harness

MONITORING = 'prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }\n'
LABELS = "stable=1,future=7"


@pytest.fixture(scope="session")
def items_server(items_model, tmp_path_factory) -> Iterator[support.RunningServer]:
    """The local server on the items model, with TF Serving's monitoring config and version labels."""
    config = tmp_path_factory.mktemp("items-server-config") / "monitoring.config"
    config.write_text(MONITORING)
    with harness.shared_server(
        tmp_path_factory,
        "items-server",
        items_model,
        "--monitoring_config_file",
        str(config),
        "--version_labels",
        LABELS,
    ) as server:
        yield server


@pytest.fixture
def raw(items_server) -> Iterator[harness.Raw]:
    """Raw TF Serving gRPC against items_server."""
    channel = harness.Raw(items_server.target)
    yield channel
    channel.close()
