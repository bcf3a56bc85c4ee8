"""`make push` against local stand-ins for AWS: moto's ECR API (describe/create
repository, login password) and Debian's docker-registry as the registry the
image is pushed to. The Makefile is used unchanged; endpoint and registry come
from the standard AWS_ENDPOINT_URL and the ECR_REGISTRY variable."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from support import REPO
from support.deploy import ACCOUNT, REGION, aws_env, http_get, tool

pytestmark = [pytest.mark.docker, pytest.mark.tools]


def test_make_push_creates_the_repository_and_pushes(docker_client, python_standin, moto, registry, tmp_path):
    # A small local image with a serving image's labels stands in for one: the push path is the same.
    repository = f"scann-serving-test-{uuid.uuid4().hex[:6]}"
    local = f"scann-serving-test/serving:scann_model-v1-{uuid.uuid4().hex[:12]}"
    labels = {"io.scann-serving.model.name": "scann_model", "io.scann-serving.model.digest": "sha256:" + "0" * 64}
    dockerfile = f"FROM {python_standin}\nLABEL " + " ".join(f'{k}="{v}"' for k, v in labels.items()) + "\n"
    subprocess.run(
        ["docker", "build", "-q", "-t", local, "-"],
        input=dockerfile,
        text=True,
        check=True,
        capture_output=True,
        env=dict(os.environ, DOCKER_BUILDKIT="0"),
    )
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "scann_model.json").write_text(json.dumps({"image": local, "labels": labels}))
    env = aws_env(
        moto,
        AWS_REGION=REGION,
        AWS_ACCOUNT_ID=ACCOUNT,
        ECR_REPOSITORY=repository,
        ECR_REGISTRY=registry,
        BUILD_DIR=str(tmp_path),
    )
    try:
        for attempt in ("creates the repository", "finds the existing repository"):
            proc = subprocess.run(["make", "push"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
            assert proc.returncode == 0, f"{attempt}: {proc.stdout[-2000:]}{proc.stderr[-3000:]}"
        assert f"ECR repository {repository} exists" in proc.stderr

        pushed = (tmp_path / "last-pushed-image").read_text().strip()
        tag = local.rsplit(":", 1)[1]
        assert pushed.startswith(f"{registry}/{repository}:{tag}@sha256:")

        status, body = http_get(f"http://{registry}/v2/_catalog")
        assert status == 200 and repository in json.loads(body)["repositories"]
        status, body = http_get(f"http://{registry}/v2/{repository}/tags/list")
        assert status == 200 and json.loads(body)["tags"] == [tag]

        described = subprocess.run(
            [tool("aws"), "ecr", "describe-repositories", "--repository-names", repository, "--output", "json"],
            env=dict(env, AWS_DEFAULT_REGION=REGION),
            capture_output=True,
            text=True,
            check=True,
        )
        (repo,) = json.loads(described.stdout)["repositories"]
        assert repo["repositoryName"] == repository and repo["imageTagMutability"] == "IMMUTABLE"
        # The ECR login lived in a throwaway DOCKER_CONFIG: nothing in the caller's.
        config = Path(os.environ.get("DOCKER_CONFIG", Path.home() / ".docker")) / "config.json"
        assert not config.exists() or registry not in config.read_text()
    finally:
        for ref in (local, f"{registry}/{repository}:{local.rsplit(':', 1)[1]}"):
            try:
                docker_client.images.remove(ref)
            except Exception:
                pass


def test_push_without_region_fails_in_one_line(moto, tmp_path):
    env = aws_env(moto, ECR_REPOSITORY="x", AWS_ACCOUNT_ID=ACCOUNT, BUILD_DIR=str(tmp_path))
    proc = subprocess.run([str(REPO / "scripts/push-ecr.sh")], env=env, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "AWS_REGION is not set" in proc.stderr
