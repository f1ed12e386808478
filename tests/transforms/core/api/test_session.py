"""api.session: the API session's headers, pool and environment, and the line a proxy failure
gets.

Against loopback servers: the headers the API sees (a key only when there is one, Accept-Encoding
naming what ``guards.content_coding`` decodes); the proxy and CA bundle read from the
environment once, when the session is made, with NO_PROXY honoured; and ``proxy_failure`` on the
real errors of a proxy that refuses the tunnel or drops it, never showing the proxy's password.
"""

import http.server
import socket
import threading

import pytest
import requests

from transforms.core.api import session as api_session
from transforms.core.guards import content_coding


@pytest.fixture
def server():
    """A loopback server that answers 200 to GETs and 407 to CONNECTs; records what it got."""
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.requestline, dict(self.headers)))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def do_CONNECT(self):
            seen.append((self.requestline, dict(self.headers)))
            self.send_response(407, "Proxy Authentication Required")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    httpd.seen, httpd.url = seen, f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


ENV = "HTTP_PROXY HTTPS_PROXY ALL_PROXY NO_PROXY REQUESTS_CA_BUNDLE CURL_CA_BUNDLE SSL_CERT_FILE"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ENV.split():
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def test_the_api_sees_the_key_only_when_there_is_one(server):
    api_session.new_session("sk-test-1", 2, server.url).get(server.url + "/v1/models", timeout=5)
    api_session.new_session(None, 2, server.url).get(server.url + "/v1/models", timeout=5)
    (_, with_key), (_, without) = server.seen
    assert with_key["Authorization"] == "Bearer sk-test-1" and "Authorization" not in without
    assert with_key["Accept-Encoding"] == content_coding.ACCEPT_ENCODING
    assert with_key["User-Agent"] == api_session.USER_AGENT
    adapter = api_session.new_session(None, 0).get_adapter("https://api.example/v1")
    assert adapter._pool_maxsize == 1 and adapter.max_retries.total == 0


def test_proxy_and_ca_bundle_are_read_once_and_no_proxy_is_honoured(server, monkeypatch):
    api = "http://127.0.0.2:9/v1"  # never reached: the proxy answers for it
    monkeypatch.setenv("HTTP_PROXY", server.url)
    monkeypatch.setenv("SSL_CERT_FILE", "/etc/corp-ca.pem")
    session = api_session.new_session("k", 1, api)
    monkeypatch.delenv("HTTP_PROXY")  # read when the session was made, not per request
    assert session.get(api + "/models", timeout=5).status_code == 200
    assert server.seen[0][0] == f"GET {api}/models HTTP/1.1"  # the proxy got the absolute URI
    assert session.verify == "/etc/corp-ca.pem" and session.trust_env is False
    monkeypatch.setenv("HTTP_PROXY", server.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.2")
    assert "http" not in api_session.new_session("k", 1, api).proxies


def test_a_proxy_refusing_the_tunnel_is_named_without_its_password(server):
    proxy = server.url.replace("http://", "http://user:s3cret@")
    session = api_session.new_session("k", 1)
    session.proxies["https"] = proxy
    url = "https://api.example.invalid/v1/chat/completions"
    with pytest.raises(requests.exceptions.ProxyError) as info:
        session.get(url, timeout=5)
    line = api_session.proxy_failure(session, url, "api.example.invalid", info.value)
    port = server.server_address[1]
    assert line.startswith(f"the proxy 127.0.0.1:{port} answered 407 Proxy Authentication")
    assert "api.example.invalid" in line and "NO_PROXY" in line
    assert "s3cret" not in line and "user" not in line
    assert server.seen[0][0].startswith("CONNECT api.example.invalid:443")


def test_a_proxy_that_drops_the_tunnel_reads_as_broken():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def drop():
        conn, _ = listener.accept()
        conn.recv(4096)
        conn.close()  # hangs up instead of answering the CONNECT

    threading.Thread(target=drop, daemon=True).start()
    session = api_session.new_session("k", 1)
    session.proxies["https"] = f"http://127.0.0.1:{port}"
    with pytest.raises(requests.exceptions.ConnectionError) as info:
        session.get("https://api.x.invalid/v1", timeout=5)
    listener.close()
    line = api_session.proxy_failure(session, "https://api.x.invalid/v1", "api.x", info.value)
    assert line.startswith(f"the proxy 127.0.0.1:{port} broke the tunnel on the way to api.x (")
