"""Assertions on the objects every k8s overlay renders to (kubectl kustomize)."""
from __future__ import annotations

import json
import re

import pytest

from deploy_helpers import OVERLAYS, REPO, by_kind

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
    assert kinds == sorted(["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "NetworkPolicy",
                            "PodDisruptionBudget", "Service", "Service"])
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
    assert NAME.items() <= template_labels.items()
    assert "app.kubernetes.io/version" in template_labels
    hpa = only(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                              "name": deployment["metadata"]["name"]}


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
    # The startup probe must cover a slow index load: at least 5 minutes.
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    assert c["livenessProbe"]["tcpSocket"]["port"] == "grpc"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ports_resources_and_model_name(rendered, overlay, versions):
    c = container(rendered[overlay])
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {
        "grpc": int(versions["GRPC_PORT"]), "http": int(versions["REST_PORT"])}
    assert {"name": "MODEL_NAME", "value": versions["MODEL_NAME"]} in c["env"]
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
    client_rules = [r for r in rules
                    if any(f.get("podSelector", {}).get("matchLabels") == {"scann-serving/client": "true"}
                           for f in r["from"])]
    assert client_rules and {p["port"] for p in client_rules[0]["ports"]} == {"grpc", "http"}
    # Every rule names its sources: no rule opens the pods to everyone.
    assert all(r.get("from") for r in rules)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_outlasts_connection_age(rendered, overlay):
    """Pods must serve until every client connection has aged out (docker/serving/Dockerfile)."""
    cmd = (REPO / "docker" / "serving" / "Dockerfile").read_text()
    age = int(re.search(r"grpc\.max_connection_age_ms=(\d+)", cmd).group(1))
    grace = int(re.search(r"grpc\.max_connection_age_grace_ms=(\d+)", cmd).group(1))
    pod = only(rendered[overlay], "Deployment")["spec"]["template"]["spec"]
    pre_stop = int(container(rendered[overlay])["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > (age + grace) / 1000 + pre_stop


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
    assert c["args"] == [re.sub(r"inter_op_parallelism=\d+$", "inter_op_parallelism=$(SERVING_CPUS)", a)
                         for a in image_cmd()]
    assert "--tensorflow_inter_op_parallelism=$(SERVING_CPUS)" in c["args"]


@pytest.mark.parametrize("overlay", ["base", *OVERLAYS])
def test_batch_threads_match_the_cpu_limit(rendered, overlay):
    objects = rendered[overlay]
    assert batch_threads(objects) == cpu_limit(objects)
    # Overlays copy the base file and change only that number.
    base = (REPO / "k8s/base/config/batching_parameters.txt").read_text()
    ours = only(objects, "ConfigMap")["data"]["batching_parameters.txt"]
    assert ours == re.sub(r"(?m)^num_batch_threads \{ value: \d+ \}$",
                          f"num_batch_threads {{ value: {cpu_limit(objects)} }}", base)


def test_prod_uses_an_ecr_image_and_dev_the_local_one(rendered):
    prod_image = container(rendered["prod"])["image"]
    assert ".dkr.ecr." in prod_image and prod_image.endswith(":scann_model-v1-unreleased")
    assert container(rendered["dev"])["image"].startswith("scann-serving:")
    namespaces = {o["metadata"].get("namespace") for o in rendered["prod"]}
    assert namespaces == {"scann-serving"}
