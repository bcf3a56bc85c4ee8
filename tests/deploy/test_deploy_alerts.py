"""The alert rules of k8s/components/monitoring, run by Prometheus' own rule engine
(`promtool test rules`) on synthetic series named as TF Serving 2.11 and kube-state-metrics
export them: each alert fires for the sick model, Deployment or pod and stays quiet for the
healthy one next to it (and the absent-target alert in a second case without targets).

promtool comes from scripts/promtool.sh (Debian's prometheus package, extracted, not
installed). Annotations are stripped for the run: their templates are parsed by
`promtool check rules` in scripts/lint.sh; this test is about the expressions."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from support import REPO
from support.deploy import (
    by_kind,
    k8s_copy,
    load_yaml_documents,
    release_and_render,
    run_deploy,
    tool,
    write_push_record,
)

pytestmark = pytest.mark.tools

SICK, HEALTHY = "scann_model", "scann_model_items"
NS = "scann-serving"
SERVER_POD, HEALTHY_POD = "scann-model-serving-abc", "scann-model-items-serving-def"
MINUTES = 40


def _series(name: str, labels: dict, values: str) -> dict:
    body = ",".join(f'{k}="{v}"' for k, v in {"job": "scann-serving", "namespace": NS, **labels}.items())
    return {"series": f"{name}{{{body}}}", "values": values}


def _ksm(name: str, labels: dict, values: str) -> dict:
    """A kube-state-metrics series (its own job)."""
    return _series(name, {"job": "kube-state-metrics", **labels}, values)


def _histogram(name: str, labels: dict, per_minute: dict) -> list[dict]:
    """Cumulative buckets growing by per_minute[le] each minute."""
    return [_series(f"{name}_bucket", {**labels, "le": le}, f"0+{n}x{MINUTES}") for le, n in per_minute.items()]


def tf_serving_series() -> list[dict]:
    """TF Serving's own series: the sick model fails 3% on the server, 9% on bad input, and is slow."""
    series = []
    for model, ok, unavailable, invalid in ((SICK, 970, 30, 100), (HEALTHY, 1000, 0, 1)):
        series += [
            _series(":tensorflow:serving:request_count", {"model_name": model, "status": status}, f"0+{n}x{MINUTES}")
            for status, n in (("OK", ok), ("UNAVAILABLE", unavailable), ("INVALID_ARGUMENT", invalid))
        ]
    # Microseconds: the sick model's requests wait 20-50 ms for a batch and take 50-100 ms.
    series += _histogram(
        ":tensorflow:serving:batching_session:queuing_latency",
        {"thread_pool_name": "batch_threads", "app_kubernetes_io_instance": "scann-model"},
        {"100": 0, "20000": 10, "50000": 100, "+Inf": 100},
    )
    series += _histogram(
        ":tensorflow:serving:batching_session:queuing_latency",
        {"thread_pool_name": "batch_threads", "app_kubernetes_io_instance": "scann-model-items"},
        {"100": 100, "20000": 100, "50000": 100, "+Inf": 100},
    )
    for model, buckets in (
        (SICK, {"1000": 0, "50000": 5, "100000": 100, "+Inf": 100}),
        (HEALTHY, {"1000": 100, "50000": 100, "100000": 100, "+Inf": 100}),
    ):
        series += _histogram(
            ":tensorflow:serving:request_latency",
            {"model_name": model, "API": "Predict", "entrypoint": "GRPC"},
            buckets,
        )
    return series


