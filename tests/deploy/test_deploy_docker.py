"""The images, built and run on a real Docker engine.

`make image USE_STANDINS=1` builds the whole chain once per module: the
debootstrap python stand-in -> the builder image -> a MovieLens model built by
running the builder container -> the tf-serving stand-in (same entrypoint
contract as google/tf-serving-scann, serving with the project's local server)
-> the serving image FROM that stand-in. The serving container then runs the
way Kubernetes runs it (non-root, read-only root FS, tmpfs /tmp, no
capabilities) and the smoke suite is pointed at it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import REPO, wait_for
from support.deploy import (
    STANDIN_PREFIX,
    by_kind,
    http_get,
    load_yaml_documents,
    make_image_on_standins,
    read_versions,
    run_deploy,
    run_release,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow]

PREFIX = STANDIN_PREFIX
VERSIONS = read_versions()
MODEL = VERSIONS["MODEL_NAME"]
GRPC, REST = VERSIONS["GRPC_PORT"], VERSIONS["REST_PORT"]
# Fewer epochs than a release build: the tests check the plumbing, and the
# builder's recall gate (ScaNN vs exact search) does not depend on training length.
BUILD_ARGS = os.environ.get("DEPLOY_TEST_BUILD_ARGS", "--epochs 2")


@dataclass(frozen=True)
class Built:
    tag: str
    builder: str
    standin: str
    models: Path
    version: str
    build_dir: Path


@pytest.fixture(scope="module")
def built(docker_client, python_standin, tmp_path_factory) -> Built:
    build_dir = tmp_path_factory.mktemp("image-build")
    builder, standin = f"{PREFIX}/builder:ci", f"{PREFIX}/tf-serving-standin:ci"
    tag = make_image_on_standins(
        build_dir,
        "DATASET=movielens-100k",
        f"BUILD_ARGS={BUILD_ARGS}",
        f"MODEL={MODEL}",
        MODELS=str(build_dir / "models"),
    )
    version = re.fullmatch(rf"{PREFIX}/serving:{MODEL}-v(\d+)-\S+", tag).group(1)
    return Built(tag, builder, standin, build_dir / "models", version, build_dir)


def run_in(client, image, command, entrypoint=None, **kwargs) -> tuple[int, str]:
    container = client.containers.run(image, command, entrypoint=entrypoint, detach=True, **kwargs)
    try:
        code = container.wait(timeout=600)["StatusCode"]
        return code, container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)


def test_python_standin_is_a_python_311_base(docker_client, python_standin):
    code, out = run_in(
        docker_client, python_standin, ["python3", "-c", "import sys, venv, ssl; print(sys.version_info[:2])"]
    )
    assert code == 0 and out.strip() == "(3, 11)", out


def test_builder_image_is_non_root_without_build_tools(docker_client, built):
    image = docker_client.images.get(built.builder)
    config = image.attrs["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["python", "-m", "model_builder"]
    assert image.labels["io.scann-serving.tensorflow-version"] == VERSIONS["TF_VERSION"]
    assert image.labels["io.scann-serving.scann-version"] == VERSIONS["SCANN_VERSION"]
    # No compiler, no package installer, no wheelhouse in the final stage.
    script = (
        "for t in gcc cc c++ make pip pip3; do command -v $t && exit 1; done; "
        "test ! -e /tmp/wheelhouse && test ! -e /opt/venv/bin/pip && "
        "/opt/venv/bin/python -c 'import tensorflow, scann, tensorflow_serving, model_builder'"
    )
    code, out = run_in(docker_client, built.builder, ["-c", script], entrypoint=["sh"])
    assert code == 0, out


def test_builder_checks_versions_against_the_images_batching_file(docker_client, built):
    # The build's serving-rules gate and --optimize throughput read the serving image's batching
    # file; the builder image carries the same file where a checkout has it.
    script = (
        "from model_builder import settings; from model_builder.index import execution_batch; "
        "print(settings.IMAGE_BATCHING_FILE.read_text() == open('/dev/stdin').read(), execution_batch.execution_batch_size())"
    )
    code, out = run_in(
        docker_client,
        built.builder,
        ["-c", f'/opt/venv/bin/python -c "{script}" < /opt/scann-serving/k8s/base/config/batching_parameters.txt'],
        entrypoint=["sh"],
    )
    assert code == 0, out
    shipped = (REPO / "k8s/base/config/batching_parameters.txt").read_text()
    code, copy = run_in(
        docker_client, built.builder, ["/opt/scann-serving/k8s/base/config/batching_parameters.txt"], entrypoint=["cat"]
    )
    assert code == 0 and copy == shipped
    from model_builder.index import execution_batch

    assert out.split()[-2:] == [
        "True",
        str(execution_batch.read_execution_batch_size(execution_batch.BATCHING_FILE)),
    ], out


def test_builder_cli_runs_read_only_without_network(docker_client, built):
    code, out = run_in(
        docker_client, built.builder, ["build", "--help"], read_only=True, network_disabled=True, tmpfs={"/tmp": ""}
    )
    assert code == 0 and "--dataset" in out, out


def test_builder_wrote_a_tf_serving_version_folder(built):
    versions = [p.name for p in (built.models / MODEL).iterdir() if p.is_dir()]
    assert built.version in versions and all(v.isdigit() for v in versions)
    folder = built.models / MODEL / built.version
    for path in (
        "saved_model.pb",
        "variables/variables.index",
        "assets.extra/tf_serving_warmup_requests",
        "assets.extra/build_info.json",
    ):
        assert (folder / path).is_file(), path
    json.loads((folder / "assets.extra/build_info.json").read_text())
    # Written by the image's non-root user (the host side is root here).
    if os.getuid() == 0:
        assert (folder / "saved_model.pb").stat().st_uid == 10001


def test_serving_image_metadata(docker_client, built):
    image = docker_client.images.get(built.tag)
    config = image.attrs["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["/usr/bin/tf_serving_entrypoint.sh"]
    assert f"MODEL_NAME={MODEL}" in config["Env"] and "MODEL_BASE_PATH=/models" in config["Env"]
    assert {f"{GRPC}/tcp", f"{REST}/tcp"} <= set(config["ExposedPorts"])
    cmd = " ".join(config["Cmd"])
    for flag in (
        "--enable_batching",
        "--batching_parameters_file=/etc/tfserving/batching_parameters.txt",
        "--monitoring_config_file=/etc/tfserving/monitoring_config.txt",
        "--grpc_channel_arguments=grpc.max_connection_age_ms=",
    ):
        assert flag in cmd
    labels = image.labels
    assert labels["io.scann-serving.model.name"] == MODEL
    assert labels["io.scann-serving.model.version"] == built.version
    # <model>-v<version>-<gitsha>[-dirty]-standin-<first 12 hex of the content digest>: built on
    # the stand-in bases (USE_STANDINS=1), which the tag and a label say.
    revision, digest12 = built.tag.rsplit(f"-v{built.version}-", 1)[1].rsplit("-", 1)
    assert revision.endswith("-standin") and labels["io.scann-serving.standin"] == "true"
    revision = revision.removesuffix("-standin")
    assert labels["org.opencontainers.image.revision"] == revision
    assert labels["io.scann-serving.git.dirty"] == ("true" if revision.endswith("-dirty") else "false")
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", labels["io.scann-serving.model.digest"])
    assert labels["io.scann-serving.content.digest"][7:19] == digest12
    assert labels["io.scann-serving.base.id"] == docker_client.images.get(built.standin).id
    assert float(labels["io.scann-serving.startup.load-seconds"]) > 0
    # Measured on the host before the bake (the builder image has no TF 2.11 env), stored in both places.
    info = json.loads((built.models / MODEL / built.version / "assets.extra/build_info.json").read_text())
    assert labels["io.scann-serving.memory.peak-rss-bytes"] == str(info["memory"]["peak_rss_bytes"])
    assert info["memory"]["peak_rss_bytes"] > info["memory"]["baseline_rss_bytes"] > 50 * 2**20
    assert labels["io.scann-serving.build.tensorflow-version"] == VERSIONS["TF_VERSION"]
    assert labels["io.scann-serving.build.scann-version"] == VERSIONS["SCANN_VERSION"]
    assert labels["io.scann-serving.runtime.tensorflow-version"] == VERSIONS["COMPAT_TF_VERSION"]
    assert config["Healthcheck"]["Test"] == ["CMD", "/usr/local/bin/model-ready"]
    # Exactly the one version, and the configs the ConfigMap also carries.
    script = f"ls /models/{MODEL} && cat /etc/tfserving/batching_parameters.txt /etc/tfserving/monitoring_config.txt"
    code, out = run_in(docker_client, built.tag, ["-c", script], entrypoint=["bash"])
    assert code == 0 and out.splitlines()[0] == built.version, out
    assert (REPO / "k8s/base/config/monitoring_config.txt").read_text() in out
    assert (REPO / "k8s/base/config/batching_parameters.txt").read_text() in out
    # The image's build_info.json carries the measurement too.
    info_path = f"/models/{MODEL}/{built.version}/assets.extra/build_info.json"
    code, out = run_in(docker_client, built.tag, ["-c", f"cat {info_path}"], entrypoint=["bash"])
    peak = int(labels["io.scann-serving.memory.peak-rss-bytes"])
    assert code == 0 and json.loads(out)["memory"]["peak_rss_bytes"] == peak


@pytest.mark.tools
def test_release_renders_the_built_image_from_its_own_labels(built, tmp_path):
    """`IMAGE=<tag> make release OVERLAY=dev` (a local image, e.g. loaded into kind): names,
    MODEL_NAME and memory come from the image's labels."""
    proc = run_release(tmp_path, OVERLAY="dev", IMAGE=built.tag)
    assert proc.returncode == 0, proc.stderr
    proc = run_deploy(tmp_path, "--dry-run", OVERLAY="dev", MODEL=MODEL)
    assert proc.returncode == 0, proc.stderr
    (deployment,) = by_kind(load_yaml_documents(proc.stdout), "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == built.tag
    assert {"name": "MODEL_NAME", "value": MODEL} in container["env"]
    assert deployment["metadata"]["name"] == MODEL.replace("_", "-") + "-serving"


@dataclass(frozen=True)
class Serving:
    container: object
    grpc_target: str
    rest_url: str


@pytest.fixture(scope="module")
def serving(docker_client, built):
    """The serving image run as Kubernetes runs it, once AVAILABLE."""
    container = docker_client.containers.run(
        built.tag,
        detach=True,
        name=f"{PREFIX}-{uuid.uuid4().hex[:8]}",
        read_only=True,
        tmpfs={"/tmp": "rw,size=256m"},
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        ports={f"{GRPC}/tcp": ("127.0.0.1", None), f"{REST}/tcp": ("127.0.0.1", None)},
    )
    try:

        def available() -> bool:
            container.reload()
            if container.status == "exited":
                pytest.fail(f"serving container exited:\n{container.logs().decode(errors='replace')[-4000:]}")
            return container.exec_run(["/usr/local/bin/model-ready"]).exit_code == 0

        try:
            wait_for(available, 300, "the model to be AVAILABLE (model-ready)", interval=1)
        except BaseException:
            print(container.logs().decode(errors="replace")[-4000:])
            raise
        ports = container.attrs["NetworkSettings"]["Ports"]
        yield Serving(
            container,
            f"127.0.0.1:{ports[f'{GRPC}/tcp'][0]['HostPort']}",
            f"http://127.0.0.1:{ports[f'{REST}/tcp'][0]['HostPort']}",
        )
    finally:
        container.remove(force=True)


def test_readiness_helper_tells_available_from_missing(serving):
    assert serving.container.exec_run(["/usr/local/bin/model-ready"]).exit_code == 0
    missing = serving.container.exec_run(["/usr/local/bin/model-ready", "nosuchmodel"])
    assert missing.exit_code == 1


def test_rest_status_reports_the_baked_version(serving, built):
    status, body = http_get(f"{serving.rest_url}/v1/models/{MODEL}")
    assert status == 200, body
    (version_status,) = json.loads(body)["model_version_status"]
    assert version_status["version"] == built.version and version_status["state"] == "AVAILABLE"


def test_prometheus_metrics_on_the_rest_port(serving):
    status, body = http_get(f"{serving.rest_url}/monitoring/prometheus/metrics")
    assert status == 200 and body.strip(), body[:500]


def test_server_got_the_image_flags_and_runs_non_root(serving):
    # Docker needs the PID column; the rest is [uid, command line].
    processes = [p[1:] for p in serving.container.top(ps_args="-o pid,uid,args")["Processes"]]
    assert processes and all(uid != "0" for uid, _ in processes), processes
    server = " ".join(args for _, args in processes if "--model_name" in args)
    assert f"--model_name={MODEL}" in server and f"--model_base_path=/models/{MODEL}" in server
    assert "--batching_parameters_file=/etc/tfserving/batching_parameters.txt" in server
    assert serving.container.exec_run(["id", "-u"]).output.decode().strip() == "10001"


def test_root_filesystem_is_read_only_but_tmp_is_writable(serving):
    blocked = serving.container.exec_run(["touch", "/models/x"])
    assert blocked.exit_code != 0 and b"Read-only file system" in blocked.output
    assert serving.container.exec_run(["touch", "/tmp/scann-serving-write-probe"]).exit_code == 0


def test_docker_healthcheck_turns_healthy(serving):
    def healthy() -> bool:
        serving.container.reload()
        return serving.container.attrs["State"]["Health"]["Status"] == "healthy"

    wait_for(healthy, 90, "Docker HEALTHCHECK (model-ready) to report healthy", interval=2)


def test_smoke_suite_passes_against_the_container(serving):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/smoke",
            "--target",
            serving.grpc_target,
            "--model",
            MODEL,
            "-p",
            "no:cacheprovider",
            "-q",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    summary = proc.stdout.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary) and "skipped" not in summary, summary


def test_entrypoint_ignores_sigterm_as_documented(docker_client, built):
    """The published entrypoint is bash without exec, so as PID 1 it ignores SIGTERM
    and only the SIGKILL after the grace period stops the pod (k8s/base/deployment.yaml
    sizes terminationGracePeriodSeconds on this, and sets no preStop hook)."""
    container = docker_client.containers.run(built.tag, detach=True, read_only=True, tmpfs={"/tmp": ""})
    try:
        time.sleep(2)
        started = time.monotonic()
        container.stop(timeout=3)
        elapsed = time.monotonic() - started
        container.reload()
        assert container.attrs["State"]["ExitCode"] == 137 and elapsed >= 2.5, (elapsed, container.attrs["State"])
    finally:
        container.remove(force=True)
