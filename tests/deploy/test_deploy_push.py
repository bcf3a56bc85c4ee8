"""Content-addressed images (issue 11): a retrained model is never silently replaced by the
model an existing tag already holds.

Two different models are built with the same name, the same version number (1, as in a
fresh build/ folder) and the same commit, baked into serving images (on the debootstrap
python stand-in: the serving Dockerfile has no RUN step, so any base builds it) and pushed
with `make push` to moto's ECR API + Debian's docker-registry."""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid

import numpy as np
import pytest

import support
from support import REPO
from support.deploy import ACCOUNT, REGION, aws_env, by_kind, http_get, load_yaml_documents, run_deploy

pytestmark = [pytest.mark.docker, pytest.mark.tools, pytest.mark.compat]

MODEL = "pushtest"
LABEL = "io.scann-serving."


def _build(root, seed: int):
    """Version 1 of MODEL from 2,000 clustered 16-dim candidates (exact search: seconds)."""
    from model_builder.data.synthetic import clustered_embeddings

    root.mkdir(parents=True, exist_ok=True)
    path = root / "candidates.npz"
    np.savez(path, ids=np.arange(2000, dtype=np.int64), vectors=clustered_embeddings(2000, 16, seed=seed))
    return support.build(
        root / "models",
        "--candidates",
        str(path),
        "--query",
        "item",
        "--version",
        "1",
        "--verify-queries",
        "200",
        model_name=MODEL,
    )


@pytest.fixture(scope="module")
def images(docker_client, python_standin, tmp_path_factory):
    """{"a": (tag, version_dir), "b": ...}: same model name, version and commit, other files."""
    built = {}
    for key, seed in (("a", 1), ("b", 2)):
        root = tmp_path_factory.mktemp(f"push-{key}")
        version_dir = _build(root, seed)
        info = json.loads((version_dir / "assets.extra/build_info.json").read_text())
        assert info["memory"]["peak_rss_bytes"] > info["memory"]["baseline_rss_bytes"] > 0
        env = dict(
            os.environ,
            MODEL_DIR=str(version_dir),
            BUILD_DIR=str(root / "build"),
            SERVING_IMAGE="scann-serving-test/pushtest",
            SERVING_BASE_IMAGE=python_standin,
        )
        proc = subprocess.run(
            [str(REPO / "docker/build-images.sh")], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        built[key] = (proc.stdout.strip().splitlines()[-1], version_dir)
    yield built
    for tag, _ in built.values():
        subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True)


def _tag_parts(tag: str) -> dict:
    match = re.fullmatch(
        rf".*:{MODEL}-v(?P<version>\d+)-(?P<commit>[0-9a-f]{{12}}|nogit)(?P<dirty>-dirty)?"
        r"-(?P<digest>[0-9a-f]{12})",
        tag,
    )
    assert match, tag
    return match.groupdict()


def _model_digest(version_dir) -> str:
    """The digest recomputed here, independently of scripts/lib.sh, from the documented definition."""
    import hashlib

    lines = []
    for path in sorted(version_dir.rglob("*"), key=lambda p: str(p.relative_to(version_dir)).encode()):
        rel = "./" + str(path.relative_to(version_dir))
        if path.is_file() and rel != "./assets.extra/build_info.json" and not path.name.startswith("."):
            lines.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {rel}\n")
    return "sha256:" + hashlib.sha256("".join(lines).encode()).hexdigest()


def test_same_version_and_commit_give_different_tags_for_different_files(docker_client, images):
    (tag_a, _), (tag_b, _) = images["a"], images["b"]
    a, b = _tag_parts(tag_a), _tag_parts(tag_b)
    assert a["version"] == b["version"] == "1"
    assert (a["commit"], a["dirty"]) == (b["commit"], b["dirty"])
    assert a["digest"] != b["digest"]
    for tag, version_dir in images.values():
        labels = docker_client.images.get(tag).labels
        assert labels[f"{LABEL}model.digest"] == _model_digest(version_dir)
        assert labels[f"{LABEL}model.digest"][7:19] == _tag_parts(tag)["digest"]
        info = json.loads((version_dir / "assets.extra/build_info.json").read_text())
        assert labels[f"{LABEL}memory.peak-rss-bytes"] == str(info["memory"]["peak_rss_bytes"])
        assert labels[f"{LABEL}git.dirty"] == ("true" if _tag_parts(tag)["dirty"] else "false")


