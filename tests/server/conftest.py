"""Fixtures of the local-server tests: a shared running server (the small models are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import support
from server import harness

MONITORING = 'prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }\n'
LABELS = "stable=1,future=7"


@pytest.fixture(scope="session")
def items_server(items_model, tmp_path_factory) -> Iterator[support.RunningServer]:
    """The local server on the items model, with TF Serving's monitoring config and version labels."""
    logs = tmp_path_factory.mktemp("items-server")
    config = logs / "monitoring.config"
    config.write_text(MONITORING)
    with support.local_server(items_model.parent.parent, harness.MODEL, "--monitoring_config_file", str(config),
                              "--version_labels", LABELS, log_dir=logs) as server:
        server.wait_available(1)
        yield server


@pytest.fixture
def raw(items_server) -> Iterator[harness.Raw]:
    """Raw TF Serving gRPC against items_server."""
    channel = harness.Raw(items_server.target)
    yield channel
    channel.close()
