"""Fixtures for the container / Kubernetes / ECR tests.

Tools come from the pinned tools venv (`make tools-venv`, TOOLS_VENV); the
Docker engine is made available by `scripts/engine.sh ensure`. A missing tool or
engine fails the tests that need it instead of skipping them: these checks are
the only proof that the deploy files work.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from deploy_helpers import OVERLAYS, REPO, read_versions, render


@pytest.fixture(scope="session")
def versions() -> dict[str, str]:
    return read_versions()


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict]]:
    """Every overlay and the base, rendered once per session: {overlay name or "base": [objects]}."""
    objects = {name: render(REPO / "k8s" / "overlays" / name) for name in OVERLAYS}
    objects["base"] = render(REPO / "k8s" / "base")
    return objects


@pytest.fixture(scope="session")
def docker_client():
    """A docker SDK client for an engine that `scripts/engine.sh ensure` made available."""
    proc = subprocess.run([str(REPO / "scripts" / "engine.sh"), "ensure"], capture_output=True, text=True, timeout=600)
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
