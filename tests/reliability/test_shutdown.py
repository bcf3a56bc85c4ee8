"""The local server shuts down like TF Serving 2.11 in google/tf-serving-scann (model_builder/serve/config.py).

The image's entrypoint is bash without exec, PID 1 with no SIGTERM handler, and
tensorflow_model_server installs none (tensorflow/serving issue 1853): SIGTERM changes nothing,
connections opened after it are accepted, and SIGKILL at the grace period resets them all.
SIGINT (Ctrl-C) takes its default action: the process ends at once, without a drain.
"""

from __future__ import annotations

import signal

import grpc

import support
from support import harness

REQUEST = harness.ids_request(["sku-1"])


def _serving(server: support.RunningServer) -> support.RunningServer:
    server.wait_available(1)
    # The signal dispositions are set once the ports are open; the line says they are.
    support.wait_for(lambda: "SIGTERM is ignored" in server.log(), 30, "the server's signal set-up")
    return server


def test_sigterm_changes_nothing_and_sigkill_resets_connections(items_model, tmp_path):
    with support.local_server(items_model.parent.parent, harness.MODEL, log_dir=tmp_path) as server:
        _serving(server)
        before = harness.Raw(server.target)
        assert before.predict(REQUEST).outputs
        server.proc.send_signal(signal.SIGTERM)
        # Still serving, on the connection from before and on one opened after SIGTERM: the
        # connections a rolling update's clients open to a terminating pod.
        after = harness.Raw(server.target)
        for _ in range(20):
            assert before.predict(REQUEST).outputs and after.predict(REQUEST).outputs
        assert server.proc.poll() is None, "SIGTERM ended the server; TF Serving 2.11's image ignores it"
        assert "shutting down" not in server.log()
        server.proc.kill()  # the SIGKILL at terminationGracePeriodSeconds
        assert server.proc.wait(30) == -signal.SIGKILL
        for raw in (before, after):
            err = harness.rpc_error(raw.predict, REQUEST, timeout=5)
            assert err.code() == grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())
            raw.close()


def test_sigint_ends_the_server_at_once_without_a_drain(items_model, tmp_path):
    with support.local_server(items_model.parent.parent, harness.MODEL, log_dir=tmp_path) as server:
        _serving(server)
        server.proc.send_signal(signal.SIGINT)
        assert server.proc.wait(30) == -signal.SIGINT
        assert "shutting down" not in server.log()
