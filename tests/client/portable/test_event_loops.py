"""One AsyncRetrievalClient across event loops: grpc.aio channels belong to the loop that made
them, so the client keeps one per loop (successive asyncio.run() calls, a loop in another thread)."""

from __future__ import annotations

import asyncio
import threading

from grpc_stand_ins import MODEL

from retrieval_client import AsyncRetrievalClient


def test_one_async_client_serves_successive_loops_and_a_loop_in_another_thread(recorder):
    client = AsyncRetrievalClient(recorder.target, MODEL, timeout_s=5)

    async def nearest() -> str:
        [result] = await client.search(["item-2"])
        return result.ids[0]

    assert [asyncio.run(nearest()) for _ in range(3)] == ["item-2"] * 3
    in_thread: list[str] = []
    thread = threading.Thread(target=lambda: in_thread.append(asyncio.run(nearest())))
    thread.start()
    thread.join(timeout=30)
    assert in_thread == ["item-2"]
    assert asyncio.run(nearest()) == "item-2"
    asyncio.run(client.close())
    assert recorder.count("GetModelMetadata") == 1, "the model's metadata is fetched once, not once per loop"
