"""A rolling update of 3 pods to 3 new ones on loopback, under load from our client and a raw gRPC stub.

Pods are local servers that shut down like TF Serving 2.11 in its image (SIGTERM does nothing,
the process ends at SIGKILL), on 127.0.0.N with one port; clients resolve a headless name through a
DNS server on 127.0.0.1 (support/rollout.py). Kubernetes' timings are scaled by SCALE with their
ratios kept, and the grace period is the product's (k8s/base/deployment.yaml, checked against the
same Budget in tests/deploy). Failed calls per client go to the test output and
build/rollout-simulation.json; only ours is asserted (0): the raw stub's count depends on where its
single pick_first connection happens to be. The report also says when each old pod answered its last
request after its deletion, and which of those requests the 40 s grace period used before would have
cut (SIGKILL resets them: test_shutdown.py).
"""

from __future__ import annotations

import json
import time

from retrieval_client import RetrievalClient
from support import REPO, harness
from support.rollout import Budget, Cluster, HeadlessDns, Load

SCALE = 0.1  # 50 s of Kubernetes time take 5 s here
PRODUCT = Budget.product()  # terminationGracePeriodSeconds and the connection age, as shipped
# Calls keep their real 5 s deadline: they take milliseconds, and a scaled 0.5 s would turn a
# slow moment of a busy machine into a failure that has nothing to do with the rollout.
DEADLINE_S = PRODUCT.call_deadline_s
BEFORE_S = 40.0  # the grace period before the fix
# Between two surge pods: the Deployment starts the next one as soon as an old one terminates;
# readiness (model AVAILABLE, probe every 5 s) takes about this long.
SURGE_INTERVAL_S = 5.0
STEADY_S = 10.0  # load before and after the roll
START_TIMEOUT_S = 600  # six servers loading at once on a busy 2-core machine


def _roll(cluster: Cluster, old, new, budget: Budget, callers: dict) -> dict:
    """Replaces `old` with `new` one pod at a time (maxSurge 1, maxUnavailable 0) under load."""
    loads = [Load(name, call).start() for name, call in callers.items()]
    time.sleep(STEADY_S * SCALE)
    begun = time.monotonic()
    for old_pod, new_pod in zip(old, new):
        cluster.ready(new_pod)
        cluster.terminate(old_pod, budget)
        time.sleep(SURGE_INTERVAL_S * SCALE)
    cluster.join(budget.grace_period_s + 30)
    time.sleep(STEADY_S * SCALE)
    for load in loads:
        load.stop()
    result = {
        load.name: {
            "ok": load.ok,
            "failed": len(load.failures),
            "failures": [(round(at - begun, 2), code) for at, code in load.failures[:20]],
        }
        for load in loads
    }
    # When each old pod answered its last request, counted from its deletion (the kill is at the grace period).
    result["last_served_s"] = {pod.host: cluster.last_served_s.get(pod.host) for pod in old}
    result["cut_by_the_old_grace"] = [h for h, at in result["last_served_s"].items() if at > BEFORE_S * SCALE]
    return result


def test_rolling_update_drops_no_call_of_our_client(items_model, tmp_path):
    budget = PRODUCT.scaled(SCALE)
    raw_min_resolution_ms = round(PRODUCT.for_raw_caller().scaled(SCALE).client_min_resolution_s * 1000)
    with HeadlessDns() as dns:
        cluster = Cluster(dns, items_model.parent.parent, harness.MODEL, tmp_path)
        try:
            old = [cluster.start(f"127.0.0.{10 + i}", *budget.server_flags()) for i in (1, 2, 3)]
            new = [cluster.start(f"127.0.0.{20 + i}", *budget.server_flags()) for i in (1, 2, 3)]
            for pod in old:
                cluster.ready(pod)
            target = dns.target(cluster.port)
            ours = RetrievalClient(
                target,
                model=harness.MODEL,
                timeout_s=DEADLINE_S,
                channel_options=[
                    ("grpc.dns_min_time_between_resolutions_ms", round(budget.client_min_resolution_s * 1000))
                ],
            )
            # A raw caller: gRPC's defaults (pick_first; re-resolution at most every 30 s, scaled).
            raw = harness.Raw(target, options=[("grpc.dns_min_time_between_resolutions_ms", raw_min_resolution_ms)])
            request = harness.ids_request(["sku-1"])
            callers = {
                "retrieval_client": lambda: ours.search(["sku-1"]),
                "raw_grpc_stub": lambda: raw.predict(request, timeout=DEADLINE_S),
            }
            for pod in new:
                pod.wait_available(timeout=START_TIMEOUT_S)
            result = _roll(cluster, old, new, budget, callers)
            ours.close()
            raw.close()
        finally:
            cluster.stop_all()
    report = {
        "scale": SCALE,
        "budget_s": PRODUCT.__dict__,
        "last_call_s": {"ours": PRODUCT.last_call_s(), "raw": PRODUCT.for_raw_caller().last_call_s()},
        "roll": result,
        "events": [(round(at - cluster.events[0][0], 2), what) for at, what in cluster.events],
    }
    out = REPO / "build" / "rollout-simulation.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    calls = {name: (result[name]["ok"], result[name]["failed"]) for name in callers}
    print(
        f"rolling update, grace {PRODUCT.grace_period_s:g} s x {SCALE}: (ok, failed) calls {calls}; old pods' last "
        f"request after deletion {result['last_served_s']} s; cut by the old {BEFORE_S:g} s grace: "
        f"{result['cut_by_the_old_grace']} ({out})"
    )
    assert all(result[name]["ok"] > 0 for name in callers), result
    assert result["retrieval_client"]["failed"] == 0, result["retrieval_client"]
