"""The ops scripts' behaviour: argument errors, the readiness helper against a
TF-Serving-shaped REST endpoint, and engine.sh using an engine that answers (releases and
deploy rendering: test_deploy_render.py)."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import threading

import pytest

from support import REPO, free_port
from support.deploy import clean_env

SCRIPTS = (
    sorted((REPO / "scripts").glob("*.sh"))
    + sorted((REPO / "docker").rglob("*.sh"))
    + [REPO / "docker/serving/model-ready", REPO / "docker/standin/serving/tensorflow_model_server"]
)


def run(*cmd, env=None, timeout=120):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_scripts_parse_and_are_strict(script):
    assert os.access(script, os.X_OK), f"{script} is not executable"
    assert run("bash", "-n", script).returncode == 0
    text = script.read_text()
    if script.name not in ("tf_serving_entrypoint.sh", "lib.sh"):  # a verbatim copy; a sourced library
        assert "set -euo pipefail" in text, script


@pytest.mark.parametrize(
    "missing, message",
    [
        ("AWS_REGION", "AWS_REGION is not set"),
        ("ECR_REPOSITORY", "ECR_REPOSITORY is not set"),
        ("AWS_ACCOUNT_ID", "AWS_ACCOUNT_ID is not set (or set ECR_REGISTRY)"),
    ],
)
def test_push_reports_missing_settings_in_one_line(tmp_path, missing, message):
    settings = {"AWS_REGION": "eu-west-1", "ECR_REPOSITORY": "scann-serving", "AWS_ACCOUNT_ID": "123456789012"}
    del settings[missing]
    proc = run("scripts/push-ecr.sh", env=clean_env(BUILD_DIR=str(tmp_path), **settings))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


def test_make_push_without_region_stops_with_the_message(tmp_path):
    proc = run("make", "push", env=clean_env(BUILD_DIR=str(tmp_path)))
    assert proc.returncode != 0
    assert "push-ecr.sh: AWS_REGION is not set" in proc.stderr


def test_push_without_a_built_image_says_so(tmp_path):
    proc = run(
        "scripts/push-ecr.sh",
        env=clean_env(
            BUILD_DIR=str(tmp_path), AWS_REGION="eu-west-1", AWS_ACCOUNT_ID="123456789012", ECR_REPOSITORY="x"
        ),
    )
    assert proc.returncode == 2 and "run `make image` first" in proc.stderr


def test_engine_script_usage():
    assert run("scripts/engine.sh").returncode == 2


@pytest.mark.docker
def test_engine_uses_an_engine_that_answers_and_installs_nothing(docker_client, tmp_path):
    """Docker Desktop, a CI runner: `ensure` needs only a `docker` that answers. With nothing
    else on PATH (no apt-get, dockerd, debootstrap, docker-registry) any install or start
    attempt would fail the command."""
    import shutil

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("bash", "docker", "id"):
        (bin_dir / name).symlink_to(shutil.which(name))
    env = dict(os.environ, PATH=str(bin_dir))
    proc = run("scripts/engine.sh", "ensure", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "ready" in proc.stderr and "installing" not in proc.stderr and "starting" not in proc.stderr
    # The test tools are another command: it would install them (and fails here, without apt-get).
    proc = run("scripts/engine.sh", "test-tools", env=env)
    assert proc.returncode == 1 and "missing debootstrap docker-registry and no apt-get" in proc.stderr


class _TfsStatus(http.server.BaseHTTPRequestHandler):
    """Answers GET /v1/models/<name> like TF Serving (pretty-printed JSON)."""

    state = "AVAILABLE"
    model = "scann_model"

    def do_GET(self):
        if self.path != f"/v1/models/{self.model}":
            body = json.dumps({"error": f"Servable not found for request: Latest({self.path})"}).encode()
            self.send_response(404)
        else:
            status = {
                "model_version_status": [
                    {"version": "7", "state": self.state, "status": {"error_code": "OK", "error_message": ""}}
                ]
            }
            body = json.dumps(status, indent=1).encode()
            self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def status_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TfsStatus)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    _TfsStatus.state = "AVAILABLE"


def ready(port, *args, model="scann_model"):
    return run(
        REPO / "docker/serving/model-ready",
        *args,
        env=dict(os.environ, REST_PORT=str(port), MODEL_NAME=model),
        timeout=30,
    )


def test_model_ready_accepts_only_available(status_server):
    port = status_server.server_address[1]
    assert ready(port).returncode == 0
    for state in ("START", "LOADING", "UNLOADING", "END"):
        _TfsStatus.state = state
        proc = ready(port)
        assert proc.returncode == 1, state
        assert f"state: {state}" in proc.stderr
    _TfsStatus.state = "AVAILABLE"
    assert ready(port, "scann_model", model="other").returncode == 0  # the argument wins over MODEL_NAME


def test_model_ready_rejects_unknown_model_and_closed_port(status_server):
    proc = ready(status_server.server_address[1], model="nosuchmodel")
    assert proc.returncode == 1 and "404" in proc.stderr
    proc = ready(free_port())
    assert proc.returncode == 1 and "nothing listening" in proc.stderr


def test_ops_scripts_live_in_scripts_and_docker_keeps_image_builds():
    """Issue 12: docker/ holds what builds images; ECR, Kubernetes and engine scripts are in scripts/."""
    moved = {"push-ecr.sh", "deploy.sh", "engine.sh", "lint.sh", "lib.sh"}
    assert {p.name for p in (REPO / "scripts").glob("*.sh")} >= moved
    assert {p.name for p in (REPO / "docker").glob("*.sh")} == {"build-images.sh"}
