"""Helpers for tests/deploy: the pinned tools, rendered manifests, push records, local HTTP services."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
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
    """The caller's environment without anything that would point at real AWS, and with the venvs
    as absolute paths: scripts run from a scratch copy (scratch_repo) must find the checkout's venvs,
    where the Makefile's relative defaults would point into the copy."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ECR_"))}
    env.update(
        VENV=str(support.venv_path("VENV", ".venv")),
        COMPAT_VENV=str(support.venv_path("COMPAT_VENV", ".venv-compat")),
        TOOLS_VENV=str(tools_venv()),
    )
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
    content_digest: str | None = None,
    load_seconds: str = "2.5",
    standin: bool = False,
    kind: str = "pushed",
) -> str:
    """A record as `make push MODEL=...` leaves it ($BUILD_DIR/pushed/<model>.json; kind="images":
    as `make image` does); returns the image."""
    content_digest = content_digest or "sha256:" + hashlib.sha256(f"{model}-{version}".encode()).hexdigest()
    image = f"{registry}:{model}-v{version}-0123456789ab-{content_digest[7:19]}@{PUSHED_DIGEST}"
    labels = {
        f"{LABEL}model.name": model,
        f"{LABEL}model.version": version,
        f"{LABEL}model.digest": "sha256:" + hashlib.sha256(model.encode()).hexdigest(),
        f"{LABEL}content.digest": content_digest,
        f"{LABEL}memory.peak-rss-bytes": str(peak_bytes),
        f"{LABEL}startup.load-seconds": load_seconds,
        f"{LABEL}git.dirty": str(dirty).lower(),
        f"{LABEL}standin": str(standin).lower(),
        "org.opencontainers.image.revision": "0123456789ab",
    }
    (build_dir / kind).mkdir(parents=True, exist_ok=True)
    (build_dir / kind / f"{model}.json").write_text(json.dumps({"image": image, "labels": labels}))
    return image


def scratch_repo(dest: Path) -> Path:
    """The tracked files as they are now (committed or not) in a git repository of their own at
    dest, committed: scripts run from it see a clean work tree, and git commands there never
    touch the checkout."""
    dest.mkdir(parents=True, exist_ok=True)
    files = subprocess.run(["git", "ls-files", "-z"], capture_output=True, cwd=REPO, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            # copy2 keeps mtimes: make must not see requirements/*.txt newer than the venvs' stamps.
            shutil.copy2(src, dest / name)
    git(dest, "init", "-q")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "scratch copy")
    return dest


def git(repo: Path, *args: str) -> str:
    """git in repo with a fixed identity (scratch repositories only)."""
    proc = subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", *args],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, f"git {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def k8s_copy(root: Path) -> Path:
    """root/k8s: a copy of the repository's k8s/ without released models, for scripts that write
    k8s/models/ (K8S_DIR), so no test ever writes into the checkout."""
    dest = root / "k8s"
    if not dest.exists():
        shutil.copytree(REPO / "k8s", dest, ignore=lambda d, names: ["models"] if Path(d) == REPO / "k8s" else [])
        (dest / "models").mkdir()
    return dest


def run_script(script: str, build_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """scripts/<script> with the pinned tools, a private BUILD_DIR and K8S_DIR (build_dir/k8s)."""
    return subprocess.run(
        [str(REPO / "scripts" / script), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env=dict(
            os.environ,
            TOOLS_VENV=str(tools_venv()),
            BUILD_DIR=str(build_dir),
            K8S_DIR=str(k8s_copy(build_dir)),
            **env,
        ),
    )


def run_release(build_dir: Path, **env: str) -> subprocess.CompletedProcess:
    """scripts/release.sh: writes build_dir/k8s/models/<model>/<env>/."""
    return run_script("release.sh", build_dir, **env)


def run_deploy(build_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """scripts/deploy.sh on build_dir/k8s."""
    return run_script("deploy.sh", build_dir, *args, **env)


def release_and_render(build_dir: Path, **env: str) -> list[dict]:
    """release.sh then deploy.sh --dry-run for MODEL and OVERLAY: the objects `make deploy` applies."""
    proc = run_release(build_dir, **env)
    assert proc.returncode == 0, proc.stderr
    proc = run_deploy(build_dir, "--dry-run", **{k: v for k, v in env.items() if k in ("MODEL", "OVERLAY")})
    assert proc.returncode == 0, proc.stderr
    return load_yaml_documents(proc.stdout)


STANDIN_PREFIX = "scann-serving-test"


def make_image_on_standins(build_dir: Path, *make_args: str, **env: str) -> str:
    """`make image` on the local stand-in bases (USE_STANDINS=1, the tests' builder/stand-in tags);
    asserts it worked and returns the serving image's tag (BUILD_DIR/last-image)."""
    proc = subprocess.run(
        ["make", "image", f"BUILDER_IMAGE={STANDIN_PREFIX}/builder:ci", f"SERVING_IMAGE={STANDIN_PREFIX}/serving"]
        + list(make_args),
        cwd=REPO,
        env=dict(
            os.environ,
            USE_STANDINS="1",
            BUILD_DIR=str(build_dir),
            WHEELHOUSE_DIR=str(REPO / "build" / "wheelhouse"),  # shared with `make image`
            STANDIN_SERVING_IMAGE=f"{STANDIN_PREFIX}/tf-serving-standin:ci",
            **env,
        ),
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert proc.returncode == 0, f"make image failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    tag = (build_dir / "last-image").read_text().strip()
    assert proc.stdout.strip().splitlines()[-1] == tag
    return tag
