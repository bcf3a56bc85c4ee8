"""Per-shard releases (issue 21 items 2 and 3, serving side): `make release-shards MODEL=items
SHARDS=3` (scripts/release-shards.sh) writes k8s/models/items-shard-<i>/prod/ through the same
per-model release as any model, each shard with its own Deployment, HPA, PDB and Services, and
each shard's image carries the previous version next to the new one (docker/serving/Dockerfile,
target keep-versions), served from a baked ModelServerConfig with latest { num_versions: 2 }.
The records are what `make push MODEL=items-shard-<i>` writes for such an image; every script
writes into a copy of k8s/ (K8S_DIR). No cluster: kustomize, kubernetes-validate --strict."""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import threading
from pathlib import Path

import pytest

from support import REPO
from support.deploy import (
    LABEL,
    by_kind,
    load_yaml_documents,
    render,
    run_script,
    tool,
    write_push_record,
)

MODEL, SHARDS, VERSION, PREVIOUS = "items", 3, "4", "3"
CONFIG_FILE = "/etc/tfserving-models/models.config"  # docker/serving/Dockerfile, keep-versions
PEAKS = {PREVIOUS: 700 * 2**20, VERSION: 900 * 2**20}  # per version, as build_info.json measured
KUBE_VERSIONS = ("1.33.0", "1.37.0")  # scripts/lint.sh


def shard(i: int) -> str:
    return f"{MODEL}-shard-{i}"


def write_shard_record(build_dir: Path, i: int, version: str = VERSION, previous: str = PREVIOUS) -> str:
    """The record `make push` leaves for shard i's keep-versions image (labels as build-images.sh sets them)."""
    image = write_push_record(build_dir, shard(i), version=version, peak_bytes=sum(PEAKS.values()))
    path = build_dir / "pushed" / f"{shard(i)}.json"
    record = json.loads(path.read_text())
    peaks = dict(zip((previous, version), PEAKS.values()))
    record["labels"] |= {
        f"{LABEL}model.versions": f"{previous},{version}",
        f"{LABEL}memory.peak-rss-bytes-per-version": ",".join(f"{v}={b}" for v, b in peaks.items()),
        f"{LABEL}model.config-file": CONFIG_FILE,
    }
    path.write_text(json.dumps(record))
    return image


def release_shards(build_dir: Path, **env: str) -> subprocess.CompletedProcess:
    return run_script("release-shards.sh", build_dir, MODEL=MODEL, SHARDS=str(SHARDS), OVERLAY="prod", **env)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict:
    """The three shards released to prod and rendered, as `make deploy-shards` would apply them."""
    build_dir = tmp_path_factory.mktemp("release-shards")
    images = [write_shard_record(build_dir, i) for i in range(SHARDS)]
    proc = release_shards(build_dir)
    assert proc.returncode == 0, proc.stderr
    models = build_dir / "k8s" / "models"
    objects = {i: render(models / shard(i) / "prod") for i in range(SHARDS)}
    return {"build_dir": build_dir, "images": images, "objects": objects}


def only(objects: list[dict], kind: str) -> dict:
    (obj,) = by_kind(objects, kind)
    return obj


def pod_labels(objects: list[dict]) -> dict:
    return only(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]


def pod_selectors(objects: list[dict]) -> list[tuple[str, dict]]:
    """Every label selector of a shard's objects that picks serving pods."""
    found = []
    for obj in objects:
        spec, kind = obj.get("spec", {}), obj["kind"]
        if kind == "Deployment":
            tsc = spec["template"]["spec"].get("topologySpreadConstraints", [])
            found += [(kind, spec["selector"]["matchLabels"])] + [
                (kind, t["labelSelector"]["matchLabels"]) for t in tsc
            ]
        elif kind == "Service":
            found.append((kind, spec["selector"]))
        elif kind == "PodDisruptionBudget":
            found.append((kind, spec["selector"]["matchLabels"]))
        elif kind == "NetworkPolicy":
            found.append((kind, spec["podSelector"]["matchLabels"]))
    return found


