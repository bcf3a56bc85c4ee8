"""versions.env is the single source of versions, names and ports: everything
the deploy side hard-codes (Dockerfile ARG defaults, k8s manifests, scripts,
the locks) must agree with it, and the Makefile must take it from there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from support import REPO
from support.deploy import by_kind

DOCKERFILES = sorted((REPO / "docker").rglob("Dockerfile"))


def arg_defaults(dockerfile: Path) -> dict[str, str]:
    """ARG NAME=default pairs; a name declared twice (multi-stage) must keep its value."""
    defaults: dict[str, str] = {}
    for name, value in re.findall(r"^ARG\s+([A-Za-z_][A-Za-z0-9_]*)=(\S*)", dockerfile.read_text(), re.M):
        value = value.strip('"')
        assert defaults.setdefault(name, value) == value, f"{dockerfile}: ARG {name} has two defaults"
    return defaults


def test_dockerfiles_found():
    names = {str(p.relative_to(REPO)) for p in DOCKERFILES}
    assert {
        "docker/builder/Dockerfile",
        "docker/serving/Dockerfile",
        "docker/standin/serving/Dockerfile",
        "docker/tf-serving-scann/Dockerfile",
    } <= names


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_dockerfile_arg_defaults_match_versions_env(dockerfile, versions):
    defaults = arg_defaults(dockerfile)
    shared = {k: v for k, v in defaults.items() if k in versions}
    for key, value in shared.items():
        assert value == versions[key], f"{dockerfile.name}: ARG {key}={value}, versions.env says {versions[key]}"


def test_base_images_are_build_args_with_the_real_defaults(versions):
    builder = (REPO / "docker/builder/Dockerfile").read_text()
    serving = (REPO / "docker/serving/Dockerfile").read_text()
    assert arg_defaults(REPO / "docker/builder/Dockerfile")["BUILDER_BASE_IMAGE"] == versions["BUILDER_BASE_IMAGE"]
    assert arg_defaults(REPO / "docker/serving/Dockerfile")["SERVING_BASE_IMAGE"] == versions["SERVING_BASE_IMAGE"]
    assert versions["BUILDER_BASE_IMAGE"] == "python:3.11-slim"
    assert versions["SERVING_BASE_IMAGE"] == "google/tf-serving-scann:2.11.0"
    froms = re.findall(r"^FROM\s+(\S+)", builder, re.M)
    assert froms == ["${BUILDER_BASE_IMAGE}", "${BUILDER_BASE_IMAGE}"]
    # Two targets: `single` on the base, `keep-versions` (a shard's two-version image) on `single`.
    assert re.findall(r"^FROM\s+(.+)$", serving, re.M) == ["${SERVING_BASE_IMAGE} AS single", "single AS keep-versions"]
    # Each version the images are labelled with is a build arg, defaulted from versions.env.
    for key in ("TF_VERSION", "SCANN_VERSION"):
        assert key in arg_defaults(REPO / "docker/builder/Dockerfile")
        assert key in arg_defaults(REPO / "docker/serving/Dockerfile")
    assert arg_defaults(REPO / "docker/builder/Dockerfile")["RECBOLE_VERSION"] == versions["RECBOLE_VERSION"]
    assert arg_defaults(REPO / "docker/serving/Dockerfile")["MODEL"] == versions["MODEL_NAME"]


def test_source_build_defaults_to_the_serving_runtime(versions):
    """docker/tf-serving-scann rebuilds the runtime the compatibility gate tests by default."""
    defaults = arg_defaults(REPO / "docker/tf-serving-scann/Dockerfile")
    assert defaults["TF_SERVING_VERSION"] == versions["COMPAT_TF_VERSION"]
    assert versions["SERVING_BASE_IMAGE"].endswith(":" + versions["COMPAT_TF_VERSION"])


def test_standin_builds_from_the_makefile_builder_image(versions):
    defaults = arg_defaults(REPO / "docker/standin/serving/Dockerfile")
    assert defaults["BUILDER_IMAGE"] == f"scann-serving-builder:{versions['TF_VERSION']}"
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^BUILDER_IMAGE \?= scann-serving-builder:\$\(TF_VERSION\)", makefile, re.M)


def test_ports_in_images_and_scripts(versions):
    grpc, rest = versions["GRPC_PORT"], versions["REST_PORT"]
    serving = (REPO / "docker/serving/Dockerfile").read_text()
    assert re.search(rf"^EXPOSE {grpc} {rest}$", serving, re.M)
    assert f"REST_PORT:-{rest}" in (REPO / "docker/serving/model-ready").read_text()
    for entrypoint in (
        "docker/standin/serving/tf_serving_entrypoint.sh",
        "docker/tf-serving-scann/tf_serving_entrypoint.sh",
    ):
        text = (REPO / entrypoint).read_text()
        assert f"--port={grpc} --rest_api_port={rest}" in text, entrypoint
    # Both copies of the published image's entrypoint are the same bytes.
    assert (REPO / "docker/standin/serving/tf_serving_entrypoint.sh").read_bytes() == (
        REPO / "docker/tf-serving-scann/tf_serving_entrypoint.sh"
    ).read_bytes()


@pytest.mark.tools
def test_k8s_ports(rendered, versions):
    for overlay, objects in rendered.items():
        (deployment,) = by_kind(objects, "Deployment")
        (c,) = deployment["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: str(p["containerPort"]) for p in c["ports"]}
        assert ports == {"grpc": versions["GRPC_PORT"], "http": versions["REST_PORT"]}, overlay
        for service in by_kind(objects, "Service"):
            for port in service["spec"]["ports"]:
                assert str(port["port"]) == ports[port["name"]], (overlay, service["metadata"]["name"])


def test_makefile_takes_versions_from_versions_env(versions):
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^include versions\.env$", makefile, re.M)
    # No value of versions.env is repeated in the Makefile: it must use the variable.
    for key in (
        "TF_VERSION",
        "SCANN_VERSION",
        "RECBOLE_VERSION",
        "BUILDER_BASE_IMAGE",
        "SERVING_BASE_IMAGE",
        "MODEL_NAME",
        "GRPC_PORT",
        "REST_PORT",
    ):
        assert versions[key] not in makefile, f"Makefile hard-codes {key}={versions[key]}"


def test_scripts_take_versions_from_versions_env(versions):
    scripts = [*(REPO / "docker").rglob("*.sh"), *(REPO / "scripts").glob("*.sh")]
    assert scripts
    for script in scripts:
        # Comments may name versions as examples; code may not.
        text = "\n".join(line for line in script.read_text().splitlines() if not line.lstrip().startswith("#"))
        for key in ("TF_VERSION", "SCANN_VERSION", "RECBOLE_VERSION", "BUILDER_BASE_IMAGE", "SERVING_BASE_IMAGE"):
            assert versions[key] not in text, f"{script.relative_to(REPO)} hard-codes {key}"


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-\[\]]+)==(\S+)", line.strip())
        if match:
            pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def test_build_lock_pins_match_versions_env(versions):
    for lock in ("build.in", "build.txt"):
        pins = _pins(REPO / "requirements" / lock)
        assert pins["tensorflow"] == versions["TF_VERSION"], lock
        assert pins["scann"] == versions["SCANN_VERSION"], lock
        assert pins["tensorflow-serving-api"] == versions["TF_SERVING_API_VERSION"], lock


def test_source_build_has_a_serving_patch_for_its_tf_serving_version():
    """docker/tf-serving-scann applies serving-<TF_SERVING_VERSION>.patch (verified against the tag by
    `git apply --check`, docker/tf-serving-scann/README.md); it must exist and touch exactly the two
    files, adding ScaNN's ops and its repository."""
    folder = REPO / "docker/tf-serving-scann"
    version = arg_defaults(folder / "Dockerfile")["TF_SERVING_VERSION"]
    patch = (folder / f"serving-{version}.patch").read_text()
    assert re.findall(r"^\+\+\+ b/(\S+)", patch, re.M) == [
        "tensorflow_serving/model_servers/BUILD",
        "tensorflow_serving/workspace.bzl",
    ]
    added = "\n".join(line for line in patch.splitlines() if line.startswith("+") and not line.startswith("+++"))
    assert '"@com_google_scann//scann/scann_ops/cc:scann_ops_static"' in added
    assert 'name = "com_google_scann"' in added
    assert version in (folder / "README.md").read_text()
