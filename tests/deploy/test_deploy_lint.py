"""`make lint` passes, and each linter it relies on really rejects what it should
(a linter that cannot fail proves nothing)."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from support import REPO
from support.deploy import read_versions, scratch_repo, tool, tools_venv

pytestmark = pytest.mark.tools

BAD_DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: bad
spec:
  replicaz: 2
  selector:
    matchLabels: {app: bad}
  template:
    metadata:
      labels: {app: bad}
    spec:
      containers:
        - name: bad
          image: bad:latest
          securityContext:
            privileged: true
"""


def run(*cmd, **kwargs):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=REPO, **kwargs)


def test_make_lint_passes():
    env = dict(os.environ, TOOLS_VENV=str(tools_venv()))
    proc = run("make", "lint", f"TOOLS_VENV={tools_venv()}", env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "lint: all checks passed" in proc.stdout
    for check in ("ruff check", "ruff format --check", "shellcheck ("):
        assert f"lint: ok   {check}" in proc.stdout, check
    # Every Dockerfile and overlay was actually checked.
    for dockerfile in sorted(REPO.joinpath("docker").rglob("Dockerfile")):
        rel = dockerfile.relative_to(REPO)
        assert f"lint: ok   hadolint {rel}" in proc.stdout
        assert f"lint: ok   checkov {rel}" in proc.stdout
    components = sorted(p.name for p in (REPO / "k8s/components").iterdir() if p.is_dir())
    assert {"monitoring", "scale-on-load"} <= set(components)
    model = read_versions()["MODEL_NAME"]
    for overlay in ("dev", "prod"):
        assert f"lint: ok   kubectl kustomize k8s/overlays/{overlay} alone fails (no release)" in proc.stdout
        renderings = [
            f"k8s/overlays/{overlay}/monitoring",
            f"k8s/overlays/{overlay}+model {model}",
            *(f"k8s/overlays/{overlay}+model {model}+{c}" for c in components if c != "monitoring"),
        ]
        for name in renderings:
            for check in (
                "kubernetes-validate --strict -k 1.33.0",
                "kubernetes-validate --strict -k 1.37.0",
                "checkov kubernetes",
            ):
                assert f"lint: ok   {check} {name}" in proc.stdout, (check, name)
    assert "lint: ok   promtool check rules k8s/components/monitoring" in proc.stdout


def test_lint_fails_when_a_check_fails():
    env = dict(os.environ, TOOLS_VENV=str(tools_venv()), KUBE_VERSIONS="0.1.0")
    proc = run("scripts/lint.sh", env=env, timeout=900)
    assert proc.returncode == 1
    model = read_versions()["MODEL_NAME"]
    assert f"lint: FAIL kubernetes-validate --strict -k 0.1.0 k8s/overlays/prod+model {model}" in proc.stderr


def test_lint_fails_on_an_unused_import_and_an_unquoted_shell_variable(tmp_path):
    scratch = scratch_repo(tmp_path / "repo")
    export = scratch / "model_builder" / "export" / "version_store.py"
    export.write_text(export.read_text().replace("import shutil\n", "import shutil\nimport zipfile\n", 1))
    engine = scratch / "scripts" / "engine.sh"
    engine.write_text(engine.read_text() + "\nls $HOME\n")
    subprocess.run(["git", "add", "-A"], cwd=scratch, check=True)
    env = dict(os.environ, TOOLS_VENV=str(tools_venv()), BUILD_DIR=str(tmp_path / "build"))
    proc = subprocess.run(["scripts/lint.sh"], capture_output=True, text=True, cwd=scratch, env=env, timeout=900)
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert "F401 [*] `zipfile` imported but unused" in proc.stdout + proc.stderr
    assert "SC2086" in proc.stdout + proc.stderr
    failed = proc.stderr.strip().splitlines()[-1]
    assert failed.startswith("lint: 2 check(s) failed: ruff check shellcheck ("), proc.stderr[-2000:]


def test_hadolint_rejects_a_sloppy_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get update && apt-get install curl\n")
    assert run(tool("hadolint"), bad).returncode != 0


def test_kubernetes_validate_strict_rejects_unknown_fields(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_DEPLOYMENT)
    proc = run(tool("kubernetes-validate"), "--strict", "-k", "1.33.0", bad)
    assert proc.returncode != 0
    assert "replicaz" in proc.stdout + proc.stderr


def test_checkov_rejects_a_privileged_container(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_DEPLOYMENT.replace("replicaz", "replicas"))
    env = dict(os.environ, BC_SKIP_MAPPING="TRUE")
    proc = run(
        tool("checkov"), "--quiet", "--compact", "--skip-download", "--framework", "kubernetes", "-f", bad, env=env
    )
    assert proc.returncode != 0
    assert "CKV_K8S_16" in proc.stdout  # "Container should not be privileged"


def test_every_skip_is_justified():
    # lint.sh: each skipped checkov id has its reason in the comment lines above it.
    lint = (REPO / "scripts/lint.sh").read_text().splitlines()
    start = lint.index("K8S_SKIPS=(")
    block = lint[start + 1 : lint.index(")", start)]
    ids = [i for i, line in enumerate(block) if re.fullmatch(r"\s*CKV_[A-Z0-9_]+", line)]
    assert ids, "no skips found: update this test"
    for i in ids:
        assert i > 0 and block[i - 1].strip().startswith("#") and len(block[i - 1]) > 20, block[i]
    # Dockerfiles: inline checkov skips carry a reason; hadolint ignores follow a comment.
    for dockerfile in REPO.joinpath("docker").rglob("Dockerfile"):
        lines = dockerfile.read_text().splitlines()
        for n, line in enumerate(lines):
            if "checkov:skip=" in line:
                assert re.search(r"checkov:skip=CKV_\w+:\s*\S.{10,}", line), f"{dockerfile}:{n + 1}"
            if "hadolint ignore=" in line:
                assert lines[n - 1].startswith("#") and "hadolint" not in lines[n - 1], f"{dockerfile}:{n + 1}"
