"""TLS and mutual TLS: a refused handshake is a TlsHandshakeError (not retried) whose hint
names the likely cause; what gRPC reports differs by side, so each case is checked. A
plaintext channel reports no TLS failures: a connection closed before HTTP/2 is retried."""

from __future__ import annotations

import random
import time

import grpc
import pytest
from grpc_stand_ins import MODEL, recording_server

from retrieval_client import RetrievalClient, RetryPolicy, ServerUnavailableError, TlsConfig, TlsHandshakeError
from retrieval_client._errors import PLAINTEXT, error_for
from retrieval_client._flows import retry_delay


@pytest.fixture(scope="module")
def mtls_server(pki):
    credentials = grpc.ssl_server_credentials(
        [(pki["server.key"].read_bytes(), pki["server.pem"].read_bytes())],
        root_certificates=pki["ca.pem"].read_bytes(),
        require_client_auth=True,
    )
    with recording_server(credentials=credentials) as server:
        yield server


def _tls(pki, ca="ca", client="client", name="retrieval.test"):
    cert = None if client is None else str(pki[f"{client}.pem"])
    key = None if client is None else str(pki[f"{client}.key"])
    return TlsConfig(
        ca_cert_path=str(pki[f"{ca}.pem"]), client_cert_path=cert, client_key_path=key, server_name_override=name
    )


def test_mutual_tls_with_a_trusted_client_certificate_works(mtls_server, pki):
    with RetrievalClient(mtls_server.target, MODEL, tls=_tls(pki)) as client:
        assert client.search("item-2")[0].ids[0] == "item-2"


@pytest.mark.parametrize(
    "case, hint",
    [
        ("no-client-certificate", "requires a client certificate"),
        ("certificate-from-another-ca", "did not accept the client certificate"),
        ("server-not-trusted", "server certificate did not verify"),
        ("name-mismatch", "does not name the target host"),
    ],
)
def test_a_refused_handshake_says_what_is_wrong_and_is_not_retried(mtls_server, pki, case, hint):
    tls = {
        "no-client-certificate": _tls(pki, client=None),
        "certificate-from-another-ca": _tls(pki, client="stranger"),
        "server-not-trusted": _tls(pki, ca="other-ca"),
        "name-mismatch": _tls(pki, name=None),
    }[case]
    patient = RetryPolicy(max_attempts=20, initial_backoff_s=0.2, max_backoff_s=0.2)
    started = time.monotonic()
    with RetrievalClient(mtls_server.target, MODEL, tls=tls, retry=patient, timeout_s=5) as client:
        with pytest.raises(TlsHandshakeError) as info:
            client.status()
    elapsed = time.monotonic() - started
    print(f"{case}: {info.value.details!r} -> hint {info.value.hint!r} after {elapsed:.2f} s")
    assert hint in info.value.hint and hint in str(info.value)
    assert isinstance(info.value, ServerUnavailableError)
    assert elapsed < 2.0, "not retried until the deadline"


def test_a_connection_closed_before_http2_on_a_plaintext_channel_is_retried_like_unavailable(mtls_server):
    # A TLS server closes a plaintext client's connection before any HTTP/2 frame; so does a
    # plaintext server that is shutting down or restarting. The client cannot tell them apart:
    # it retries (like any UNAVAILABLE), and the error after the last attempt names TLS as a
    # possible cause without calling it a TLS failure.
    error = error_for(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; Socket closed", PLAINTEXT)
    assert type(error) is ServerUnavailableError
    assert retry_delay(RetryPolicy(), 1, error, random.Random(0)) is not None, "retried"
    quick = RetryPolicy(max_attempts=3, initial_backoff_s=0.05, max_backoff_s=0.05)
    with RetrievalClient(mtls_server.target, MODEL, retry=quick, timeout_s=5) as client:
        with pytest.raises(ServerUnavailableError) as info:
            client.status()
    print(f"plaintext to a TLS server: {info.value.details!r} -> {type(info.value).__name__}")
    assert type(info.value) is ServerUnavailableError, "not reported as a TLS failure"
    assert "requires TLS" in info.value.hint and "restarting" in info.value.hint


def test_pem_bytes_and_channel_credentials_work_like_files(mtls_server, pki):
    pem = {name: pki[name].read_bytes() for name in ("ca.pem", "client.pem", "client.key")}
    as_bytes = TlsConfig(
        ca_cert=pem["ca.pem"],
        client_cert=pem["client.pem"],
        client_key=pem["client.key"],
        server_name_override="retrieval.test",
    )
    with RetrievalClient(mtls_server.target, MODEL, tls=as_bytes) as client:
        assert client.search("item-2")[0].ids[0] == "item-2"
    credentials = grpc.ssl_channel_credentials(pem["ca.pem"], pem["client.key"], pem["client.pem"])
    name = [("grpc.ssl_target_name_override", "retrieval.test")]
    with RetrievalClient(mtls_server.target, MODEL, credentials=credentials, channel_options=name) as client:
        assert client.search("item-2")[0].ids[0] == "item-2"
    with pytest.raises(ValueError, match="not both"):
        TlsConfig(ca_cert=pem["ca.pem"], ca_cert_path=str(pki["ca.pem"]))
    with pytest.raises(ValueError, match="not both"):
        RetrievalClient(mtls_server.target, MODEL, tls=as_bytes, credentials=credentials)
