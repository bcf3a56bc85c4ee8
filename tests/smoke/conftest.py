"""Fixtures of the smoke suite: one client per session against --target."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from plugin import add_smoke_options, resolve_target

from retrieval_client import Examples, ModelMetadata, RetrievalClient


def pytest_addoption(parser) -> None:
    add_smoke_options(parser)


@pytest.fixture(scope="session")
def smoke_target(pytestconfig) -> str:
    target = resolve_target(pytestconfig)
    if target is None:
        pytest.skip("no server to smoke-test: pass --target host:port (or set SMOKE_TARGET), e.g. make smoke")
    return target


@pytest.fixture(scope="session")
def smoke_model(pytestconfig) -> str:
    return pytestconfig.getoption("model", default="scann_model")


@pytest.fixture(scope="session")
def smoke_client(smoke_target, smoke_model, pytestconfig) -> Iterator[RetrievalClient]:
    with RetrievalClient(smoke_target, smoke_model, timeout_s=15.0) as client:
        client.wait_until_available(timeout_s=pytestconfig.getoption("wait_s", default=30.0))
        yield client


@pytest.fixture(scope="session")
def metadata(smoke_client) -> ModelMetadata:
    return smoke_client.metadata()


@pytest.fixture(scope="session")
def examples(smoke_client) -> Examples:
    return smoke_client.examples()


@pytest.fixture(scope="session")
def id_dtype(metadata) -> str:
    return metadata.signatures["serving_default"].inputs["ids"].dtype


@pytest.fixture(scope="session")
def top_k(metadata) -> int:
    """K: neighbours per query, fixed when the model was built."""
    return metadata.signatures["serving_default"].outputs["scores"].shape[1]
