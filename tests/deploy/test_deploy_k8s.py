"""Assertions on the objects every k8s overlay renders to (kubectl kustomize), with a model
released to it (k8s/models/<model>/<overlay>, written by scripts/release.sh)."""

from __future__ import annotations

import json
import math
import re

import pytest

from support import REPO
from support.deploy import OVERLAYS, by_kind
from support.rollout import Budget

pytestmark = pytest.mark.tools

NAME = {"app.kubernetes.io/name": "scann-serving"}


def only(objects, kind):
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container(objects):
    deployment = only(objects, "Deployment")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def test_overlays_exist():
    assert {"dev", "prod"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_expected_kinds(rendered, overlay):
    kinds = sorted(o["kind"] for o in rendered[overlay])
    assert kinds == sorted(
        [
            "ConfigMap",
            "Deployment",
            "HorizontalPodAutoscaler",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Service",
            "Service",
        ]
    )
    assert only(rendered[overlay], "HorizontalPodAutoscaler")["apiVersion"] == "autoscaling/v2"
    assert only(rendered[overlay], "PodDisruptionBudget")["apiVersion"] == "policy/v1"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_selector_matches_the_pod_template(rendered, overlay):
    objects = rendered[overlay]
    deployment = only(objects, "Deployment")
    template_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selectors = {
        "Deployment": deployment["spec"]["selector"]["matchLabels"],
        "PodDisruptionBudget": only(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        "NetworkPolicy": only(objects, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
    }
    for service in by_kind(objects, "Service"):
        selectors[f"Service {service['metadata']['name']}"] = service["spec"]["selector"]
    for tsc in deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]:
        selectors[f"topologySpread {tsc['topologyKey']}"] = tsc["labelSelector"]["matchLabels"]
    for what, selector in selectors.items():
        assert selector, f"{what} has an empty selector"
        assert selector.items() <= template_labels.items(), f"{what} selector {selector} misses the pods"
        # The version label changes with every deploy; a selector holding it would
        # orphan the running pods.
        assert "app.kubernetes.io/version" not in selector, what
        # The instance label keeps each model's objects to its own pods (scripts/deploy.sh sets it).
        assert "app.kubernetes.io/instance" in selector, what
    assert NAME.items() <= template_labels.items()
    assert "app.kubernetes.io/version" in template_labels
    hpa = only(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_one_clusterip_one_headless(rendered, overlay, versions):
    services = {s["metadata"]["name"]: s["spec"] for s in by_kind(rendered[overlay], "Service")}
    headless = [name for name, spec in services.items() if spec.get("clusterIP") == "None"]
    assert len(headless) == 1
    clusterip = [name for name, spec in services.items() if spec.get("type") == "ClusterIP"]
    assert len(clusterip) == 1
    ports = {p["name"]: p["port"] for p in services[clusterip[0]]["ports"]}
    assert ports == {"grpc": int(versions["GRPC_PORT"]), "http": int(versions["REST_PORT"])}
    headless_ports = {p["name"]: p["port"] for p in services[headless[0]]["ports"]}
    assert headless_ports == {"grpc": int(versions["GRPC_PORT"])}
    assert services[headless[0]].get("publishNotReadyAddresses") is False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes(rendered, overlay):
    c = container(rendered[overlay])
    for probe in ("readinessProbe", "startupProbe"):
        assert c[probe]["exec"]["command"] == ["/usr/local/bin/model-ready"], probe
    # The release sizes the startup budget from the load time measured at build time
    # (test_deploy_render.py); the base's default, for a model without that measurement,
    # covers a slow index load: 5 minutes.
    base = container(rendered["base"])["startupProbe"]
    assert base["periodSeconds"] * base["failureThreshold"] >= 300
    assert c["startupProbe"]["failureThreshold"] < base["failureThreshold"]  # a 2.5 s load needs far less
    assert c["livenessProbe"]["tcpSocket"]["port"] == "grpc"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ports_resources_and_model_name(rendered, overlay, versions):
    c = container(rendered[overlay])
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {
        "grpc": int(versions["GRPC_PORT"]),
        "http": int(versions["REST_PORT"]),
    }
    # No fixed model name in the base: the image's ENV names its model, and the release sets
    # the same value from the image's label.
    assert "MODEL_NAME" not in {e["name"] for e in container(rendered["base"])["env"]}
    assert {e["name"]: e.get("value") for e in c["env"]}["MODEL_NAME"] == versions["MODEL_NAME"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind]), kind
    # Memory is never overcommitted: a version swap needs its full headroom.
    assert c["resources"]["requests"]["memory"] == c["resources"]["limits"]["memory"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_security_context(rendered, overlay):
    deployment = only(rendered[overlay], "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert pod["nodeSelector"] == {"kubernetes.io/arch": "amd64"}
    sc = container(rendered[overlay])["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    mounts = {m["mountPath"]: m["name"] for m in container(rendered[overlay])["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configmap_is_mounted_over_the_image_defaults(rendered, overlay):
    objects = rendered[overlay]
    configmap = only(objects, "ConfigMap")
    assert set(configmap["data"]) == {"batching_parameters.txt", "monitoring_config.txt"}
    assert '"/monitoring/prometheus/metrics"' in configmap["data"]["monitoring_config.txt"]
    pod = only(objects, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container(objects)["volumeMounts"]}
    # The generated (hash-suffixed) name is what the volume references.
    assert volumes[mounts["/etc/tfserving"]]["configMap"]["name"] == configmap["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hpa_and_pdb(rendered, overlay):
    objects = rendered[overlay]
    hpa = only(objects, "HorizontalPodAutoscaler")["spec"]
    assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 60
    # The HPA owns the replica count; a Deployment.replicas would reset it on apply.
    assert "replicas" not in only(objects, "Deployment")["spec"]
    pdb = only(objects, "PodDisruptionBudget")["spec"]
    assert pdb.get("maxUnavailable") == 1 or pdb.get("minAvailable", 0) < hpa["minReplicas"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prometheus_annotations_and_network_policy(rendered, overlay, versions):
    objects = rendered[overlay]
    annotations = only(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == versions["REST_PORT"]
    assert annotations["prometheus.io/path"] == "/monitoring/prometheus/metrics"
    policy = only(objects, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    rules = policy["ingress"]
    client_rules = [
        r
        for r in rules
        if any(f.get("podSelector", {}).get("matchLabels") == {"scann-serving/client": "true"} for f in r["from"])
    ]
    assert client_rules and {p["port"] for p in client_rules[0]["ports"]} == {"grpc", "http"}
    # Every rule names its sources: no rule opens the pods to everyone.
    assert all(r.get("from") for r in rules)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_outlasts_the_last_call(rendered, overlay):
    """The entrypoint ignores SIGTERM (docker/serving/Dockerfile), so a terminating pod serves until
    SIGKILL: the grace period must outlast the last call any client can still send it (support/rollout.py
    Budget: endpoint removal + DNS TTL + re-resolution after GOAWAY + a call's deadline), for our client
    and for a raw caller with gRPC's 30 s re-resolution default, and not by more than a few seconds.
    No preStop: it could only delay a SIGTERM that changes nothing."""
    age_ms, grace_ms = connection_age_ms()
    pod = only(rendered[overlay], "Deployment")["spec"]["template"]["spec"]
    budget = Budget.product()
    assert (budget.connection_age_s, budget.connection_age_grace_s) == (age_ms / 1000, grace_ms / 1000)
    assert budget.grace_period_s == pod["terminationGracePeriodSeconds"]
    last = max(budget.last_call_s(), budget.for_raw_caller().last_call_s())
    assert last < budget.grace_period_s <= last + 10
    assert "lifecycle" not in container(rendered[overlay])
    # The client's default deadline fits in the GOAWAY grace, so an RPC caught by GOAWAY finishes.
    assert budget.call_deadline_s * 1000 <= grace_ms


def connection_age_ms() -> tuple[int, int]:
    cmd = " ".join(image_cmd())
    return (
        int(re.search(r"grpc\.max_connection_age_ms=(\d+)", cmd).group(1)),
        int(re.search(r"grpc\.max_connection_age_grace_ms=(\d+)", cmd).group(1)),
    )


# Worst image pull the rollout arithmetic assumes (k8s/base/deployment.yaml, k8s/README.md).
PULL_BUDGET_S = 120
READY_S = 10


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_20_pod_rollout_fits_the_documented_timeout(rendered, overlay):
    deployment = only(rendered[overlay], "Deployment")
    strategy = deployment["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0
    surge = strategy["maxSurge"]
    surge_pods = math.ceil(20 * int(surge[:-1]) / 100) if str(surge).endswith("%") else int(surge)
    startup = container(rendered[overlay])["startupProbe"]
    worst_pod_s = PULL_BUDGET_S + startup["periodSeconds"] * startup["failureThreshold"] + READY_S
    # One slow but healthy wave must not count as a stalled rollout...
    assert deployment["spec"]["progressDeadlineSeconds"] > worst_pod_s
    # ... and the whole rollout must end within the timeout the README tells operators to wait.
    readme = (REPO / "k8s/README.md").read_text()
    timeout_min = int(re.search(r"rollout status \S+ --timeout=(\d+)m", readme).group(1))
    assert math.ceil(20 / surge_pods) * worst_pod_s <= timeout_min * 60


def image_cmd() -> list[str]:
    """The serving image's CMD (an exec-form JSON array over several lines)."""
    text = (REPO / "docker" / "serving" / "Dockerfile").read_text()
    array = re.search(r"^CMD (\[.*?\])$", text.replace("\\\n", ""), re.M | re.S).group(1)
    return json.loads(array)


def cpu_limit(objects) -> int:
    return int(container(objects)["resources"]["limits"]["cpu"])


def batch_threads(objects) -> int:
    text = only(objects, "ConfigMap")["data"]["batching_parameters.txt"]
    return int(re.search(r"^num_batch_threads \{ value: (\d+) \}$", text, re.M).group(1))


@pytest.mark.parametrize("overlay", ["base", *OVERLAYS])
def test_args_are_the_image_cmd_with_threads_from_the_cpu_limit(rendered, overlay):
    c = container(rendered[overlay])
    cpus = {e["name"]: e for e in c["env"]}["SERVING_CPUS"]["valueFrom"]["resourceFieldRef"]
    assert cpus == {"containerName": c["name"], "resource": "limits.cpu", "divisor": "1"}
    # The image's CMD fixes the pool for 2 CPUs; the pod derives it from its own limit.
    assert c["args"] == [
        re.sub(r"inter_op_parallelism=\d+$", "inter_op_parallelism=$(SERVING_CPUS)", a) for a in image_cmd()
    ]
    assert "--tensorflow_inter_op_parallelism=$(SERVING_CPUS)" in c["args"]


@pytest.mark.parametrize("overlay", ["base", *OVERLAYS])
def test_batch_threads_match_the_cpu_limit(rendered, overlay):
    objects = rendered[overlay]
    assert batch_threads(objects) == cpu_limit(objects)
    # Overlays copy the base file and change only that number.
    base = (REPO / "k8s/base/config/batching_parameters.txt").read_text()
    ours = only(objects, "ConfigMap")["data"]["batching_parameters.txt"]
    assert ours == re.sub(
        r"(?m)^num_batch_threads \{ value: \d+ \}$", f"num_batch_threads {{ value: {cpu_limit(objects)} }}", base
    )


def test_every_overlay_runs_the_released_image_by_digest(rendered):
    for overlay in OVERLAYS:
        assert re.fullmatch(r"\S+:\S+@sha256:[0-9a-f]{64}", container(rendered[overlay])["image"]), overlay
    assert "image" not in container(rendered["base"])  # the base alone is not applyable
    namespaces = {o["metadata"].get("namespace") for o in rendered["prod"]}
    assert namespaces == {"scann-serving"}


def test_each_overlay_namespace_folder_names_the_overlays_namespace():
    for overlay in OVERLAYS:
        spec = (REPO / "k8s/overlays" / overlay / "kustomization.yaml").read_text()
        (namespace,) = re.findall(r"^namespace: (\S+)$", spec, re.M)
        for folder in ("namespace", "monitoring"):
            text = (REPO / "k8s/overlays" / overlay / folder / "kustomization.yaml").read_text()
            assert re.findall(r"^namespace: (\S+)$", text, re.M) == [namespace], (overlay, folder)
