"""guards.tls: ``describe_failure`` on the real handshake failures users meet, and ``ca_bundle``.

A loopback HTTPS server is started with each certificate of tests/support/tls.py (trusted,
wrong host, expired, from an unknown CA) and one plain-HTTP server; the error requests raises
against each must read as its cause, with the fix (trust the CA, or ``otherwise``). An error
OpenSSL words in a way the table does not know keeps OpenSSL's reason. ``ca_bundle`` takes
REQUESTS_CA_BUNDLE, then CURL_CA_BUNDLE, then SSL_CERT_FILE, skipping empty ones.
"""

import http.server
import socket
import ssl
import threading

import pytest
import requests

from tests.support.tls import make_pki
from transforms.core.guards import tls


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def _serve(cert=None, context=None):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if cert is not None:
        context = context or ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert.cert, cert.key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _failure(pki, which):
    server = _serve(getattr(pki, which) if which else None)
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}/v1"
        if which == "good":
            return requests.get(url, verify=pki.ca_bundle, timeout=5).status_code
        with pytest.raises(requests.exceptions.SSLError) as info:
            requests.get(url, verify=pki.ca_bundle, timeout=5)
        return tls.describe_failure("127.0.0.1", info.value, otherwise="check the address")
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    "which,cause,fix",
    [
        ("wrong_host", "its certificate is for another host name", "check the address"),
        ("expired", "its certificate has expired", "check the address"),
        (
            "unknown_ca",
            "its certificate is signed by a CA this machine does not trust",
            "trust its CA with REQUESTS_CA_BUNDLE or SSL_CERT_FILE (a PEM bundle)",
        ),
        (None, "it does not speak TLS on that port", "check the address"),  # plain HTTP
    ],
)
def test_each_handshake_failure_reads_as_its_cause(pki, which, cause, fix):
    line = _failure(pki, which)
    assert line.startswith(f"TLS to 127.0.0.1 failed: {cause}") and line.endswith(f"; {fix}")


def test_the_good_certificate_is_accepted(pki):
    assert _failure(pki, "good") == 200  # the server and the CA are right otherwise


def test_an_unlisted_failure_keeps_openssls_reason(pki):
    old_only = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    old_only.maximum_version = ssl.TLSVersion.TLSv1_2
    server = _serve(pki.good, old_only)
    client = ssl.create_default_context(cafile=pki.ca_bundle)
    client.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        with pytest.raises(ssl.SSLError) as info:
            with socket.create_connection(server.server_address, timeout=5) as raw:
                client.wrap_socket(raw, server_hostname="127.0.0.1").close()
    finally:
        server.shutdown()
        server.server_close()
    line = tls.describe_failure("api.example", info.value)
    assert line.startswith("TLS to api.example failed: TLS failed (") and "version" in line
    assert line.endswith("; check --api_base")


def test_ca_bundle_order(monkeypatch):
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.delenv(name, raising=False)
    assert tls.ca_bundle() is None
    monkeypatch.setenv("SSL_CERT_FILE", "/c.pem")
    assert tls.ca_bundle() == "/c.pem"  # which requests alone would not read
    monkeypatch.setenv("CURL_CA_BUNDLE", "/b.pem")
    assert tls.ca_bundle() == "/b.pem"
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "")  # empty: not a bundle
    assert tls.ca_bundle() == "/b.pem"
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/a.pem")
    assert tls.ca_bundle() == "/a.pem"
