"""Recovery after an outage on the grpcio this venv has (each matrix venv runs it).

Each client runs in a process of its own (recovery_probe.py): the server goes down for 4 s
and comes back on the same port; the figure is the time from its return to the client's
first success. Three clients: blocking, blocking with gRPC's backup poller switched off
(GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS=0: only what the client does itself can bring
it back; without the client's reconnect watch grpcio 1.60 and 1.70 never recovered then), and
asyncio. The times go to $RETRIEVAL_CLIENT_RECOVERY_REPORT (JSON) when set; the matrix prints
them per grpcio version. The bound asserted is generous (the probe gives up after 20 s): it
separates "recovers" from "never", the measured figures are the report's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PROBE = Path(__file__).resolve().parent / "recovery_probe.py"
REPORT = "RETRIEVAL_CLIENT_RECOVERY_REPORT"
VARIANTS = {
    "sync": ("sync", {}),
    "sync, no backup poller": ("sync", {"GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS": "0"}),
    "async": ("async", {}),
}


def test_the_client_serves_again_after_an_outage():
    probes = {
        name: subprocess.Popen(
            [sys.executable, str(PROBE), mode],
            env={**os.environ, **extra},
            cwd=PROBE.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (mode, extra) in VARIANTS.items()
    }
    results, failures = {}, {}
    try:
        for name, probe in probes.items():
            out, err = probe.communicate(timeout=120)
            if probe.returncode != 0:
                failures[name] = err[-2000:]
            else:
                results[name] = json.loads(out.strip().splitlines()[-1])
    finally:
        for probe in probes.values():
            if probe.poll() is None:
                probe.kill()
                probe.wait()
    if os.environ.get(REPORT):
        Path(os.environ[REPORT]).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))
    assert not failures, failures
    never = {name: r for name, r in results.items() if r["recovered_s"] is None}
    assert not never, f"no success within 20 s of the server's return: {never}"
