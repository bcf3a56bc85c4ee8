"""Issue 21 item 3: a rolling version change across 3 shards under load, every answer from one version.

Each shard is a Deployment behind its own headless name (support/rollout.py: pods are local servers on
127.0.0.N, DNS on loopback, kubelet's termination). Its pods run as the image does for a sharded
model: `--model_config_file` with `model_version_policy { latest { num_versions: 2 } }` over the
version folders the image carries. Old pods carry {1}, new pods {1, 2}; the shards roll one after the
other, each old pod replaced by a new one (maxSurge 1), while several threads call a
ShardedRetrievalClient. Version 2 holds the same files as version 1 (one build keeps the test short),
so which version answered is what each shard's PredictResponse.model_spec says (SearchResult.version;
a merge of two versions would say None).

The hazard it covers: while the last shard rolls, its status may come from the new pod (so the pin
moves to 2) while a call lands on the old pod, which has no version 2 (NOT_FOUND). The test holds
that overlap until the old pod has answered such a NOT_FOUND, and asserts the caller never saw it.
"""

from __future__ import annotations

import contextlib
import functools
import random
import re
import threading
import time
import urllib.request
from dataclasses import dataclass, field

import numpy as np

import support
from model_builder.data.synthetic import clustered_embeddings
from retrieval_client import ShardedRetrievalClient
from support import harness
from support.rollout import Budget, Cluster, HeadlessDns, Load

SHARDS, N, DIM, K, NAME = 3, 300, 16, 10, "roll"
SCALE = 0.1  # Kubernetes' timings x 0.1, ratios kept (as test_rollout.py)
THREADS = 4
REFRESH_S = 0.3  # the client's pin refresh: short, so the pin moves within the scaled roll
HAZARD_TIMEOUT_S = 15.0
START_TIMEOUT_S = 300  # six servers loading at once on a busy 2-core machine
_NOT_FOUND = re.compile(r'^:tensorflow:serving:request_count\{API="Predict",.*status="NOT_FOUND"\} (\d+)$', re.M)


def _config(path, base_path) -> str:
    path.write_text(
        f'model_config_list {{ config {{ name: "{base_path.name}" base_path: "{base_path}" '
        'model_platform: "tensorflow" model_version_policy { latest { num_versions: 2 } } } }\n'
    )
    return str(path)


def _not_found(pod) -> int:
    with urllib.request.urlopen(f"{pod.rest}/monitoring/prometheus/metrics", timeout=2) as resp:
        return sum(int(n) for n in _NOT_FOUND.findall(resp.read().decode()))


@dataclass
class Answers:
    """Every call's start time and the version of each of its rows; wrong merges are counted."""

    exact: list[list[str]]
    ids: np.ndarray
    calls: list[tuple[float, set]] = field(default_factory=list)
    wrong: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def call(self, client: ShardedRetrievalClient, rng: random.Random) -> None:
        rows = rng.sample(range(N), 8)
        begun = time.monotonic()
        got = client.search(self.ids[rows], k=K)
        with self.lock:
            self.calls.append((begun, {r.version for r in got}))
            self.wrong += sum(r.ids.tolist() != self.exact[i] for i, r in zip(rows, got, strict=True))


