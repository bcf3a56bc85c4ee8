"""Helpers for tests/deploy: the pinned tools, rendered manifests, push records, local HTTP services."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import support
from model_builder import settings
from support import REPO, wait_for

OVERLAYS = sorted(p.name for p in (REPO / "k8s" / "overlays").iterdir() if p.is_dir())


def tools_venv() -> Path:
    return support.venv_path("TOOLS_VENV", ".venv-tools")


def tool(name: str) -> str:
    """Absolute path of a pinned tool; fails (not skips) when the venv is missing."""
    path = tools_venv() / "bin" / name
    if not path.exists():
        pytest.fail(f"{path} missing: run `make tools-venv` (tests marked 'tools' need it)")
    return str(path)


def read_versions() -> dict[str, str]:
    """versions.env's KEY=VALUE pairs (the same reader model_builder uses)."""
    return dict(settings.versions())


def load_yaml_documents(text: str) -> list[dict]:
    """Parses multi-document YAML with the tools venv's PyYAML (the test venv has none)."""
    proc = subprocess.run(
        [
            tool("python"),
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))",
        ],
        input=text,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout)


def render(path: Path | str) -> list[dict]:
    """`kubectl kustomize PATH` parsed into objects."""
    proc = subprocess.run([tool("kubectl"), "kustomize", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, f"kubectl kustomize {path} failed: {proc.stderr}"
    return load_yaml_documents(proc.stdout)


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def clean_env(**overrides: str) -> dict[str, str]:
    """The caller's environment without anything that would point at real AWS."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ECR_"))}
    env.update(overrides)
    return env


def http_get(url: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    """(status, body); status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


@contextlib.contextmanager
def http_service(cmd: list[str], ready_url: str, log_path: Path, what: str) -> Iterator[None]:
    """Run a local HTTP service (moto, docker-registry) for one test; ready when ready_url answers 200."""
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: http_get(ready_url)[0] == 200, 60, what, interval=0.5)
            yield
        finally:
            proc.terminate()
            proc.wait(timeout=30)


# Local stand-ins for AWS (tests/deploy/conftest.py: the moto and registry fixtures).
ACCOUNT = "123456789012"  # moto's default account
REGION = "us-east-1"
REGISTRY_BINARY = "/usr/bin/docker-registry"


def aws_env(moto_url: str, **extra) -> dict:
    return clean_env(
        AWS_ENDPOINT_URL=moto_url,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE="/dev/null",
        AWS_SHARED_CREDENTIALS_FILE="/dev/null",
        TOOLS_VENV=str(tools_venv()),
        **extra,
    )


PUSHED_DIGEST = "sha256:" + "ab" * 32
LABEL = "io.scann-serving."


def write_push_record(
    build_dir: Path,
    model: str,
    *,
    version: str = "1",
    peak_bytes: int = 300 * 2**20,
    dirty: bool = False,
    registry: str = "127.0.0.1:5000/scann-serving",
    model_digest: str | None = None,
) -> str:
    """A record as `make push MODEL=...` leaves it ($BUILD_DIR/pushed/<model>.json); returns the image."""
    model_digest = model_digest or "sha256:" + hashlib.sha256(model.encode()).hexdigest()
    image = f"{registry}:{model}-v{version}-0123456789ab-{model_digest[7:19]}@{PUSHED_DIGEST}"
    labels = {
        f"{LABEL}model.name": model,
        f"{LABEL}model.version": version,
        f"{LABEL}model.digest": model_digest,
        f"{LABEL}memory.peak-rss-bytes": str(peak_bytes),
        f"{LABEL}git.dirty": str(dirty).lower(),
    }
    (build_dir / "pushed").mkdir(parents=True, exist_ok=True)
    (build_dir / "pushed" / f"{model}.json").write_text(json.dumps({"image": image, "labels": labels}))
    return image


def run_deploy(build_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """scripts/deploy.sh with the pinned tools and a private BUILD_DIR."""
    return subprocess.run(
        [str(REPO / "scripts" / "deploy.sh"), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env=dict(os.environ, TOOLS_VENV=str(tools_venv()), BUILD_DIR=str(build_dir), **env),
    )
