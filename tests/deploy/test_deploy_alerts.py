"""The alert rules of k8s/components/monitoring, run by Prometheus' own rule engine
(`promtool test rules`) on synthetic series named as TF Serving 2.11 exports them: each
alert fires for the sick model and stays quiet for the healthy one next to it.

promtool comes from scripts/promtool.sh (Debian's prometheus package, extracted, not
installed). Annotations are stripped for the run: their templates are parsed by
`promtool check rules` in scripts/lint.sh; this test is about the expressions."""

from __future__ import annotations

import json
import subprocess

import pytest

from support import REPO
from support.deploy import by_kind, load_yaml_documents, run_deploy, tool

pytestmark = pytest.mark.tools

SICK, HEALTHY = "scann_model", "scann_model_items"
NS = "scann-serving"


def _series(name: str, labels: dict, values: str) -> dict:
    body = ",".join(f'{k}="{v}"' for k, v in {"job": "scann-serving", "namespace": NS, **labels}.items())
    return {"series": f"{name}{{{body}}}", "values": values}


def _histogram(name: str, labels: dict, per_minute: dict) -> list[dict]:
    """Cumulative buckets growing by per_minute[le] each minute for 30 minutes."""
    return [_series(f"{name}_bucket", {**labels, "le": le}, f"0+{n}x30") for le, n in per_minute.items()]


def input_series() -> list[dict]:
    series = []
    for model, ok, unavailable, invalid in ((SICK, 970, 30, 0), (HEALTHY, 1000, 0, 1)):
        series += [
            _series(":tensorflow:serving:request_count", {"model_name": model, "status": status}, f"0+{n}x30")
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
    series += [
        {
            "series": f'kube_deployment_status_replicas_unavailable{{namespace="{NS}",deployment="scann-model-serving"}}',
            "values": "1x30",
        },
        {
            "series": f'kube_deployment_status_replicas_unavailable{{namespace="{NS}",'
            'deployment="scann-model-items-serving"}',
            "values": "0x30",
        },
        # Another team's Deployment in a namespace this PodMonitor does not scrape: no alert.
        {
            "series": 'kube_deployment_status_replicas_unavailable{namespace="other",deployment="x-serving"}',
            "values": "3x30",
        },
        _series("up", {"pod": "scann-model-serving-abc"}, "1x30"),
    ]
    return series


EXPECTED = {
    "ScannServingErrorRatioHigh": [{"severity": "critical", "namespace": NS, "model_name": SICK}],
    "ScannServingClientErrorRatioHigh": [],  # 0.1% INVALID_ARGUMENT is below 5%
    "ScannServingBatchQueueLatencyHigh": [
        {"severity": "warning", "namespace": NS, "app_kubernetes_io_instance": "scann-model"}
    ],
    "ScannServingRequestLatencyP99High": [{"severity": "warning", "namespace": NS, "model_name": SICK}],
    "ScannServingPodsNotReady": [{"severity": "warning", "namespace": NS, "deployment": "scann-model-serving"}],
}


@pytest.fixture(scope="module")
def promtool() -> str:
    proc = subprocess.run([str(REPO / "scripts/promtool.sh")], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"promtool unavailable: {proc.stderr.strip()} (scripts/promtool.sh fetches Debian's)")
    return proc.stdout.strip()


def test_every_alert_fires_for_the_sick_model_only(promtool, tmp_path):
    proc = run_deploy(tmp_path, "--dry-run", "--namespace-only", OVERLAY="prod", MONITORING="1")
    assert proc.returncode == 0, proc.stderr
    (rule,) = by_kind(load_yaml_documents(proc.stdout), "PrometheusRule")
    groups = rule["spec"]["groups"]
    for group in groups:
        for r in group["rules"]:
            r.pop("annotations", None)
    assert {r["alert"] for g in groups for r in g["rules"]} == set(EXPECTED)
    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": input_series(),
                "alert_rule_test": [
                    {"eval_time": "25m", "alertname": name, "exp_alerts": [{"exp_labels": labels} for labels in alerts]}
                    for name, alerts in EXPECTED.items()
                ],
            }
        ],
    }
    # promtool reads YAML; JSON is YAML, written through the tools venv's PyYAML for plain output.
    for name, content in (("rules.yaml", {"groups": groups}), ("tests.yaml", tests)):
        dump = "import json, sys, yaml; yaml.safe_dump(json.load(sys.stdin), sys.stdout)"
        subprocess.run(
            [tool("python"), "-c", dump],
            input=json.dumps(content),
            stdout=(tmp_path / name).open("w"),
            check=True,
            text=True,
        )
    proc = subprocess.run([promtool, "test", "rules", "tests.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


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