def cluster_series() -> list[dict]:
    """kube-state-metrics: scann-model's rollout is stuck, its HPA at max, its pod restarting after
    an OOM kill and not ready; scann-model-items is healthy (an OOM kill long ago, no restarts since)."""
    n = MINUTES
    stuck, healthy, stalled = "scann-model-serving", "scann-model-items-serving", "scann-model-b-serving"
    series = []
    for deployment, spec, updated, progressing_false in ((stuck, 20, 5, 0), (healthy, 3, 3, 0), (stalled, 3, 3, 1)):
        series += [
            _ksm("kube_deployment_spec_replicas", {"deployment": deployment}, f"{spec}x{n}"),
            _ksm("kube_deployment_status_replicas_updated", {"deployment": deployment}, f"{updated}x{n}"),
            _ksm("kube_deployment_metadata_generation", {"deployment": deployment}, f"2x{n}"),
            _ksm("kube_deployment_status_observed_generation", {"deployment": deployment}, f"2x{n}"),
            _ksm(
                "kube_deployment_status_condition",
                {"deployment": deployment, "condition": "Progressing", "status": "false"},
                f"{progressing_false}x{n}",
            ),
        ]
    # Another team's stuck Deployment in a namespace this PodMonitor does not scrape: no alert.
    series.append(
        _ksm("kube_deployment_spec_replicas", {"namespace": "other", "deployment": "x-serving"}, f"9x{n}"),
    )
    series.append(
        _ksm("kube_deployment_status_replicas_updated", {"namespace": "other", "deployment": "x-serving"}, f"1x{n}")
    )
    for hpa, current, maximum in ((stuck, 20, 20), (healthy, 3, 6)):
        inactive = 1 if hpa == stuck else 0
        series += [
            _ksm(
                "kube_horizontalpodautoscaler_status_condition",
                {"horizontalpodautoscaler": hpa, "condition": "ScalingActive", "status": "false"},
                f"{inactive}x{n}",
            ),
            _ksm(
                "kube_horizontalpodautoscaler_status_current_replicas",
                {"horizontalpodautoscaler": hpa},
                f"{current}x{n}",
            ),
            _ksm("kube_horizontalpodautoscaler_spec_max_replicas", {"horizontalpodautoscaler": hpa}, f"{maximum}x{n}"),
        ]
    for pod, restarts, ready, up in ((SERVER_POD, f"0+1x{n}", 0, 0), (HEALTHY_POD, f"4x{n}", 1, 1)):
        labels = {"pod": pod, "container": "tf-serving"}
        series += [
            _ksm("kube_pod_container_status_restarts_total", labels, restarts),
            _ksm("kube_pod_container_status_last_terminated_reason", {**labels, "reason": "OOMKilled"}, f"1x{n}"),
            _ksm("kube_pod_container_status_ready", labels, f"{ready}x{n}"),
            _series("up", {"pod": pod}, f"{up}x{n}"),
        ]
    return series


def ours(**labels) -> dict:
    return {"namespace": NS, **labels}


EXPECTED = {
    "ScannServingErrorBudgetBurnFast": [{"severity": "critical", **ours(model_name=SICK)}],
    "ScannServingErrorBudgetBurnSlow": [{"severity": "warning", **ours(model_name=SICK)}],
    "ScannServingClientErrorRatioHigh": [{"severity": "warning", **ours(model_name=SICK)}],
    "ScannServingLatencySLOBurn": [{"severity": "warning", **ours(model_name=SICK)}],
    "ScannServingBatchQueueLatencyHigh": [{"severity": "warning", **ours(app_kubernetes_io_instance="scann-model")}],
    "ScannServingRolloutStuck": [
        {"severity": "critical", **ours(deployment="scann-model-serving")},  # updated replicas short, no change
        {"severity": "critical", **ours(deployment="scann-model-b-serving")},  # Progressing=False
    ],
    "ScannServingHPAAtMax": [{"severity": "warning", **ours(horizontalpodautoscaler="scann-model-serving")}],
    "ScannServingHPAMetricsUnavailable": [
        {"severity": "warning", **ours(horizontalpodautoscaler="scann-model-serving")}
    ],
    "ScannServingContainerRestarting": [{"severity": "warning", **ours(pod=SERVER_POD)}],
    "ScannServingOOMKilled": [{"severity": "critical", **ours(pod=SERVER_POD)}],
    "ScannServingTargetAbsent": [],  # targets exist here; the second test removes them
    "ScannServingScrapeFailing": [{"severity": "warning", "job": "scann-serving", **ours(pod=SERVER_POD)}],
    "ScannServingModelNotAvailable": [{"severity": "warning", **ours(pod=SERVER_POD)}],
}


@pytest.fixture(scope="module")
def promtool() -> str:
    proc = subprocess.run([str(REPO / "scripts/promtool.sh")], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"promtool unavailable: {proc.stderr.strip()} (scripts/promtool.sh fetches Debian's)")
    return proc.stdout.strip()


