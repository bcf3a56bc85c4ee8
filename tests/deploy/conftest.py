"""Fixtures for the container / Kubernetes / ECR tests.

Tools come from the pinned tools venv (`make tools-venv`, TOOLS_VENV); the
Docker engine is made available by `scripts/engine.sh test-tools`. A missing tool or
engine fails the tests that need it instead of skipping them: these checks are
the only proof that the deploy files work.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from support import REPO, free_port
from support.deploy import (
    OVERLAYS,
    REGISTRY_BINARY,
    http_service,
    read_versions,
    render,
    run_release,
    tool,
    write_push_record,
)


@pytest.fixture(scope="session")
def versions() -> dict[str, str]:
    return read_versions()


@pytest.fixture(scope="session")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    """A model released to every overlay (k8s/models/<model>/<overlay>, as `make push` writes it)
    and the base, rendered once per session: {overlay name or "base": [objects]}."""
    build_dir = tmp_path_factory.mktemp("rendered")
    model = read_versions()["MODEL_NAME"]
    write_push_record(build_dir, model)
    objects = {}
    for name in OVERLAYS:
        proc = run_release(build_dir, MODEL=model, OVERLAY=name)
        assert proc.returncode == 0, proc.stderr
        objects[name] = render(build_dir / "k8s" / "models" / model / name)
    objects["base"] = render(REPO / "k8s" / "base")
    return objects


@pytest.fixture(scope="session")
def docker_client():
    """A docker SDK client for an engine that `scripts/engine.sh test-tools` made available (with debootstrap and docker-registry)."""
    proc = subprocess.run(
        [str(REPO / "scripts" / "engine.sh"), "test-tools"], capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        pytest.fail(f"Docker engine unavailable: {proc.stderr.strip()}")
    import docker  # the SDK is pinned in requirements/dev.txt

    client = docker.from_env(timeout=900)
    client.ping()
    return client


@pytest.fixture(scope="session")
def python_standin(docker_client) -> str:
    """scann-serving/python-standin:bookworm, built by its script unless it exists."""
    image = "scann-serving/python-standin:bookworm"
    proc = subprocess.run(
        [str(REPO / "docker/standin/python-standin.sh")],
        capture_output=True,
        text=True,
        timeout=900,
        env=dict(os.environ, STANDIN_PYTHON_IMAGE=image),
    )
    assert proc.returncode == 0, proc.stderr
    docker_client.images.get(image)
    return image


@pytest.fixture
def moto(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with http_service(
        [tool("moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        f"{url}/moto-api/",
        tmp_path / "moto.log",
        "moto_server",
    ):
        yield url


@pytest.fixture
def registry(tmp_path):
    if not Path(REGISTRY_BINARY).exists():
        pytest.fail(f"{REGISTRY_BINARY} missing: scripts/engine.sh test-tools installs Debian's docker-registry")
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp_path / 'registry'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    with http_service(
        [REGISTRY_BINARY, "serve", str(config)],
        f"http://127.0.0.1:{port}/v2/",
        tmp_path / "registry.log",
        "docker-registry",
    ):
        yield f"127.0.0.1:{port}"
