"""TLS on the local server (--ssl_config_file, TF Serving's SSLConfig text proto) with the client's TlsConfig,
including client-certificate verification. Certificates are made with openssl for each session."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

import support
from retrieval_client import RetrievalClient, RetryPolicy, ServerUnavailableError, TlsConfig
from support import harness, tls

ONCE = RetryPolicy(max_attempts=1)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA with a server cert for 127.0.0.1/localhost and a client cert; a second CA with its own client cert."""
    folder = tmp_path_factory.mktemp("pki")
    tls.make_ca(folder, "ca")
    tls.make_signed(folder, "server", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost")
    tls.make_signed(folder, "client", "ca", "extendedKeyUsage=clientAuth")
    tls.make_ca(folder, "other-ca")
    tls.make_signed(folder, "stranger", "other-ca", "extendedKeyUsage=clientAuth")
    return folder


def _ssl_config(pki: Path, client_verify: bool) -> Path:
    # TF Serving's SSLConfig fields hold the PEM text itself; json.dumps gives valid text-proto string escapes.
    text = "".join(
        f"{field}: {json.dumps((pki / name).read_text())}\n"
        for field, name in (("server_key", "server.key"), ("server_cert", "server.pem"), ("custom_ca", "ca.pem"))
    )
    path = pki / f"ssl-{client_verify}.config"
    path.write_text(text + f"client_verify: {str(client_verify).lower()}\n")
    return path


def _tls(pki: Path, client: str | None = "client", ca: str = "ca") -> TlsConfig:
    if client is None:
        return TlsConfig(ca_cert_path=str(pki / f"{ca}.pem"))
    return TlsConfig(
        ca_cert_path=str(pki / f"{ca}.pem"),
        client_cert_path=str(pki / f"{client}.pem"),
        client_key_path=str(pki / f"{client}.key"),
    )


def _search(target: str, tls: TlsConfig | None):
    with RetrievalClient(target, harness.MODEL, tls=tls, retry=ONCE, timeout_s=10) as client:
        return client.search("sku-3")[0]


@pytest.fixture(scope="module")
def mtls_server(pki, items_model, tmp_path_factory):
    logs = tmp_path_factory.mktemp("mtls-server")
    with support.local_server(
        items_model.parent.parent, harness.MODEL, "--ssl_config_file", str(_ssl_config(pki, True)), log_dir=logs
    ) as server:
        server.wait_available(1)
        yield server


def test_mutual_tls_accepts_a_client_cert_from_the_ca(mtls_server, pki):
    assert len(_search(mtls_server.target, _tls(pki)).ids) == 10
    assert "(TLS on)" in mtls_server.log()


@pytest.mark.parametrize("tls", ["no-client-cert", "cert-from-another-ca", "plaintext", "server-not-trusted"])
def test_mutual_tls_refuses(mtls_server, pki, tls):
    config = {
        "no-client-cert": _tls(pki, client=None),
        "cert-from-another-ca": _tls(pki, client="stranger"),
        "plaintext": None,
        "server-not-trusted": _tls(pki, client="client", ca="other-ca"),
    }[tls]
    with pytest.raises(ServerUnavailableError):
        _search(mtls_server.target, config)
    assert len(_search(mtls_server.target, _tls(pki)).ids) == 10  # still serving


def test_tls_without_client_verification(pki, items_model, tmp_path):
    with support.local_server(
        items_model.parent.parent, harness.MODEL, "--ssl_config_file", str(_ssl_config(pki, False)), log_dir=tmp_path
    ) as server:
        server.wait_available(1)
        assert len(_search(server.target, _tls(pki, client=None)).ids) == 10  # server CA only, no client cert
        localhost = server.target.replace("127.0.0.1", "localhost")
        assert len(_search(localhost, _tls(pki, client=None)).ids) == 10  # DNS name in the certificate too
        with pytest.raises(ServerUnavailableError):
            _search(server.target, None)
        raw = harness.Raw(server.target, grpc.ssl_channel_credentials((pki / "ca.pem").read_bytes()))
        assert raw.states() == {1: "AVAILABLE"}
        raw.close()


def test_ssl_config_without_a_key_is_a_one_line_error(pki, items_model, tmp_path):
    config = tmp_path / "ssl.config"
    config.write_text(f"server_cert: {json.dumps((pki / 'server.pem').read_text())}\n")
    proc = support.run_cli(
        "serve",
        "--model-base-path",
        str(items_model.parent.parent),
        "--model-name",
        harness.MODEL,
        "--port",
        str(support.free_port()),
        "--rest_api_port",
        "0",
        "--ssl_config_file",
        str(config),
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert (
        proc.stderr.strip().splitlines()[-1]
        == f"error: --ssl_config_file {config}: server_key and server_cert are required"
    )
