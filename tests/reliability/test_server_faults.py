"""Server faults: corrupt version folders, deleted versions, SIGTERM with requests in flight.

Observed behaviour (as TF Serving's defaults: latest-version policy,
availability-preserving swaps, servable_versions_always_present=false):
- a numeric folder that does not load is reported END with its error in
  GetModelStatus and the log; the previous version keeps serving; a later good
  version is picked up;
- deleting the served (highest) version folder makes the next highest one
  aspired: it is loaded, then the deleted one unloaded, without a failed
  request; deleting every folder unloads everything (NOT_FOUND until a version
  appears again);
- with --on_sigterm drain (not TF Serving 2.11's behaviour: its image ignores SIGTERM,
  test_shutdown.py), SIGTERM stops new RPCs, lets in-flight ones finish within
  --shutdown_grace_seconds, cancels the rest (UNAVAILABLE), exits 0.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time

import grpc
import pytest

import support
from retrieval_client import RetrievalClient, RetryPolicy, ServerUnavailableError
from support import harness

SKUS = [f"sku-{i}" for i in range(0, harness.NUM_ITEMS, 131)]
ROWS = 1024
# The image's numbers with a queue deep enough for 4 requests of 1024 rows at once (the image's
# queue holds one: TF Serving would refuse the others with UNAVAILABLE, which is not under test here).
DEEP_QUEUE = """max_batch_size { value: 1024 }
batch_timeout_micros { value: 400 }
max_enqueued_batches { value: 600 }
num_batch_threads { value: 2 }
enable_large_batch_splitting { value: true }
max_execution_batch_size { value: 8 }
"""


class Loop(threading.Thread):
    """Raw Predict of 2 ids in a loop; records (version, K) or the error."""

    def __init__(self, target: str) -> None:
        super().__init__(daemon=True)
        self.raw = harness.Raw(target)
        self.answers: list[tuple[int, int]] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            try:
                response = self.raw.predict(
                    harness.ids_request([SKUS[i % len(SKUS)], SKUS[(i + 1) % len(SKUS)]]), timeout=30
                )
                self.answers.append((response.model_spec.version.value, harness.outputs(response)["ids"].shape[1]))
            except grpc.RpcError as err:
                self.errors.append(f"{err.code().name}: {err.details()}")

    def finish(self) -> None:
        self.stop.set()
        self.join(60)
        self.raw.close()


def _corrupt(how: str):
    def damage(folder):
        if how == "truncated-saved-model":
            data = (folder / "saved_model.pb").read_bytes()
            (folder / "saved_model.pb").write_bytes(data[: len(data) // 2])
        elif how == "truncated-variables":
            data_file = next((folder / "variables").glob("variables.data-*"))
            data_file.write_bytes(data_file.read_bytes()[:100])
        elif how == "empty":
            for child in folder.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()

    return damage


def _publish_damaged(source, model_dir, version: int, how: str) -> None:
    staging = model_dir.parent / f"staging-{version}"
    harness.publish_copy(source, staging, version)
    _corrupt(how)(staging / str(version))
    os.rename(staging / str(version), model_dir / str(version))  # appears complete, as a publisher would


def test_corrupt_new_versions_keep_the_previous_one_serving(tmp_path, items_model, items_v2_model):
    model_dir = tmp_path / "models" / harness.MODEL
    harness.publish_copy(items_model, model_dir, 1)
    with support.local_server(tmp_path / "models", harness.MODEL, log_dir=tmp_path) as server:
        server.wait_available(1)
        raw = harness.Raw(server.target)
        loop = Loop(server.target)
        loop.start()
        errors = {}
        for version, how in ((2, "truncated-saved-model"), (3, "truncated-variables"), (4, "empty")):
            _publish_damaged(items_model, model_dir, version, how)
            support.wait_for(lambda v=version: raw.states().get(v) == "END", 120, f"version {version} to fail")
            entry = next(s for s in raw.status().model_version_status if s.version == version)
            errors[version] = (how, entry.status.error_code, entry.status.error_message)
            assert raw.states()[1] == "AVAILABLE"
        harness.publish_copy(items_v2_model, model_dir, 5)
        support.wait_for(lambda: raw.states().get(5) == "AVAILABLE" and raw.states().get(1) == "END", 120, "version 5")
        support.wait_for(lambda: sum(v == 5 for v, _ in loop.answers) >= 10, 60, "answers from version 5")
        loop.finish()
        rest = {int(s["version"]): s for s in server.status()["model_version_status"]}
        final = raw.predict(harness.ids_request(["sku-1"]))
        log = server.log()
        alive = server.proc.poll() is None
        raw.close()
    assert alive and final.model_spec.version.value == 5
    assert loop.errors == [], loop.errors[:5]
    assert {v for v, _ in loop.answers} == {1, 5} and all(k == {1: 10, 5: 5}[v] for v, k in loop.answers)
    for version, (how, code, message) in errors.items():
        assert code != 0 and message.startswith(f"failed to load version {version}:"), (how, message)
    print("load errors reported:", {how: message[:160] for how, _, message in errors.values()})
    for version in (2, 3, 4):
        assert rest[version]["state"] == "END" and rest[version]["status"]["error_message"]
        assert f"version {version} of scann_model failed to load; previous version keeps serving" in log


def test_deleted_versions_fall_back_like_tf_serving(tmp_path, items_model, items_v2_model):
    model_dir = tmp_path / "models" / harness.MODEL
    harness.publish_copy(items_model, model_dir, 1)
    harness.publish_copy(items_v2_model, model_dir, 2)
    with support.local_server(tmp_path / "models", harness.MODEL, log_dir=tmp_path) as server:
        server.wait_available(2)
        raw = harness.Raw(server.target)
        assert raw.states() == {2: "AVAILABLE"}
        loop = Loop(server.target)
        loop.start()
        support.wait_for(lambda: len(loop.answers) >= 20, 60, "requests before the delete")
        shutil.rmtree(model_dir / "2")
        support.wait_for(lambda: raw.states() == {1: "AVAILABLE", 2: "END"}, 120, "fallback to version 1")
        mark = len(loop.answers)
        support.wait_for(lambda: len(loop.answers) >= mark + 20, 60, "requests after the fallback")
        loop.finish()
        shutil.rmtree(model_dir / "1")
        support.wait_for(lambda: raw.states() == {1: "END", 2: "END"}, 120, "every version unloaded")
        gone = harness.rpc_error(raw.predict, harness.ids_request(["sku-1"]))
        harness.publish_copy(items_model, model_dir, 3)
        support.wait_for(lambda: raw.states().get(3) == "AVAILABLE", 120, "version 3")
        back = raw.predict(harness.ids_request(["sku-1"])).model_spec.version.value
        raw.close()
    assert loop.errors == [], loop.errors[:5]
    versions = [v for v, _ in loop.answers]
    assert versions[0] == 2 and versions[-1] == 1 and versions == sorted(versions, reverse=True), (
        "2 ... then 1, never back"
    )
    assert (gone.code(), gone.details()) == (
        grpc.StatusCode.NOT_FOUND,
        "Servable not found for request: Latest(scann_model)",
    )
    assert back == 3


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _refused(raw: harness.Raw):
    """The status code of a new GetModelStatus call, or None while the server still answers."""
    try:
        raw.status(timeout=5)
    except grpc.RpcError as err:
        return err.code()
    return None


def _slow_requests(target: str, n: int) -> tuple[list, list[threading.Thread]]:
    client = RetrievalClient(target, harness.MODEL, timeout_s=300, retry=RetryPolicy(max_attempts=1))
    client.metadata()
    ids = [f"sku-{i}" for i in range(ROWS)]
    outcomes: list = [None] * n

    def send(i: int) -> None:
        try:
            results = client.search(ids)
            outcomes[i] = ("ok", [len(r.ids) for r in results], time.monotonic())
        except Exception as err:
            outcomes[i] = (err, None, time.monotonic())

    threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
    return outcomes, threads


@pytest.mark.parametrize(("grace_s", "expect"), [(60.0, "finish"), (1.0, "cancelled")], ids=["drain", "grace-expires"])
def test_sigterm_with_requests_in_flight(tmp_path, slow_model, grace_s, expect):
    harness.publish_copy(slow_model, tmp_path / "models" / harness.MODEL, 1)
    (tmp_path / "batching.txt").write_text(DEEP_QUEUE)
    with support.local_server(
        tmp_path / "models",
        harness.MODEL,
        "--on_sigterm",
        "drain",
        "--shutdown_grace_seconds",
        str(grace_s),
        "--batching_parameters_file",
        str(tmp_path / "batching.txt"),
        log_dir=tmp_path,
    ) as server:
        server.wait_available(1)
        pid = server.proc.pid
        outcomes, threads = _slow_requests(server.target, 4)
        cpu = _cpu_seconds(pid)
        for thread in threads:
            thread.start()
        # In flight: the idle server is now burning CPU on them (each takes seconds).
        support.wait_for(lambda: _cpu_seconds(pid) - cpu >= 1.0, 120, "the server to work on the requests")
        sigterm_at = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        support.wait_for(lambda: "shutting down: draining" in server.log(), 30, "the drain to start")
        probe = harness.Raw(server.target)
        refused = support.wait_for(lambda: _refused(probe), 10, "new RPCs to be refused")
        for thread in threads:
            thread.join(grace_s + 120)
        code = server.proc.wait(grace_s + 120)
        exit_s = time.monotonic() - sigterm_at
    done_s = [round(at - sigterm_at, 2) for _, _, at in outcomes]
    print(
        f"grace {grace_s} s: requests ended {done_s} s after SIGTERM, process exited after {exit_s:.1f} s, code {code}; {[o[0] for o in outcomes]}"
    )
    assert code == 0
    assert refused == grpc.StatusCode.UNAVAILABLE, "a new RPC after SIGTERM must be refused"
    assert all(at > sigterm_at for _, _, at in outcomes), "every request was still in flight at SIGTERM"
    if expect == "finish":
        assert [(status, sizes) for status, sizes, _ in outcomes] == [("ok", [1500] * ROWS)] * 4
    else:
        for status, sizes, _ in outcomes:
            assert status == "ok" and sizes == [1500] * ROWS or isinstance(status, ServerUnavailableError), status
        assert any(isinstance(status, ServerUnavailableError) for status, _, _ in outcomes), (
            "the grace bound was not applied"
        )
