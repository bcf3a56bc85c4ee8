"""Content-addressed images (issue 11) and deploy state in git (issue 18): a retrained model is
never silently replaced by the model an existing tag already holds, and each push writes the
tracked k8s/models/<model>/prod that pins it by digest; `git revert` of that change is a rollback.

Two different models are built with the same name, the same version number (1, as in a
fresh build/ folder) and the same commit, baked into serving images (on the debootstrap
python stand-in: the serving Dockerfile has no RUN step, so any base builds it) and pushed
with `make push` to moto's ECR API + Debian's docker-registry. Everything runs from a scratch
git repository holding the tracked files (a clean work tree, and a history to revert in)."""

from __future__ import annotations

import json
import re
import subprocess
import uuid

import numpy as np
import pytest

import support
from support.deploy import (
    ACCOUNT,
    REGION,
    aws_env,
    by_kind,
    clean_env,
    git,
    http_get,
    load_yaml_documents,
    render,
    scratch_repo,
    tool,
)

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
def scratch(tmp_path_factory):
    """A git repository holding the tracked files: images are built and pushed from it."""
    return scratch_repo(tmp_path_factory.mktemp("push-repo") / "repo")


@pytest.fixture(scope="module")
def images(docker_client, python_standin, scratch, tmp_path_factory):
    """{"a": (tag, version_dir), "b": ...}: same model name, version and commit, other files."""
    built = {}
    for key, seed in (("a", 1), ("b", 2)):
        root = tmp_path_factory.mktemp(f"push-{key}")
        version_dir = _build(root, seed)
        info = json.loads((version_dir / "assets.extra/build_info.json").read_text())
        assert info["memory"]["peak_rss_bytes"] > info["memory"]["baseline_rss_bytes"] > 0
        env = clean_env(
            MODEL_DIR=str(version_dir),
            BUILD_DIR=str(root / "build"),
            SERVING_IMAGE="scann-serving-test/pushtest",
            SERVING_BASE_IMAGE=python_standin,
        )
        proc = subprocess.run(
            [str(scratch / "docker/build-images.sh")], cwd=scratch, env=env, capture_output=True, text=True, timeout=900
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        built[key] = (proc.stdout.strip().splitlines()[-1], version_dir)
    yield built
    for tag, _ in built.values():
        subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True)