def _push(env, image):
    return subprocess.run(
        ["make", "push", f"IMAGE={image}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )


def _manifest_config(registry_url, repository, tag):
    """The image config digest the registry holds under tag (schema 2 manifest)."""
    import urllib.request

    request = urllib.request.Request(
        f"http://{registry_url}/v2/{repository}/manifests/{tag}",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["config"]["digest"]


def test_push_never_replaces_a_tag_with_other_model_files(docker_client, images, moto, registry, tmp_path):
    repository = f"scann-serving-test-{uuid.uuid4().hex[:6]}"
    env = aws_env(
        moto,
        AWS_REGION=REGION,
        AWS_ACCOUNT_ID=ACCOUNT,
        ECR_REPOSITORY=repository,
        ECR_REGISTRY=registry,
        BUILD_DIR=str(tmp_path),
    )
    (tag_a, _), (tag_b, _) = images["a"], images["b"]
    tag_of = lambda image: image.rsplit(":", 1)[1]  # noqa: E731
    remote = lambda image: f"{registry}/{repository}:{tag_of(image)}"  # noqa: E731
    collision = f"scann-serving-test/pushtest-collide:{tag_of(tag_a)}"
    try:
        # Both retrains are pushed: nothing is skipped just because version and commit repeat.
        pushed = {}
        for image in (tag_a, tag_b):
            proc = _push(env, image)
            assert proc.returncode == 0, proc.stderr[-3000:]
            assert f"pushing {remote(image)}" in proc.stderr
            pushed[image] = (tmp_path / "last-pushed-image").read_text().strip()
            assert pushed[image].startswith(remote(image) + "@sha256:")
        status, body = http_get(f"http://{registry}/v2/{repository}/tags/list")
        assert sorted(json.loads(body)["tags"]) == sorted(tag_of(t) for t in (tag_a, tag_b))
        config_a = _manifest_config(registry, repository, tag_of(tag_a))
        record_b = json.loads((tmp_path / "pushed" / f"{MODEL}.json").read_text())
        assert record_b["image"] == pushed[tag_b]

        # The same files again: skipped, said so, and the registry's digest recorded.
        proc = _push(env, tag_a)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "already holds these model files" in proc.stderr and "not pushing again" in proc.stderr
        assert (tmp_path / "last-pushed-image").read_text().strip() == pushed[tag_a]

        # Model b's image under model a's tag (a re-tag, a stale build/ folder): refused, registry untouched.
        docker_client.images.get(tag_b).tag(*collision.rsplit(":", 1))
        proc = _push(env, collision)
        assert proc.returncode != 0, proc.stderr[-3000:]  # push-ecr.sh exits 1; make reports 2
        assert "already exists with other model files" in proc.stderr and "never reused" in proc.stderr
        assert _manifest_config(registry, repository, tag_of(tag_a)) == config_a
        assert (tmp_path / "last-pushed-image").read_text().strip() == pushed[tag_a]

        # Deploy renders b from its push record, under b's model name.
        proc = run_deploy(tmp_path, "--dry-run", OVERLAY="dev", IMAGE=record_b["image"])
        assert proc.returncode == 0, proc.stderr
        (deployment,) = by_kind(load_yaml_documents(proc.stdout), "Deployment")
        assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == record_b["image"]
    finally:
        for ref in (collision, remote(tag_a), remote(tag_b)):
            subprocess.run(["docker", "image", "rm", ref], capture_output=True)
