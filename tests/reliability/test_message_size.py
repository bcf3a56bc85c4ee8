"""The gRPC receive limit: TF Serving 2.11's precedence, and what a limit does to memory.

TF Serving 2.11 calls SetMaxMessageSize(kint32max) and its gRPC (1.27.0-dev) lets that win over a
grpc.max_receive_message_length given in --grpc_channel_arguments, logging one error line
(model_builder/serve/server.py `_grpc_options` cites the sources): the flag cannot cap requests.
The local server does the same. Its own --max_message_bytes (no TF Serving equivalent) shows what a
cap does: a request above it is RESOURCE_EXHAUSTED before the server holds it.
"""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import pytest
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from support import harness

CAP = 8 << 20


def _vectors_request(content_bytes: int):
    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1), tensor_shape_pb2.TensorShapeProto.Dim(size=harness.DIM)]
    )
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape, tensor_content=b"\0" * content_bytes)
    return harness.predict_request("search_by_vector", {"vectors": tensor})


def _peak_rss_mib(pid: int) -> int:
    """VmHWM: the most resident memory the process ever had."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) // 1024


@pytest.fixture(scope="module")
def capped_server(items_model, tmp_path_factory):
    """Asks for a 1 MiB limit the TF Serving way (ignored) and sets 8 MiB the local way."""
    with harness.shared_server(
        tmp_path_factory,
        "capped-server",
        items_model,
        "--grpc_channel_arguments=grpc.max_receive_message_length=1048576",
        "--max_message_bytes",
        str(CAP),
    ) as server:
        yield server


def test_channel_argument_does_not_lower_the_limit_like_tf_serving_2_11(capped_server):
    raw = harness.Raw(capped_server.target)
    err = harness.rpc_error(raw.predict, _vectors_request(2 << 20))  # above the 1 MiB asked for
    raw.close()
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())  # the servicer's answer
    assert "gRPC ServerBuilder receives multiple max_receive_message_length" in capped_server.log()


def test_request_above_the_cap_is_resource_exhausted_before_it_is_held(capped_server):
    raw = harness.Raw(capped_server.target, options=[("grpc.max_send_message_length", -1)])
    pid = capped_server.proc.pid
    harness.assert_still_serving(capped_server, raw)
    before = _peak_rss_mib(pid)
    err = harness.rpc_error(raw.predict, _vectors_request(256 << 20))
    after = _peak_rss_mib(pid)
    harness.assert_still_serving(capped_server, raw)
    raw.close()
    print(f"peak RSS {before} -> {after} MiB for a rejected 256 MiB request (cap {CAP >> 20} MiB)")
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (err.code(), err.details())
    assert re.search(rf"Received message larger than max \(\d+ vs\. {CAP}\)", err.details()), err.details()
    assert after - before < 64, "the server held a request above its cap"