@pytest.mark.tools
def test_each_shard_has_its_own_deployment_hpa_pdb_and_services(shards):
    names: dict[str, set[str]] = {}
    for i, objects in shards["objects"].items():
        deployment = only(objects, "Deployment")
        assert deployment["metadata"]["name"] == f"{shard(i)}-serving"
        (c,) = deployment["spec"]["template"]["spec"]["containers"]
        assert c["image"] == shards["images"][i]
        assert {"name": "MODEL_NAME", "value": shard(i)} in c["env"]
        hpa = only(objects, "HorizontalPodAutoscaler")
        assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        assert only(objects, "PodDisruptionBudget")
        services = by_kind(objects, "Service")
        assert any(s["spec"].get("clusterIP") == "None" for s in services), "no headless Service"
        for obj in objects:
            names.setdefault(obj["kind"], set()).add(obj["metadata"]["name"])
    for kind in ("Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"):
        per_shard = {"Service": 2}.get(kind, 1)
        assert len(names[kind]) == SHARDS * per_shard, (kind, names[kind])


@pytest.mark.tools
def test_no_selector_of_one_shard_picks_another_shards_pods(shards):
    pods = {i: pod_labels(objects) for i, objects in shards["objects"].items()}
    for i, objects in shards["objects"].items():
        selectors = pod_selectors(objects)
        assert {kind for kind, _ in selectors} >= {"Deployment", "Service", "PodDisruptionBudget"}
        for kind, selector in selectors:
            assert selector.items() <= pods[i].items(), (shard(i), kind, selector)
            for j in set(pods) - {i}:
                assert not selector.items() <= pods[j].items(), (shard(i), kind, "selects", shard(j))


