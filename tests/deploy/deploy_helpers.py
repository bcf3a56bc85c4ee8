"""Helpers shared by the tests in tests/deploy (imported by name; pytest puts
this folder on sys.path)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import support

REPO = Path(__file__).resolve().parents[2]
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
    pairs = {}
    for line in (REPO / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            pairs[key] = value
    return pairs


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.5) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval_s)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


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
            wait_for(lambda: http_get(ready_url)[0] == 200, 60, what)
            yield
        finally:
            proc.terminate()
            proc.wait(timeout=30)


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
