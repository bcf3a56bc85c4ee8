"""`make push` against local stand-ins for AWS: moto's ECR API (describe/create
repository, login password) and Debian's docker-registry as the registry the
image is pushed to. The Makefile is used unchanged; endpoint and registry come
from the standard AWS_ENDPOINT_URL and the ECR_REGISTRY variable."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from support import REPO
from support.deploy import ACCOUNT, REGION, aws_env, clean_env, git, http_get, scratch_repo, tool

pytestmark = [pytest.mark.docker, pytest.mark.tools]


def _labelled_image(python_standin: str, labels: dict[str, str]) -> str:
    """A small local image with a serving image's labels: the push path reads only those."""
    local = f"scann-serving-test/serving:scann_model-v1-{uuid.uuid4().hex[:12]}"
    dockerfile = f"FROM {python_standin}\nLABEL " + " ".join(f'{k}="{v}"' for k, v in labels.items()) + "\n"
    subprocess.run(
        ["docker", "build", "-q", "-t", local, "-"],
        input=dockerfile,
        text=True,
        check=True,
        capture_output=True,
        env=dict(os.environ, DOCKER_BUILDKIT="0"),
    )
    return local


def _aws_ecr(env: dict, *args: str) -> dict:
    """`aws ecr ARGS --output json` against the stand-in, parsed."""
    out = subprocess.run(
        [tool("aws"), "ecr", *args, "--output", "json"],
        env=dict(env, AWS_DEFAULT_REGION=REGION),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def test_make_push_creates_the_repository_and_pushes(docker_client, python_standin, moto, registry, tmp_path):
    repository = f"scann-serving-test-{uuid.uuid4().hex[:6]}"
    labels = {
        "io.scann-serving.model.name": "scann_model",
        "io.scann-serving.content.digest": "sha256:" + "0" * 64,
        "io.scann-serving.standin": "false",
    }
    local = _labelled_image(python_standin, labels)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "scann_model.json").write_text(json.dumps({"image": local, "labels": labels}))
    env = aws_env(
        moto,
        AWS_REGION=REGION,
        AWS_ACCOUNT_ID=ACCOUNT,
        ECR_REPOSITORY=repository,
        ECR_REGISTRY=registry,
        BUILD_DIR=str(tmp_path),
        RELEASE="0",  # a bare image without the build's labels: test_deploy_push.py releases real ones
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

        (repo,) = _aws_ecr(env, "describe-repositories", "--repository-names", repository)["repositories"]
        assert repo["repositoryName"] == repository and repo["imageTagMutability"] == "IMMUTABLE"
        # The lifecycle policy expires untagged images only: what releases reference keeps its tag.
        policy = _aws_ecr(env, "get-lifecycle-policy", "--repository-name", repository)
        rules = json.loads(policy["lifecyclePolicyText"])["rules"]
        assert rules == json.loads((REPO / "scripts/ecr-lifecycle-policy.json").read_text())["rules"]
        assert [r["selection"]["tagStatus"] for r in rules] == ["untagged"]
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


def _aws(env, *args):
    return subprocess.run(
        [tool("aws"), "ecr", *args, "--output", "json"],
        env=dict(env, AWS_DEFAULT_REGION=REGION),
        capture_output=True,
        text=True,
        check=True,
    )


def test_push_refuses_an_existing_repository_with_mutable_tags(docker_client, python_standin, moto, tmp_path):
    repository = f"scann-serving-test-{uuid.uuid4().hex[:6]}"
    labels = {"io.scann-serving.model.name": "scann_model", "io.scann-serving.content.digest": "sha256:" + "1" * 64}
    local = _labelled_image(python_standin, labels)
    env = aws_env(
        moto,
        AWS_REGION=REGION,
        AWS_ACCOUNT_ID=ACCOUNT,
        ECR_REPOSITORY=repository,
        ECR_REGISTRY="127.0.0.1:9",
        BUILD_DIR=str(tmp_path),
        IMAGE=local,
        ALLOW_STANDIN="1",
    )
    try:
        _aws(env, "create-repository", "--repository-name", repository, "--image-tag-mutability", "MUTABLE")
        proc = subprocess.run([str(REPO / "scripts/push-ecr.sh")], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr
        assert (
            f"ECR repository {repository} has mutable tags" in proc.stderr and "put-image-tag-mutability" in proc.stderr
        )
    finally:
        docker_client.images.remove(local)


def test_push_refuses_a_standin_image_without_the_override(docker_client, python_standin, tmp_path):
    """Before any AWS call: the image's io.scann-serving.standin label decides."""
    labels = {
        "io.scann-serving.model.name": "scann_model",
        "io.scann-serving.content.digest": "sha256:" + "2" * 64,
        "io.scann-serving.standin": "true",
    }
    local = _labelled_image(python_standin, labels)
    try:
        env = clean_env(
            AWS_REGION=REGION, AWS_ACCOUNT_ID=ACCOUNT, ECR_REPOSITORY="x", BUILD_DIR=str(tmp_path), IMAGE=local
        )
        proc = subprocess.run([str(REPO / "scripts/push-ecr.sh")], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert "stand-in base image" in proc.stderr and "ALLOW_STANDIN=1" in proc.stderr
    finally:
        docker_client.images.remove(local)


def _put_image(env, repository, tag) -> str:
    """An image in moto's ECR (a manifest; moto stores no blobs and digests the layer list): its digest."""
    layer = "sha256:" + hashlib.sha256(tag.encode()).hexdigest()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1, "digest": layer},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 1, "digest": layer}],
        }
    )
    out = _aws(env, "put-image", "--repository-name", repository, "--image-tag", tag, "--image-manifest", manifest)
    return json.loads(out.stdout)["image"]["imageId"]["imageDigest"]


def test_ecr_prune_deletes_only_images_no_release_ever_pinned(moto, tmp_path):
    """Images pinned by a release in any commit (also one reverted since) survive; others go."""
    scratch = scratch_repo(tmp_path / "repo")
    repository = f"scann-serving-test-{uuid.uuid4().hex[:6]}"
    env = aws_env(moto, AWS_REGION=REGION, ECR_REPOSITORY=repository, BUILD_DIR=str(tmp_path / "build"))
    _aws(env, "create-repository", "--repository-name", repository, "--image-tag-mutability", "IMMUTABLE")
    digests = {tag: _put_image(env, repository, tag) for tag in ("v1", "v2", "unreleased")}
    release = scratch / "k8s/models/m/prod/release.yaml"
    release.parent.mkdir(parents=True)
    for tag in ("v1", "v2"):  # v1 released, then replaced by v2: v1 stays reachable by git revert
        release.write_text(f'data:\n  image: "registry.example/r:{tag}@{digests[tag]}"\n')
        git(scratch, "add", "-A")
        git(scratch, "commit", "-q", "-m", f"release {tag}")

    def prune(**extra):
        proc = subprocess.run(
            [str(scratch / "scripts/ecr-prune.sh")], env=dict(env, **extra), capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        return proc

    def remaining():
        out = _aws(env, "describe-images", "--repository-name", repository)
        return {i["imageDigest"] for i in json.loads(out.stdout)["imageDetails"]}

    assert "would delete" not in prune(KEEP_DAYS="30", DRY_RUN="0").stdout  # everything is recent
    proc = prune(KEEP_DAYS="0")  # DRY_RUN defaults to 1
    assert proc.stdout.strip() == f"would delete {digests['unreleased']} (unreleased)"
    assert remaining() == set(digests.values())
    prune(KEEP_DAYS="0", DRY_RUN="0")
    assert remaining() == {digests["v1"], digests["v2"]}