@pytest.fixture(scope="module")
def monitoring(tmp_path_factory) -> list[dict]:
    """The prod namespace with the monitoring component, as `make deploy-monitoring` applies it."""
    proc = run_deploy(tmp_path_factory.mktemp("monitoring"), "--dry-run", "--namespace-only", MONITORING="1")
    assert proc.returncode == 0, proc.stderr
    return load_yaml_documents(proc.stdout)


def _yaml(path, content) -> None:
    """promtool reads YAML; written through the tools venv's PyYAML (the test venv has none)."""
    dump = "import json, sys, yaml; yaml.safe_dump(json.load(sys.stdin), sys.stdout)"
    with path.open("w") as out:
        subprocess.run([tool("python"), "-c", dump], input=json.dumps(content), stdout=out, check=True, text=True)


def test_every_alert_fires_on_its_series_and_stays_silent_otherwise(promtool, monitoring, tmp_path):
    (rule,) = by_kind(monitoring, "PrometheusRule")
    groups = json.loads(json.dumps(rule["spec"]["groups"]))  # a copy: the fixture is shared
    for group in groups:
        for r in group["rules"]:
            r.pop("annotations", None)  # templates: parsed by `promtool check rules` in scripts/lint.sh
    assert {r["alert"] for g in groups for r in g["rules"]} == set(EXPECTED)
    every_alert = [
        {"eval_time": "38m", "alertname": name, "exp_alerts": [{"exp_labels": labels} for labels in alerts]}
        for name, alerts in EXPECTED.items()
    ]
    no_targets = [s for s in tf_serving_series() + cluster_series() if not s["series"].startswith("up{")]
    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {"interval": "1m", "input_series": tf_serving_series() + cluster_series(), "alert_rule_test": every_alert},
            {
                # Nothing scraped (PodMonitor not selected): the absent alert fires, and so nothing
                # that needs our namespace's targets does.
                "interval": "1m",
                "input_series": no_targets,
                "alert_rule_test": [
                    {
                        "eval_time": "38m",
                        "alertname": "ScannServingTargetAbsent",
                        "exp_alerts": [{"exp_labels": {"severity": "critical", "job": "scann-serving"}}],
                    },
                    {"eval_time": "38m", "alertname": "ScannServingRolloutStuck", "exp_alerts": []},
                ],
            },
        ],
    }
    _yaml(tmp_path / "rules.yaml", {"groups": groups})
    _yaml(tmp_path / "tests.yaml", tests)
    proc = subprocess.run([promtool, "test", "rules", "tests.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_links_a_runbook_section(monitoring):
    """runbook_url = the settings' address + "#" + a heading of k8s/RUNBOOK.md with symptom, check, fix."""
    runbook = (REPO / "k8s/RUNBOOK.md").read_text()
    sections = dict(re.findall(r"^## (\S+)\n(.*?)(?=^## |\Z)", runbook, re.M | re.S))
    (rule,) = by_kind(monitoring, "PrometheusRule")
    for r in rule["spec"]["groups"][0]["rules"]:
        url = r["annotations"]["runbook_url"]
        assert url == f"k8s/RUNBOOK.md#{r['alert'].lower()}", url
        body = sections.get(r["alert"])
        assert body, f"k8s/RUNBOOK.md has no section '## {r['alert']}'"
        for part in ("**Symptom**", "**Check**", "**Fix**"):
            assert part in body, (r["alert"], part)


def test_monitoring_selectors_are_settings_with_kube_prometheus_stack_defaults(monitoring, tmp_path):
    for kind in ("PodMonitor", "PrometheusRule"):
        (obj,) = by_kind(monitoring, kind)
        assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack", kind
    # Changing the settings file changes the PodMonitor's label, the rule links and every model's
    # NetworkPolicy together.
    write_push_record(tmp_path, "scann_model")
    settings = k8s_copy(tmp_path) / "settings/monitoring-settings.yaml"
    text = settings.read_text()
    for old, new in (
        ("prometheus-namespace: monitoring", "prometheus-namespace: observability"),
        ("prometheus-pod-name: prometheus", "prometheus-pod-name: prom"),
        ("prometheus-release: kube-prometheus-stack", "prometheus-release: prom-stack"),
        ("runbook-url: k8s/RUNBOOK.md", "runbook-url: https://git.example/ops/RUNBOOK.md"),
    ):
        assert old in text
        text = text.replace(old, new)
    settings.write_text(text)
    proc = run_deploy(tmp_path, "--dry-run", "--namespace-only", MONITORING="1")
    assert proc.returncode == 0, proc.stderr
    objects = load_yaml_documents(proc.stdout)
    (monitor,) = by_kind(objects, "PodMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom-stack"
    (rule,) = by_kind(objects, "PrometheusRule")
    assert rule["spec"]["groups"][0]["rules"][0]["annotations"]["runbook_url"].startswith(
        "https://git.example/ops/RUNBOOK.md#scannserving"
    )
    (policy,) = by_kind(release_and_render(tmp_path, MODEL="scann_model"), "NetworkPolicy")
    scraper = policy["spec"]["ingress"][1]["from"][0]
    assert scraper["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "observability"}
    assert scraper["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prom"}


def test_rules_use_only_metrics_defined_by_tf_serving_or_kube_state_metrics():
    """Every TF Serving series a rule or the adapter reads is one of the three defined in
    tensorflow_serving 2.11 (k8s/components/monitoring/prometheusrule.yaml cites the files)."""
    import re

    defined = {
        ":tensorflow:serving:request_count",
        ":tensorflow:serving:request_latency_bucket",
        ":tensorflow:serving:batching_session:queuing_latency_bucket",
    }
    for path in (
        "k8s/components/monitoring/prometheusrule.yaml",
        "k8s/components/scale-on-load/prometheus-adapter-rules.yaml",
    ):
        used = set(re.findall(r"(:tensorflow:[a-z_:]+)", (REPO / path).read_text()))
        used = {u for u in used if not u.endswith(":")}
        assert used and used <= defined, (path, used - defined)


def test_adapter_queries_answer_zero_for_an_idle_pod(promtool, tmp_path):
    """The HPA skips scale-down while a metric has no data: a scraped pod that served nothing
    yet (no request_count, no queue histogram) must read 0, a busy pod its rate."""
    text = (REPO / "k8s/components/scale-on-load/prometheus-adapter-rules.yaml").read_text()
    queries = dict(zip(re.findall(r"as: (\S+)", text), re.findall(r"metricsQuery: '(.*)'", text)))
    series = dict(zip(re.findall(r"as: (\S+)", text), re.findall(r"seriesQuery: '([^{]+)", text)))
    assert set(queries) == {"tfserving_requests_per_second", "tfserving_batch_queue_p90_seconds"}

    def expand(name: str) -> str:
        return (
            queries[name]
            .replace("<<.Series>>", series[name])
            .replace("<<.LabelMatchers>>", f'namespace="{NS}",pod=~"busy|idle"')
            .replace("<<.GroupBy>>", "pod")
        )

    input_series = [
        _series("up", {"pod": "busy"}, "1x10"),
        _series("up", {"pod": "idle"}, "1x10"),
        _series(":tensorflow:serving:request_count", {"pod": "busy", "model_name": SICK, "status": "OK"}, "0+600x10"),
        *_histogram(
            ":tensorflow:serving:batching_session:queuing_latency",
            {"pod": "busy", "thread_pool_name": "batch_threads"},
            {"1000": 0, "2000": 100, "+Inf": 100},
        ),
    ]
    tests = {
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": input_series,
                "promql_expr_test": [
                    {
                        "expr": expand("tfserving_requests_per_second"),
                        "eval_time": "8m",
                        "exp_samples": [
                            {"labels": '{pod="busy"}', "value": 10},
                            {"labels": '{pod="idle"}', "value": 0},
                        ],
                    },
                    {
                        "expr": expand("tfserving_batch_queue_p90_seconds"),
                        "eval_time": "8m",
                        "exp_samples": [
                            {"labels": '{pod="busy"}', "value": 0.0019},  # 1-2 ms bucket, 90th percentile
                            {"labels": '{pod="idle"}', "value": 0},
                        ],
                    },
                ],
            }
        ],
    }
    _yaml(tmp_path / "tests.yaml", tests)
    proc = subprocess.run([promtool, "test", "rules", "tests.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
