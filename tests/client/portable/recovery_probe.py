"""Time from a server's return to a client's first success, run as its own process:

    python recovery_probe.py sync|async

It starts a RecordingServer in a child process on a fixed port, calls it (search, every
0.1 s, timeout_s=0.5), SIGKILLs it, keeps calling through an outage of OUTAGE_S, starts it
again on the same port and prints one JSON line: {"mode", "grpcio", "recovered_s", ...}
(recovered_s null: no success within GIVE_UP_S). A process of its own because gRPC's
pollers are process-wide: another client or server in the same process (a test session's)
polls this client's channel too and would hide what the client does on its own.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc

from retrieval_client import AsyncRetrievalClient, RetrievalClient, RetrievalError

OUTAGE_S = 4.0  # long enough for the channel's reconnect backoff to reach its cap
GIVE_UP_S = 20.0
PERIOD_S = 0.1
SERVER = "import grpc_stand_ins as s, time; s.RecordingServer(port={port}).start(); print('ready', flush=True); time.sleep(600)"


def start_server(port: int) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER.format(port=port)], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent
    )
    if server.stdout.readline().strip() != "ready":
        server.kill()
        raise RuntimeError(f"the stand-in server did not start (exit code {server.wait()})")
    return server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def run(mode: str) -> dict:
    port = free_port()
    server = start_server(port)
    client_type = RetrievalClient if mode == "sync" else AsyncRetrievalClient
    client = client_type(f"127.0.0.1:{port}", "recorded", timeout_s=0.5)

    async def search() -> bool:
        try:
            result = client.search(["item-1"])
            if mode == "async":
                await result
            return True
        except RetrievalError:
            return False

    try:
        # Before the outage: connected and the metadata cached, however long a busy machine takes.
        warm = client.search(["item-1"], timeout_s=30, wait_for_ready=True)
        if mode == "async":
            await warm
        server.kill()
        server.wait()
        down_at = time.monotonic()
        while time.monotonic() - down_at < OUTAGE_S:
            assert not await search(), "a call succeeded while the server was down"
            await asyncio.sleep(PERIOD_S)
        server = start_server(port)
        back_at, calls = time.monotonic(), 0
        while time.monotonic() - back_at < GIVE_UP_S:
            calls += 1
            if await search():
                return {"recovered_s": round(time.monotonic() - back_at, 2), "calls_after_return": calls}
            await asyncio.sleep(PERIOD_S)
        return {"recovered_s": None, "calls_after_return": calls}
    finally:
        server.kill()
        server.wait()
        closed = client.close()
        if mode == "async":
            await closed


if __name__ == "__main__":
    mode = sys.argv[1]
    outcome = asyncio.run(run(mode))
    print(json.dumps({"mode": mode, "grpcio": grpc.__version__, "outage_s": OUTAGE_S, **outcome}))
