"""Releases (scripts/release.sh: k8s/models/<model>/<env>/, written by `make push`) and what
`make deploy` applies from them (scripts/deploy.sh --dry-run), without a cluster: two models
side by side, memory from the measured peak, dirty images kept out of prod. The records are
what `make push MODEL=...` writes; every script writes into a copy of k8s/ (K8S_DIR)."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from support import REPO
from support.deploy import (
    LABEL,
    PUSHED_DIGEST,
    by_kind,
    k8s_copy,
    load_yaml_documents,
    release_and_render,
    run_deploy,
    run_release,
    tool,
    write_push_record,
)

pytestmark = pytest.mark.tools

DEMO_MODELS = ("scann_model", "scann_model_items")  # what `make demo` publishes
MIB = 2**20


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def deploy_objects(build_dir: Path, **env: str) -> list[dict]:
    return release_and_render(build_dir, **env)


def container(deployment: dict) -> dict:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def selectors(obj: dict) -> list[dict]:
    """Every label selector an object uses to pick scann-serving pods."""
    spec, kind = obj.get("spec", {}), obj["kind"]
    if kind == "Deployment":
        tsc = spec["template"]["spec"].get("topologySpreadConstraints", [])
        return [spec["selector"]["matchLabels"], *[t["labelSelector"]["matchLabels"] for t in tsc]]
    if kind == "Service":
        return [spec["selector"]]
    if kind == "PodDisruptionBudget":
        return [spec["selector"]["matchLabels"]]
    if kind == "NetworkPolicy":
        return [spec["podSelector"]["matchLabels"]]
    return []


@pytest.fixture(scope="module")
def side_by_side(tmp_path_factory) -> dict[str, list[dict]]:
    """Both demo models rendered for prod, as two `make deploy MODEL=...` runs would apply them."""
    build_dir = tmp_path_factory.mktemp("deploy-two-models")
    images = {model: write_push_record(build_dir, model) for model in DEMO_MODELS}
    rendered = {model: deploy_objects(build_dir, OVERLAY="prod", MODEL=model) for model in DEMO_MODELS}
    rendered["images"] = images
    rendered["build_dir"] = build_dir
    return rendered


def test_two_models_render_side_by_side_without_collisions(side_by_side):
    seen: dict[tuple, dict] = {}
    for model in DEMO_MODELS:
        for obj in side_by_side[model]:
            key = (obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"])
            if obj["kind"] == "Namespace":  # shared on purpose: applied by both, identical
                assert seen.setdefault(key, obj) == obj
                continue
            assert key not in seen, f"{model} would replace {key} of another model"
            seen[key] = obj
    kinds = sorted(k for k, _, _ in seen)
    assert kinds.count("Deployment") == 2 and kinds.count("HorizontalPodAutoscaler") == 2
    assert kinds.count("Service") == 4 and kinds.count("Namespace") == 1


def test_each_deployment_serves_its_own_image_and_model(side_by_side):
    for model in DEMO_MODELS:
        (deployment,) = by_kind(side_by_side[model], "Deployment")
        c = container(deployment)
        assert c["image"] == side_by_side["images"][model]
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["MODEL_NAME"] == model  # the image's io.scann-serving.model.name label
        name = model.replace("_", "-")
        assert deployment["metadata"]["name"] == f"{name}-serving"
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == name
        assert re.fullmatch(r"v1-[0-9a-f]{12}", labels["app.kubernetes.io/version"])
        (hpa,) = by_kind(side_by_side[model], "HorizontalPodAutoscaler")
        assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        (configmap,) = by_kind(side_by_side[model], "ConfigMap")
        assert volumes["tfserving-config"]["configMap"]["name"] == configmap["metadata"]["name"]


def test_no_selector_of_one_model_picks_the_other_models_pods(side_by_side):
    pods = {
        m: next(iter(by_kind(side_by_side[m], "Deployment")))["spec"]["template"]["metadata"]["labels"]
        for m in DEMO_MODELS
    }
    for model in DEMO_MODELS:
        other = next(m for m in DEMO_MODELS if m != model)
        for obj in side_by_side[model]:
            for selector in selectors(obj):
                assert selector.items() <= pods[model].items(), (model, obj["kind"], selector)
                assert not selector.items() <= pods[other].items(), (model, obj["kind"], "selects", other)
        # The NetworkPolicy still admits labelled clients from anywhere, for either model.
        (policy,) = by_kind(side_by_side[model], "NetworkPolicy")
        sources = [f.get("podSelector", {}).get("matchLabels") for r in policy["spec"]["ingress"] for f in r["from"]]
        assert {"scann-serving/client": "true"} in sources


def test_both_models_together_pass_strict_validation(side_by_side, tmp_path):
    both = tmp_path / "both.yaml"
    both.write_text(
        subprocess.run(
            [tool("python"), "-c", "import json, sys, yaml; yaml.safe_dump_all(json.load(sys.stdin), sys.stdout)"],
            input=__import__("json").dumps(side_by_side["scann_model"] + side_by_side["scann_model_items"]),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    proc = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "--quiet", "-k", "1.33.0", str(both)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_release_is_a_reviewable_kustomization_pinning_the_digest(side_by_side):
    released = side_by_side["build_dir"] / "k8s" / "models" / "scann_model_items" / "prod"
    assert sorted(p.name for p in released.iterdir()) == ["kustomization.yaml", "release.yaml"]
    text = (released / "kustomization.yaml").read_text()
    assert "kind: Kustomization" in text and "namePrefix: scann-model-items-" in text
    assert "- ../../../overlays/prod" in text
    assert f'image: "{side_by_side["images"]["scann_model_items"]}"' in (released / "release.yaml").read_text()


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_release_writes_only_the_models_folder(tmp_path, overlay):
    image = write_push_record(tmp_path, "scann_model", version="3")
    k8s = k8s_copy(tmp_path)
    before = _tree_digest(k8s)
    objects = deploy_objects(tmp_path, OVERLAY=overlay, MODEL="scann_model")
    assert sorted(str(p.relative_to(k8s)) for p in (k8s / "models").rglob("*") if p.is_file()) == [
        f"models/scann_model/{overlay}/kustomization.yaml",
        f"models/scann_model/{overlay}/release.yaml",
    ]
    shutil.rmtree(k8s / "models")
    (k8s / "models").mkdir()
    assert _tree_digest(k8s) == before, "release.sh changed files outside k8s/models/<model>/<env>"
    (deployment,) = by_kind(objects, "Deployment")
    assert container(deployment)["image"] == image
    assert "app.kubernetes.io/version" not in deployment["spec"]["selector"]["matchLabels"]
    (namespace,) = by_kind(objects, "Namespace")
    namespaced = {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"}
    assert namespaced == {namespace["metadata"]["name"]}


def test_make_release_and_make_deploy_use_that_models_push_record(tmp_path):
    image = write_push_record(tmp_path, "scann_model_items", registry="registry.example:443/team/scann-serving")
    write_push_record(tmp_path, "scann_model")
    env = dict(__import__("os").environ, BUILD_DIR=str(tmp_path), K8S_DIR=str(k8s_copy(tmp_path)))
    tools = f"TOOLS_VENV={tool('python').rsplit('/bin/', 1)[0]}"
    for target in ("release", "deploy"):
        proc = subprocess.run(
            ["make", "--silent", target, "MODEL=scann_model_items", "OVERLAY=prod", "RENDER_ONLY=1", tools],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr
    (deployment,) = by_kind(load_yaml_documents(proc.stdout), "Deployment")
    assert container(deployment)["image"] == image


def test_release_and_deploy_without_their_input_say_so(tmp_path):
    proc = run_release(tmp_path, OVERLAY="prod", MODEL="scann_model")
    assert proc.returncode == 2 and "run `make push MODEL=scann_model` first" in proc.stderr
    proc = run_deploy(tmp_path, "--dry-run", OVERLAY="prod", MODEL="scann_model")
    assert proc.returncode == 2 and "no release of scann_model for prod" in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_an_overlay_alone_renders_no_applyable_deployment(tmp_path):
    """Without a release an overlay fails to render, naming the missing release; the base has no image."""
    for overlay in ("dev", "prod"):
        proc = subprocess.run(
            [tool("kubectl"), "kustomize", str(REPO / "k8s/overlays" / overlay)], capture_output=True, text=True
        )
        assert proc.returncode != 0 and "release-from-make-push" in proc.stderr, overlay
    base = subprocess.run(
        [tool("kubectl"), "kustomize", str(REPO / "k8s/base")], capture_output=True, text=True, check=True
    )
    (deployment,) = by_kind(load_yaml_documents(base.stdout), "Deployment")
    assert "image" not in container(deployment)


def test_deploy_says_when_the_release_is_older_than_the_latest_build(tmp_path):
    write_push_record(tmp_path, "scann_model", version="1")
    assert run_release(tmp_path, MODEL="scann_model").returncode == 0
    proc = run_deploy(tmp_path, "--dry-run", MODEL="scann_model")
    assert proc.returncode == 0 and "note:" not in proc.stderr
    write_push_record(tmp_path, "scann_model", version="2", kind="images")  # built, not pushed
    proc = run_deploy(tmp_path, "--dry-run", MODEL="scann_model")
    assert proc.returncode == 0, proc.stderr
    assert "note: deploying scann_model v1" in proc.stderr and "last built here (v2" in proc.stderr


def test_release_of_an_older_version_says_so(tmp_path):
    for version in ("2", "1"):
        write_push_record(tmp_path, "scann_model", version=version)
        proc = run_release(tmp_path, MODEL="scann_model")
        assert proc.returncode == 0, proc.stderr
    assert "v1 is older than the v2 it replaces" in proc.stderr


def test_model_names_that_fold_to_one_kubernetes_name_are_refused(tmp_path):
    write_push_record(tmp_path, "scann_model")
    assert run_release(tmp_path, MODEL="scann_model").returncode == 0
    write_push_record(tmp_path, "Scann.Model")
    proc = run_release(tmp_path, MODEL="Scann.Model")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert (
        "'Scann.Model' and the existing model 'scann_model' both give the Kubernetes name 'scann-model'" in proc.stderr
    )
    # At build time too, before any Docker work: a built image's name counts.
    proc = subprocess.run(
        [str(REPO / "docker/build-images.sh")],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(__import__("os").environ, BUILD_DIR=str(tmp_path), K8S_DIR=str(tmp_path / "k8s"), MODEL="scann-model"),
        timeout=60,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "both give the Kubernetes name 'scann-model'" in proc.stderr


def test_prod_refuses_a_standin_image_without_the_override(tmp_path):
    write_push_record(tmp_path, "scann_model", standin=True)
    proc = run_release(tmp_path, MODEL="scann_model")
    assert proc.returncode == 2 and "stand-in base image" in proc.stderr and proc.stderr.count("\n") == 1
    assert run_release(tmp_path, MODEL="scann_model", OVERLAY="dev").returncode == 0
    assert run_release(tmp_path, MODEL="scann_model", ALLOW_STANDIN="1").returncode == 0


def test_prod_refuses_an_image_built_from_a_dirty_tree(tmp_path):
    write_push_record(tmp_path, "scann_model", dirty=True)
    proc = run_release(tmp_path, OVERLAY="prod", MODEL="scann_model")
    assert proc.returncode == 2 and "uncommitted changes" in proc.stderr and proc.stderr.count("\n") == 1
    assert not (tmp_path / "k8s/models/scann_model").exists()
    assert run_release(tmp_path, OVERLAY="dev", MODEL="scann_model").returncode == 0


@pytest.mark.parametrize("label", ["memory.peak-rss-bytes", "content.digest", "startup.load-seconds"])
def test_an_image_without_the_build_labels_is_refused(tmp_path, label):
    write_push_record(tmp_path, "scann_model")
    record = tmp_path / "pushed" / "scann_model.json"
    record.write_text(record.read_text().replace(f'"{LABEL}{label}"', '"x"'))
    proc = run_release(tmp_path, OVERLAY="prod", MODEL="scann_model")
    assert proc.returncode == 2 and f"no label io.scann-serving.{label}" in proc.stderr


def _limit(objects) -> str:
    (deployment,) = by_kind(objects, "Deployment")
    resources = container(deployment)["resources"]
    assert resources["requests"]["memory"] == resources["limits"]["memory"]
    return resources["limits"]["memory"]


def test_memory_limit_below_the_measured_peak_is_refused(tmp_path):
    """dev gives 1Gi: a model that peaked at 1.2 GiB while loading would be OOM-killed."""
    write_push_record(tmp_path, "scann_model", peak_bytes=1228 * MIB)
    proc = run_release(tmp_path, OVERLAY="dev", MODEL="scann_model")
    assert proc.returncode == 2, proc.stdout[-500:]
    assert "memory limit 1Gi is below the model's measured peak RSS 1228Mi" in proc.stderr
    assert "at least 1536Mi" in proc.stderr and proc.stderr.count("\n") == 1  # 1228 + 25% = 1535 -> 1536 (64 MiB steps)
    assert not (tmp_path / "k8s/models/scann_model").exists()  # a refused release leaves nothing


def test_memory_limit_without_headroom_is_refused_and_measured_sets_it(tmp_path):
    write_push_record(tmp_path, "scann_model", peak_bytes=900 * MIB)  # below 1Gi, but not by 256 MiB
    proc = run_release(tmp_path, OVERLAY="dev", MODEL="scann_model")
    assert proc.returncode == 2 and "less than the headroom" in proc.stderr
    objects = deploy_objects(tmp_path, OVERLAY="dev", MODEL="scann_model", MEMORY="measured")
    assert _limit(objects) == "1216Mi"  # 900 + 256, rounded up to 64 MiB
    assert run_release(tmp_path, OVERLAY="dev", MODEL="scann_model", MEMORY="1Gi").returncode == 2


def test_a_model_that_fits_keeps_the_overlays_memory(tmp_path):
    write_push_record(tmp_path, "scann_model", peak_bytes=300 * MIB)
    assert _limit(deploy_objects(tmp_path, OVERLAY="dev", MODEL="scann_model")) == "1Gi"
    assert _limit(deploy_objects(tmp_path, OVERLAY="prod", MODEL="scann_model")) == "4Gi"


def test_scale_on_load_component_keeps_cpu_as_the_floor(tmp_path):
    write_push_record(tmp_path, "scann_model")
    plain = deploy_objects(tmp_path, OVERLAY="prod", MODEL="scann_model")
    scaled = deploy_objects(tmp_path, OVERLAY="prod", MODEL="scann_model", COMPONENTS="scale-on-load")
    (before,), (after,) = by_kind(plain, "HorizontalPodAutoscaler"), by_kind(scaled, "HorizontalPodAutoscaler")
    cpu = [m for m in after["spec"]["metrics"] if m["type"] == "Resource"]
    assert cpu == before["spec"]["metrics"]  # the same CPU target, still there
    pods = {m["pods"]["metric"]["name"] for m in after["spec"]["metrics"] if m["type"] == "Pods"}
    assert pods == {"tfserving_requests_per_second", "tfserving_batch_queue_p90_seconds"}
    adapter = (REPO / "k8s/components/scale-on-load/prometheus-adapter-rules.yaml").read_text()
    assert all(f"as: {name}" in adapter for name in pods)
    assert {k: v for k, v in after["spec"].items() if k != "metrics"} == {
        k: v for k, v in before["spec"].items() if k != "metrics"
    }


def test_monitoring_renders_into_the_overlays_namespace(tmp_path):
    proc = run_deploy(tmp_path, "--dry-run", "--namespace-only", OVERLAY="prod", MONITORING="1")
    assert proc.returncode == 0, proc.stderr
    objects = load_yaml_documents(proc.stdout)
    assert sorted(o["kind"] for o in objects) == ["Namespace", "PodMonitor", "PrometheusRule"]
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {"scann-serving"}
    (monitor,) = by_kind(objects, "PodMonitor")
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    monitoring = (REPO / "k8s/base/config/monitoring_config.txt").read_text()
    assert endpoint["port"] == "http" and f'path: "{endpoint["path"]}"' in monitoring


def test_deploy_digest_is_pinned(side_by_side):
    for model in DEMO_MODELS:
        (deployment,) = by_kind(side_by_side[model], "Deployment")
        assert container(deployment)["image"].endswith("@" + PUSHED_DIGEST)


@pytest.mark.parametrize("load_seconds, threshold", [("2.5", 7), ("200", 66)])
def test_startup_budget_follows_the_measured_load_time(tmp_path, load_seconds, threshold):
    """max(60, 3 x load + 60) s in 10 s periods; the progress deadline grows past one slow wave."""
    write_push_record(tmp_path, "scann_model", load_seconds=load_seconds)
    (deployment,) = by_kind(deploy_objects(tmp_path, OVERLAY="prod", MODEL="scann_model"), "Deployment")
    startup = container(deployment)["startupProbe"]
    assert (startup["periodSeconds"], startup["failureThreshold"]) == (10, threshold)
    assert deployment["spec"]["progressDeadlineSeconds"] == max(600, threshold * 10 + 300)
