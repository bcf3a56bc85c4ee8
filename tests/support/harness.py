"""Shared by tests/server, tests/reliability and tests/client: small real models, atomic copies, raw TF Serving gRPC calls.

Import it as `from support import harness` (one module object for every folder).
Models are built once per pytest session through the real CLI and memoized on
disk under the session's base temp folder, so the session fixtures of both
folders' conftests share one build (pytest cannot share a fixture between
sibling conftests).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np

import support

MODEL = "scann_model"
DIM = 16
NUM_ITEMS = 2000
PREDICT = "/tensorflow.serving.PredictionService/Predict"
METADATA = "/tensorflow.serving.PredictionService/GetModelMetadata"
STATUS = "/tensorflow.serving.ModelService/GetModelStatus"
# For channels opened before the server listens: retry the connection every 100 ms, not with gRPC's 1 s+ backoff.
FAST_RECONNECT = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 100),
)


# -- models ------------------------------------------------------------------
def item_ids(n: int = NUM_ITEMS) -> np.ndarray:
    """The string ids of the small item catalogue ("sku-0" ...)."""
    return np.array([f"sku-{i}" for i in range(n)])


def write_items(path: Path, seed: int, n: int = NUM_ITEMS, dim: int = DIM) -> Path:
    """An .npz catalogue (ids + clustered vectors); another seed gives other neighbours for the same ids."""
    from model_builder.data.synthetic import clustered_embeddings

    np.savez(path, ids=item_ids(n), vectors=clustered_embeddings(n, dim, seed=seed))
    return path


def shared_build(tmp_path_factory, key: str, *args: str, files: dict | None = None) -> Path:
    """Builds `key` once per session with `python -m model_builder build --out <dir> ARGS` and returns the version dir.

    `files` maps a name to a writer(path) run first; "{stem}" in ARGS is replaced by that file's path.
    """
    root = tmp_path_factory.getbasetemp() / "served-models" / key
    done = root / "version_dir.txt"
    if done.is_file():
        return Path(done.read_text())
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    paths = {Path(name).stem: writer(root / name) for name, writer in (files or {}).items()}
    version_dir = support.build(root / "models", *[a.format(**paths) for a in args])
    done.write_text(str(version_dir))
    return version_dir


def items_model(tmp_path_factory) -> Path:
    """2000 string-id items x 16, item -> similar items, K=10, version 1 (brute force: exact)."""
    return shared_build(
        tmp_path_factory,
        "items",
        "--candidates",
        "{items}",
        "--query",
        "item",
        "--verify-queries",
        "100",
        files={"items.npz": lambda p: write_items(p, seed=3)},
    )


def items_v2_model(tmp_path_factory) -> Path:
    """Same ids, other vectors, K=5, version 2: every answer says which version gave it."""
    return shared_build(
        tmp_path_factory,
        "items-v2",
        "--candidates",
        "{items}",
        "--query",
        "item",
        "-k",
        "5",
        "--version",
        "2",
        "--verify-queries",
        "100",
        files={"items.npz": lambda p: write_items(p, seed=4)},
    )


def slow_model(tmp_path_factory) -> Path:
    """The items with K=1500: a batch of 1024 ids takes seconds (1.5M result strings), for drain tests."""
    return shared_build(
        tmp_path_factory,
        "items-slow",
        "--candidates",
        "{items}",
        "--query",
        "item",
        "-k",
        "1500",
        "--verify-queries",
        "50",
        files={"items.npz": lambda p: write_items(p, seed=3)},
    )


@contextlib.contextmanager
def shared_server(tmp_path_factory, name: str, version_dir: Path, *flags: str) -> Iterator[support.RunningServer]:
    """A session's local server on one built model, AVAILABLE at that version before it is used."""
    logs = tmp_path_factory.mktemp(name)
    with support.local_server(version_dir.parent.parent, MODEL, *flags, log_dir=logs) as server:
        server.wait_available(int(version_dir.name))
        yield server


def publish_copy(version_dir: Path, model_dir: Path, version: int) -> Path:
    """Copies a built version into model_dir/<version> the way export.publish does: hidden temp folder, then rename."""
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / f".tmp-copy-v{version}"
    shutil.copytree(version_dir, tmp)
    final = model_dir / str(version)
    os.rename(tmp, final)
    return final