def test_a_rolling_version_change_across_3_shards_answers_every_call_from_one_version(tmp_path):
    ids = np.array([f"sku-{i}" for i in range(N)])
    vectors = clustered_embeddings(N, DIM, seed=7)
    np.savez(tmp_path / "items.npz", ids=ids, vectors=vectors)
    built = tmp_path / "built"
    support.run_cli(
        "build", "--out", str(built), "--model-name", NAME, "--candidates", str(tmp_path / "items.npz"),
        "--query", "item", "--shards", str(SHARDS), "--verify-queries", "50", check=True,
    )  # fmt: skip
    scores = vectors @ vectors.T
    np.fill_diagonal(scores, -np.inf)
    exact = [ids[np.argsort(-row, kind="stable")[:K]].tolist() for row in scores]
    budget = Budget.product().scaled(SCALE)
    with contextlib.ExitStack() as stack:
        clusters, old, new = [], [], []
        for i in range(SHARDS):
            model = f"{NAME}-shard-{i}"
            for image, versions in (("old", (1,)), ("new", (1, 2))):
                for version in versions:  # the version folders an image of that release carries
                    harness.publish_copy(built / model / "1", tmp_path / image / model, version)
            dns = stack.enter_context(HeadlessDns(f"{model}.rollout.test"))
            cluster = Cluster(dns, tmp_path / "old", model, tmp_path)
            stack.callback(cluster.stop_all)
            for image, pods in (("old", old), ("new", new)):
                config = _config(tmp_path / f"{image}-{i}.config", tmp_path / image / model)
                host = f"127.0.1.{(10 if image == 'old' else 20) + i}"
                pods.append(cluster.start(host, *budget.server_flags(), "--model_config_file", config))
            clusters.append(cluster)
        for i, cluster in enumerate(clusters):
            cluster.ready(old[i])
            new[i].wait_available(2, timeout=START_TIMEOUT_S)
        targets = [(c.dns.target(c.port), f"{NAME}-shard-{i}") for i, c in enumerate(clusters)]
        resolution_ms = round(budget.client_min_resolution_s * 1000)
        client = ShardedRetrievalClient(
            targets,
            timeout_s=5.0,  # real deadlines: calls take ms, a scaled 0.5 s would fail a busy moment (test_rollout.py)
            version_refresh_s=REFRESH_S,
            channel_options=[("grpc.dns_min_time_between_resolutions_ms", resolution_ms)],
        )
        stack.callback(client.close)
        assert client.wait_until_available(30).version == 1
        answers = Answers(exact, ids)
        loads = [
            Load(f"t{n}", functools.partial(answers.call, client, random.Random(n))).start() for n in range(THREADS)
        ]
        time.sleep(1.0)
        hazard = 0
        for i, cluster in enumerate(clusters):  # shard after shard, old pod -> new pod
            if i == SHARDS - 1:
                every_shard_has_2 = time.monotonic()  # before the last shard's first v2 pod enters DNS
            cluster.ready(new[i])
            if i == SHARDS - 1:  # both pods in DNS: hold until a call pinned to 2 reached the old pod
                support.wait_for(
                    lambda pod=old[i]: _not_found(pod) > 0, HAZARD_TIMEOUT_S, "a NOT_FOUND from the old pod"
                )
                hazard = _not_found(old[i])
            cluster.terminate(old[i], budget)
            time.sleep(budget.endpoint_removal_s + budget.dns_ttl_s + 0.5)
        for cluster in clusters:
            cluster.join(budget.grace_period_s + 30)
        support.wait_for(lambda: client.pinned_version() == 2, 30, "the pin on version 2")
        time.sleep(1.0)
        for load in loads:
            load.stop()
        final = client.search(ids, k=K)
    failures = [f for load in loads for f in load.failures]
    versions = [v for _, v in answers.calls]
    print(
        f"shard rollout: {len(answers.calls)} calls, {len(failures)} failed, wrong merges {answers.wrong}, "
        f"answers on 1 / 2: {versions.count({1})} / {versions.count({2})}, NOT_FOUND absorbed on the last "
        f"shard's old pod: {hazard}"
    )
    assert failures == [], failures[:10]
    assert all(v in ({1}, {2}) for v in versions), [v for v in versions if v not in ({1}, {2})][:10]
    assert answers.wrong == 0
    assert versions.count({1}) > 0 and versions.count({2}) > 0
    early = [at - every_shard_has_2 for at, v in answers.calls if v == {2} and at < every_shard_has_2]
    assert early == [], f"answers on version 2 before every shard had it: {early[:5]}"
    assert {r.version for r in final} == {2}
    assert [r.ids.tolist() for r in final] == exact