@pytest.mark.tools
def test_memory_is_sized_from_both_versions_measured_peaks(shards):
    proc = subprocess.run(
        [tool("python"), str(REPO / "scripts/k8s_memory.py"), "required", str(sum(PEAKS.values()))],
        capture_output=True,
        text=True,
        check=True,
    )
    need = proc.stdout.split()[1]
    single = subprocess.run(
        [tool("python"), str(REPO / "scripts/k8s_memory.py"), "required", str(PEAKS[VERSION])],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[1]
    assert need != single  # the test would pass on one version's peak otherwise
    for i, objects in shards["objects"].items():
        (c,) = only(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
        assert c["resources"]["requests"]["memory"] == c["resources"]["limits"]["memory"] == need, shard(i)
    release = (shards["build_dir"] / "k8s/models" / shard(0) / "prod/release.yaml").read_text()
    assert f'versions: "{PREVIOUS},{VERSION}"' in release and f'model-config-file: "{CONFIG_FILE}"' in release


def dockerfile_cmds() -> list[list[str]]:
    """Every exec-form CMD of the serving Dockerfile, in order (single, then keep-versions)."""
    text = (REPO / "docker/serving/Dockerfile").read_text().replace("\\\n", "")
    return [json.loads(m) for m in re.findall(r"^CMD (\[.*?\])$", text, re.M | re.S)]


def test_the_keep_versions_cmd_is_the_single_cmd_plus_the_config_file():
    single, keep = dockerfile_cmds()
    assert keep == [*single, f"--model_config_file={CONFIG_FILE}"]
    assert f"COPY model-config/ {Path(CONFIG_FILE).parent}/" in (REPO / "docker/serving/Dockerfile").read_text()


@pytest.mark.tools
def test_a_shards_args_are_the_keep_versions_cmd(shards):
    _, keep = dockerfile_cmds()
    for objects in shards["objects"].values():
        (c,) = only(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
        assert [a.replace("$(SERVING_CPUS)", "2") for a in c["args"]] == keep


@pytest.mark.tools
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_all_shards_together_pass_strict_validation(shards, tmp_path, kube_version):
    everything = [obj for objects in shards["objects"].values() for obj in objects]
    path = tmp_path / "shards.yaml"
    path.write_text(
        subprocess.run(
            [tool("python"), "-c", "import json, sys, yaml; yaml.safe_dump_all(json.load(sys.stdin), sys.stdout)"],
            input=json.dumps(everything),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert len(load_yaml_documents(path.read_text())) == len(everything)
    proc = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "--quiet", "-k", kube_version, str(path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.tools
def test_a_single_model_release_gets_no_config_file(tmp_path):
    write_push_record(tmp_path, "scann_model")
    proc = run_script("release.sh", tmp_path, MODEL="scann_model", OVERLAY="prod")
    assert proc.returncode == 0, proc.stderr
    (c,) = only(render(tmp_path / "k8s/models/scann_model/prod"), "Deployment")["spec"]["template"]["spec"][
        "containers"
    ]
    assert not any(a.startswith("--model_config_file") for a in c["args"])


@pytest.mark.tools
def test_release_shards_refuses_mixed_versions_and_missing_shards(tmp_path):
    write_shard_record(tmp_path, 0)
    proc = release_shards(tmp_path)
    assert proc.returncode == 2 and f"no pushed image for shard {shard(1)}" in proc.stderr
    write_shard_record(tmp_path, 1, version="5")
    write_shard_record(tmp_path, 2)
    proc = release_shards(tmp_path)
    assert proc.returncode == 2 and f"{shard(1)}'s pushed image is v5, not v{VERSION}" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not any((tmp_path / "k8s/models").iterdir()), "nothing may be written on refusal"
    write_shard_record(tmp_path, 1)
    proc = release_shards(tmp_path, VERSION="5")
    assert proc.returncode == 2 and "v4, not v5" in proc.stderr


def test_the_baked_model_config_parses_as_tf_servings_model_server_config():
    """build-images.sh's model_config, parsed with the ModelServerConfig proto of
    tensorflow-serving-api (the text format --model_config_file takes)."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    script = (REPO / "docker/build-images.sh").read_text()
    function = re.search(r"^model_config\(\) \{\n.*?^EOF\n\}\n", script, re.M | re.S).group(0)
    text = subprocess.run(
        ["bash", "-c", f"{function}\nmodel_config {shard(1)}"], capture_output=True, text=True, check=True
    ).stdout
    config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == (shard(1), f"/models/{shard(1)}", "tensorflow")
    assert model.model_version_policy.latest.num_versions == 2


class _TwoVersions(http.server.BaseHTTPRequestHandler):
    """GET /v1/models/<name> as TF Serving 2.11 answers it for a model with two versions."""

    states = ("AVAILABLE", "AVAILABLE")

    def do_GET(self):  # noqa: N802 (http.server's name)
        status = [{"version": v, "state": s, "status": {"error_code": "OK"}} for v, s in zip("43", self.states)]
        body = json.dumps({"model_version_status": status}, indent=1).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(
    "states, ready",
    [(("AVAILABLE", "AVAILABLE"), True), (("AVAILABLE", "LOADING"), False), (("START", "AVAILABLE"), False)],
)
def test_model_ready_needs_every_version_available(states, ready):
    _TwoVersions.states = states
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TwoVersions)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = dict(os.environ, REST_PORT=str(server.server_address[1]), MODEL_NAME=shard(0))
        proc = subprocess.run(
            [str(REPO / "docker/serving/model-ready")], capture_output=True, text=True, env=env, timeout=30
        )
    finally:
        server.shutdown()
    assert (proc.returncode == 0) == ready, proc.stderr
    if not ready:
        assert f"state: {next(s for s in states if s != 'AVAILABLE')}" in proc.stderr


@pytest.mark.tools
def test_release_shards_refuses_an_image_without_the_released_version(tmp_path):
    """The next release must carry the version the current one serves, or clients lose every
    common version during the rollout."""
    for i in range(SHARDS):
        write_shard_record(tmp_path, i)
    assert release_shards(tmp_path).returncode == 0  # v4 carrying v3, over nothing
    for i in range(SHARDS):
        write_shard_record(tmp_path, i, version="6", previous="5")  # v5 was never released
    before = {p: p.read_text() for p in (tmp_path / "k8s/models").rglob("release.yaml")}
    proc = release_shards(tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert f"{shard(0)}'s image carries v5+v6, not the released v{VERSION}" in proc.stderr
    assert {p: p.read_text() for p in before} == before, "nothing may be written on refusal"
    for i in range(SHARDS):
        write_shard_record(tmp_path, i, version="5", previous=VERSION)
    proc = release_shards(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert 'version: "5"' in (tmp_path / "k8s/models" / shard(2) / "prod/release.yaml").read_text()