def tree_digest(folder: Path) -> str:
    """sha256 over every file's relative path and bytes (to prove a version folder was not touched)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


# -- raw gRPC ----------------------------------------------------------------
def predict_request(
    signature: str = "serving_default",
    inputs: dict | None = None,
    *,
    model: str = MODEL,
    version: int | None = None,
    label: str | None = None,
):
    """A tensorflow_serving PredictRequest; `inputs` values are numpy arrays or TensorProtos."""
    import tensorflow as tf
    from tensorflow.core.framework import tensor_pb2
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label:
        request.model_spec.version_label = label
    for name, value in (inputs or {}).items():
        request.inputs[name].CopyFrom(
            value if isinstance(value, tensor_pb2.TensorProto) else tf.make_tensor_proto(value)
        )
    return request


def ids_request(ids, **spec):
    """serving_default for string ids."""
    return predict_request("serving_default", {"ids": np.array([str(i).encode() for i in ids], dtype=object)}, **spec)


class Raw:
    """TF Serving's three RPCs over a plain channel with tensorflow-serving-api messages, plus raw bytes."""

    def __init__(self, target: str, credentials: grpc.ChannelCredentials | None = None, options=()) -> None:
        from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, predict_pb2

        self.channel = (
            grpc.secure_channel(target, credentials, options) if credentials else grpc.insecure_channel(target, options)
        )
        self._predict = self.channel.unary_unary(
            PREDICT,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=predict_pb2.PredictResponse.FromString,
        )
        self._metadata = self.channel.unary_unary(
            METADATA,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=get_model_metadata_pb2.GetModelMetadataResponse.FromString,
        )
        self._status = self.channel.unary_unary(
            STATUS,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=get_model_status_pb2.GetModelStatusResponse.FromString,
        )
        self._md_request = get_model_metadata_pb2.GetModelMetadataRequest
        self._status_request = get_model_status_pb2.GetModelStatusRequest

    def predict(self, request, timeout: float = 30.0):
        return self._predict(request, timeout=timeout)

    def metadata(
        self, model: str = MODEL, version: int | None = None, fields=("signature_def",), timeout: float = 30.0
    ):
        request = self._md_request(metadata_field=list(fields))
        request.model_spec.name = model
        if version is not None:
            request.model_spec.version.value = version
        return self._metadata(request, timeout=timeout)

    def status(self, model: str = MODEL, version: int | None = None, label: str | None = None, timeout: float = 30.0):
        request = self._status_request()
        request.model_spec.name = model
        if version is not None:
            request.model_spec.version.value = version
        if label:
            request.model_spec.version_label = label
        return self._status(request, timeout=timeout)

    def states(self, **kwargs) -> dict[int, str]:
        """{version: state name} from GetModelStatus."""
        from tensorflow_serving.apis import get_model_status_pb2

        names = get_model_status_pb2.ModelVersionStatus.State.Name
        return {s.version: names(s.state) for s in self.status(**kwargs).model_version_status}

    def raw(self, method: str, payload: bytes, timeout: float = 30.0) -> bytes:
        """Sends bytes as they are (identity serializer): for malformed requests."""
        call = self.channel.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        return call(payload, timeout=timeout)

    def close(self) -> None:
        self.channel.close()


def rpc_error(fn, *args, **kwargs) -> grpc.RpcError:
    """Calls fn and returns the RpcError it must raise."""
    try:
        fn(*args, **kwargs)
    except grpc.RpcError as err:
        return err
    raise AssertionError(f"{getattr(fn, '__name__', fn)} succeeded; an error status was expected")


def outputs(response) -> dict[str, np.ndarray]:
    """PredictResponse outputs as numpy arrays."""
    import tensorflow as tf

    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


def assert_still_serving(server: support.RunningServer, raw: Raw, pid: int | None = None) -> None:
    """The same server process answers a valid request with K=10 results."""
    assert server.proc.poll() is None, f"server exited {server.proc.returncode}:\n{server.log()[-3000:]}"
    if pid is not None:
        assert server.proc.pid == pid
    response = raw.predict(ids_request(["sku-7"]), timeout=30)
    assert outputs(response)["ids"].shape == (1, 10)


# -- process -----------------------------------------------------------------
def rss_kib(pid: int) -> int:
    """VmRSS of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def cli_async(*args: str) -> subprocess.Popen:
    """Starts `python -m model_builder ARGS` without waiting (text stdout/stderr pipes)."""
    import sys

    return subprocess.Popen(
        [sys.executable, "-m", "model_builder", *args],
        env=support.ENV,
        cwd=support.REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
