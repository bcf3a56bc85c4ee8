"""The public surface: sync and async twins agree, the error hierarchy maps every code."""

from __future__ import annotations

import inspect
import pickle

import grpc
import pytest

import retrieval_client
from retrieval_client import (
    AsyncRetrievalClient,
    DeadlineExceededError,
    IncompatibleModelError,
    InvalidRequestError,
    ModelNotFoundError,
    ModelNotReadyError,
    ResourceExhaustedError,
    RetrievalClient,
    RetrievalError,
    ServerCancelledError,
    ServerOverloadedError,
    ServerUnavailableError,
    TlsConfig,
    TlsHandshakeError,
    WaitTimeoutError,
)
from retrieval_client._errors import error_for


def public_methods(cls) -> dict:
    return {
        name: member
        for name, member in inspect.getmembers(cls)
        if not name.startswith("_") and (inspect.isfunction(member) or isinstance(member, property))
    }


def test_sync_and_async_clients_expose_the_same_methods_and_defaults():
    sync, async_ = public_methods(RetrievalClient), public_methods(AsyncRetrievalClient)
    assert sorted(sync) == sorted(async_)
    assert {"search", "search_by_vector", "examples", "status", "wait_until_available", "metadata", "close"} <= set(
        sync
    )
    for name, member in sync.items():
        twin = async_[name]
        if isinstance(member, property):
            assert isinstance(twin, property)
            continue
        assert inspect.signature(member) == inspect.signature(twin), name
        assert not inspect.iscoroutinefunction(member), name
        assert inspect.iscoroutinefunction(twin), name
    assert inspect.signature(RetrievalClient.__init__) == inspect.signature(AsyncRetrievalClient.__init__)


def test_constructor_defaults():
    params = inspect.signature(RetrievalClient.__init__).parameters
    assert params["model"].default == "scann_model"
    assert params["timeout_s"].default == 5.0
    assert params["version"].kind is inspect.Parameter.KEYWORD_ONLY
    assert (params["headers"].default, params["interceptors"].default) == (None, ())
    assert (params["wait_for_ready"].default, params["compression"].default) == (False, None)
    assert params["max_reconnect_backoff_ms"].default == 1000
    assert inspect.signature(RetrievalClient.search).parameters["k"].default is None


RPC_METHODS = ("search", "search_by_vector", "examples", "status", "wait_until_available", "metadata")


@pytest.mark.parametrize("name", RPC_METHODS)
def test_every_call_takes_its_deadline_headers_wait_for_ready_and_compression(name):
    params = inspect.signature(getattr(RetrievalClient, name)).parameters
    for keyword in ("timeout_s", "headers", "wait_for_ready", "compression"):
        assert keyword in params, (name, keyword)
        if keyword != "timeout_s" or name != "wait_until_available":
            assert params[keyword].default is None, (name, keyword)
    for keyword in ("headers", "wait_for_ready", "compression"):
        assert params[keyword].kind is inspect.Parameter.KEYWORD_ONLY


def test_context_manager_protocols():
    assert hasattr(RetrievalClient, "__enter__") and hasattr(RetrievalClient, "__exit__")
    assert inspect.iscoroutinefunction(AsyncRetrievalClient.__aenter__)
    assert inspect.iscoroutinefunction(AsyncRetrievalClient.__aexit__)


def test_all_is_complete_and_importable():
    assert sorted(retrieval_client.__all__) == retrieval_client.__all__
    for name in retrieval_client.__all__:
        assert getattr(retrieval_client, name) is not None
    assert not [
        n
        for n in dir(retrieval_client)
        if not n.startswith("_")
        and n not in retrieval_client.__all__
        and not inspect.ismodule(getattr(retrieval_client, n))
    ]


@pytest.mark.parametrize(
    "code, details, error",
    [
        (grpc.StatusCode.INVALID_ARGUMENT, "unknown query id(s): ['x']", InvalidRequestError),
        (grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(m)", ModelNotFoundError),
        (grpc.StatusCode.FAILED_PRECONDITION, "not ready", ModelNotReadyError),
        (grpc.StatusCode.FAILED_PRECONDITION, 'Serving signature key "nope" not found.', IncompatibleModelError),
        (grpc.StatusCode.UNAVAILABLE, "Servable m is loading", ModelNotReadyError),
        (grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses", ServerUnavailableError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", DeadlineExceededError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "message larger than max", ResourceExhaustedError),
        (grpc.StatusCode.INTERNAL, "boom", RetrievalError),
        (grpc.StatusCode.CANCELLED, "Cancelled", ServerCancelledError),
        (
            grpc.StatusCode.UNAVAILABLE,
            "The batch scheduling queue to which this task was submitted is full",
            ServerOverloadedError,
        ),
    ],
)
def test_error_mapping(code, details, error):
    converted = error_for(code, details)
    assert type(converted) is error
    assert (converted.code, converted.details) == (code, details)
    assert str(converted).startswith(f"{code.name}: {details}")
    copy = pickle.loads(pickle.dumps(converted))
    assert type(copy) is error and (copy.code, copy.details, copy.hint) == (code, details, converted.hint)


def test_hierarchy():
    for cls in (
        InvalidRequestError,
        ModelNotFoundError,
        ModelNotReadyError,
        ServerUnavailableError,
        DeadlineExceededError,
        ResourceExhaustedError,
        IncompatibleModelError,
    ):
        assert issubclass(cls, RetrievalError)
    for cls in (ServerOverloadedError, ServerCancelledError, TlsHandshakeError):
        assert issubclass(cls, ServerUnavailableError), "callers catching 'server unavailable' still catch it"
    assert issubclass(WaitTimeoutError, DeadlineExceededError)
    assert IncompatibleModelError("x").code == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize("target", ["http://host:8500", "", "grpc://x:1"])
def test_url_targets_are_refused_with_the_fix(target):
    with pytest.raises(ValueError, match="host:port"):
        RetrievalClient(target)


def test_channel_options_for_kubernetes():
    import json

    from retrieval_client._channel import channel_options

    options = dict(
        channel_options(
            max_message_bytes=123,
            keepalive_time_ms=1000,
            keepalive_timeout_ms=500,
            keepalive_permit_without_calls=True,
            tls=TlsConfig(server_name_override="svc.test"),
            extra=[("grpc.max_receive_message_length", 999)],
        )
    )
    assert options["grpc.lb_policy_name"] == "round_robin"
    assert json.loads(options["grpc.service_config"]) == {"loadBalancingConfig": [{"round_robin": {}}]}
    assert (options["grpc.keepalive_time_ms"], options["grpc.keepalive_timeout_ms"]) == (1000, 500)
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert options["grpc.max_send_message_length"] == 123
    assert options["grpc.max_receive_message_length"] == 999, "extra options override the defaults"
    assert options["grpc.ssl_target_name_override"] == "svc.test"
    # Reconnect within ~2 s of the server's return (gRPC's default backs off to 120 s).
    assert (options["grpc.initial_reconnect_backoff_ms"], options["grpc.max_reconnect_backoff_ms"]) == (250, 1000)
    assert options["grpc.dns_min_time_between_resolutions_ms"] == 5000
