"""A shard's two-version serving image (docker/serving/Dockerfile, target keep-versions), built
and run on a real Docker engine: `make image MODEL_DIR=.../<name>-shard-0/<v>` with the version
folder v-1 next to it bakes both plus the ModelServerConfig, and the running container serves
both versions, reports both AVAILABLE, and was started with --model_config_file.

Needs the stand-in server (model_builder serve, behind docker/standin/serving) to accept
--model_config_file: that is another branch's work; on a stand-in without it the server exits
and this test fails at the AVAILABLE wait (the container's log says which flag it refused).
One small MovieLens build on the host (--epochs 2) gives the version; the copy is v+1, so the
two versions hold the same files under two numbers (the server loads each on its own)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import uuid

import pytest

from support import REPO, wait_for
from support.deploy import STANDIN_PREFIX, http_get, make_image_on_standins, read_versions

pytestmark = [pytest.mark.docker, pytest.mark.slow]

PREFIX = STANDIN_PREFIX
SHARD = f"{read_versions()['MODEL_NAME']}-shard-0"
REST = read_versions()["REST_PORT"]
LABEL = "io.scann-serving."


@pytest.fixture(scope="module")
def two_versions(docker_client, python_standin, tmp_path_factory) -> dict:
    """SHARD's versions 1 and 2 built on the host, then its keep-versions image on the stand-in."""
    root = tmp_path_factory.mktemp("shard-image")
    models = root / "models"
    proc = subprocess.run(
        [sys.executable, "-m", "model_builder", "build", "--dataset", "movielens-100k", "--epochs", "2"]
        + ["--out", str(models), "--model-name", SHARD, "--version", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    shutil.copytree(models / SHARD / "1", models / SHARD / "2")
    tag = make_image_on_standins(root / "build", f"MODEL_DIR={models / SHARD / '2'}")
    assert re.fullmatch(rf"{PREFIX}/serving:{SHARD}-v2-\S+", tag), tag
    peaks = [json.loads((models / SHARD / v / "assets.extra/build_info.json").read_text()) for v in "12"]
    return {"tag": tag, "peaks": [p["memory"]["peak_rss_bytes"] for p in peaks]}


def test_the_shard_image_carries_both_versions_and_labels_their_summed_peak(docker_client, two_versions):
    labels = docker_client.images.get(two_versions["tag"]).labels
    assert labels[f"{LABEL}model.versions"] == "1,2"
    assert labels[f"{LABEL}model.version"] == "2"
    assert labels[f"{LABEL}model.config-file"] == "/etc/tfserving-models/models.config"
    assert int(labels[f"{LABEL}memory.peak-rss-bytes"]) == sum(two_versions["peaks"])
    config = docker_client.images.get(two_versions["tag"]).attrs["Config"]
    assert config["Cmd"][-1] == "--model_config_file=/etc/tfserving-models/models.config"


def test_the_container_serves_both_versions(docker_client, two_versions):
    container = docker_client.containers.run(
        two_versions["tag"],
        detach=True,
        name=f"{PREFIX}-{uuid.uuid4().hex[:8]}",
        read_only=True,
        tmpfs={"/tmp": "rw,size=256m"},
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        ports={f"{REST}/tcp": ("127.0.0.1", None)},
    )
    try:

        def available() -> bool:
            container.reload()
            if container.status == "exited":
                pytest.fail(f"serving container exited:\n{container.logs().decode(errors='replace')[-4000:]}")
            return container.exec_run(["/usr/local/bin/model-ready"]).exit_code == 0

        wait_for(available, 300, "both versions AVAILABLE (model-ready)", interval=1)
        port = container.attrs["NetworkSettings"]["Ports"][f"{REST}/tcp"][0]["HostPort"]
        status, body = http_get(f"http://127.0.0.1:{port}/v1/models/{SHARD}")
        assert status == 200, body
        states = {s["version"]: s["state"] for s in json.loads(body)["model_version_status"]}
        assert states == {"1": "AVAILABLE", "2": "AVAILABLE"}
        processes = [p[-1] for p in container.top(ps_args="-o pid,args")["Processes"]]
        assert any("--model_config_file=/etc/tfserving-models/models.config" in args for args in processes)
    finally:
        container.remove(force=True)
