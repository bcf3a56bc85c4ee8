"""TLS and mutual TLS: a refused handshake is a TlsHandshakeError (not retried) whose hint
names the likely cause; what gRPC reports differs by side, so each case is checked."""

from __future__ import annotations

import time

import grpc
import pytest
from grpc_stand_ins import MODEL, recording_server

from retrieval_client import RetrievalClient, RetryPolicy, ServerUnavailableError, TlsConfig, TlsHandshakeError


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
        ("plaintext", "probably requires TLS"),
        ("server-not-trusted", "server certificate did not verify"),
        ("name-mismatch", "does not name the target host"),
    ],
)
def test_a_refused_handshake_says_what_is_wrong_and_is_not_retried(mtls_server, pki, case, hint):
    tls = {
        "no-client-certificate": _tls(pki, client=None),
        "certificate-from-another-ca": _tls(pki, client="stranger"),
        "plaintext": None,
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