def _tag_parts(tag: str) -> dict:
    match = re.fullmatch(
        rf".*:{MODEL}-v(?P<version>\d+)-(?P<commit>[0-9a-f]{{12}}|nogit)(?P<dirty>-dirty)?(?P<standin>-standin)?"
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
        if path.is_file() and not path.name.startswith("."):
            lines.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {rel}\n")
    return "sha256:" + hashlib.sha256("".join(lines).encode()).hexdigest()


def test_same_version_and_commit_give_different_tags_for_different_files(docker_client, images):
    (tag_a, _), (tag_b, _) = images["a"], images["b"]
    a, b = _tag_parts(tag_a), _tag_parts(tag_b)
    assert a["version"] == b["version"] == "1"
    assert (a["commit"], a["dirty"]) == (b["commit"], b["dirty"])
    assert a["digest"] != b["digest"] and a["dirty"] is None  # built from the scratch repo's commit
    for tag, version_dir in images.values():
        labels = docker_client.images.get(tag).labels
        assert labels[f"{LABEL}model.digest"] == _model_digest(version_dir)
        assert labels[f"{LABEL}content.digest"][7:19] == _tag_parts(tag)["digest"]
        # Built on the python stand-in: the tag and a label say so.
        assert _tag_parts(tag)["standin"] and labels[f"{LABEL}standin"] == "true"
        info = json.loads((version_dir / "assets.extra/build_info.json").read_text())
        assert labels[f"{LABEL}memory.peak-rss-bytes"] == str(info["memory"]["peak_rss_bytes"])
        assert labels[f"{LABEL}git.dirty"] == ("true" if _tag_parts(tag)["dirty"] else "false")


def _push(env, image, cwd):
    return subprocess.run(
        ["make", "push", f"IMAGE={image}"], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
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


def _env(moto, registry, tmp_path, **extra):
    return aws_env(
        moto,
        AWS_REGION=REGION,
        AWS_ACCOUNT_ID=ACCOUNT,
        ECR_REPOSITORY=f"scann-serving-test-{uuid.uuid4().hex[:6]}",
        ECR_REGISTRY=registry,
        BUILD_DIR=str(tmp_path),
        **extra,
    )


def test_push_never_replaces_a_tag_with_other_model_files(docker_client, images, scratch, moto, registry, tmp_path):
    env = _env(moto, registry, tmp_path, ALLOW_STANDIN="1", RELEASE="0")
    repository = env["ECR_REPOSITORY"]
    (tag_a, _), (tag_b, _) = images["a"], images["b"]
    tag_of = lambda image: image.rsplit(":", 1)[1]  # noqa: E731
    remote = lambda image: f"{registry}/{repository}:{tag_of(image)}"  # noqa: E731
    collision = f"scann-serving-test/pushtest-collide:{tag_of(tag_a)}"
    try:
        # Both retrains are pushed: nothing is skipped just because version and commit repeat.
        pushed = {}
        for image in (tag_a, tag_b):
            proc = _push(env, image, scratch)
            assert proc.returncode == 0, proc.stderr[-3000:]
            assert f"pushing {remote(image)}" in proc.stderr
            pushed[image] = (tmp_path / "last-pushed-image").read_text().strip()
            assert pushed[image].startswith(remote(image) + "@sha256:")
        status, body = http_get(f"http://{registry}/v2/{repository}/tags/list")
        assert sorted(json.loads(body)["tags"]) == sorted(tag_of(t) for t in (tag_a, tag_b))
        config_a = _manifest_config(registry, repository, tag_of(tag_a))

        # The same image again: skipped, said so, and the registry's digest recorded.
        proc = _push(env, tag_a, scratch)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "already holds this content" in proc.stderr and "not pushing again" in proc.stderr
        assert (tmp_path / "last-pushed-image").read_text().strip() == pushed[tag_a]

        # Model b's image under model a's tag (a re-tag, a stale build/ folder): refused, registry untouched.
        docker_client.images.get(tag_b).tag(*collision.rsplit(":", 1))
        proc = _push(env, collision, scratch)
        assert proc.returncode != 0, proc.stderr[-3000:]  # push-ecr.sh exits 1; make reports 2
        assert "already exists with other content" in proc.stderr and "never reused" in proc.stderr
        assert _manifest_config(registry, repository, tag_of(tag_a)) == config_a
        assert (tmp_path / "last-pushed-image").read_text().strip() == pushed[tag_a]

        # Without the override a stand-in image is not pushed at all.
        proc = _push(dict(env, ALLOW_STANDIN=""), tag_a, scratch)
        assert proc.returncode != 0 and "stand-in base image" in proc.stderr
    finally:
        for ref in (collision, remote(tag_a), remote(tag_b)):
            subprocess.run(["docker", "image", "rm", ref], capture_output=True)


def _pinned(release_dir) -> str:
    (deployment,) = by_kind(render(release_dir), "Deployment")
    return deployment["spec"]["template"]["spec"]["containers"][0]["image"]


def test_each_push_pins_its_image_in_git_and_git_revert_rolls_back(images, scratch, moto, registry, tmp_path):
    """The issue's acceptance: v2 pushed after v1 is what k8s/models/<model>/prod renders, the
    overlay alone renders nothing applyable, and reverting the bump's commit renders v1 again."""
    env = _env(moto, registry, tmp_path, ALLOW_STANDIN="1")
    release_dir = scratch / "k8s/models" / MODEL / "prod"
    pushed = {}
    try:
        for key in ("a", "b"):
            proc = _push(env, images[key][0], scratch)
            assert proc.returncode == 0, proc.stderr[-3000:]
            assert f"wrote k8s/models/{MODEL}/prod/" in proc.stderr
            pushed[key] = (tmp_path / "last-pushed-image").read_text().strip()
            assert pushed[key] in (release_dir / "release.yaml").read_text()
            git(scratch, "add", "k8s/models")
            git(scratch, "commit", "-q", "-m", f"release {MODEL} {key}")
        assert re.fullmatch(r".+@sha256:[0-9a-f]{64}", pushed["b"])
        assert _pinned(release_dir) == pushed["b"]
        # The environment alone is a component that needs a release: no Deployment to apply.
        overlay = subprocess.run(
            [tool("kubectl"), "kustomize", str(scratch / "k8s/overlays/prod")], capture_output=True, text=True
        )
        assert overlay.returncode != 0 and "release-from-make-push" in overlay.stderr
        # The rollback as k8s/README.md documents it: revert the last commit that changed the release.
        last = git(scratch, "log", "-1", "--format=%H", "--", f"k8s/models/{MODEL}/prod").strip()
        git(scratch, "revert", "--no-edit", last)
        assert _pinned(release_dir) == pushed["a"]
        # make deploy applies that folder, and says what it is.
        proc = subprocess.run(
            ["make", "--silent", "deploy", f"MODEL={MODEL}", "RENDER_ONLY=1"],
            cwd=scratch,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        (deployment,) = by_kind(load_yaml_documents(proc.stdout), "Deployment")
        assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == pushed["a"]
        assert "not the image last pushed here (v1" in proc.stderr  # b was pushed last
    finally:
        for tag, _ in images.values():
            remote = f"{registry}/{env['ECR_REPOSITORY']}:{tag.rsplit(':', 1)[1]}"
            subprocess.run(["docker", "image", "rm", remote], capture_output=True)
