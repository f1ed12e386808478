"""Debian's nginx as a reverse proxy in front of a loopback upstream, the way real APIs and
self-hosted model servers are reached: optionally terminating TLS, compressing (gzip, brotli),
closing keep-alive connections every N requests, refusing large bodies, timing out slow
upstreams, and rate limiting.

    with RecordingApi() as api, Nginx(api.base_url, tmp_path / "nginx", tls=pki.good,
                                      gzip=True, keepalive_requests=7) as front:
        run_job(front.base_url, ...)   # https://127.0.0.1:<port>/v1
        front.access_log()             # one dict per request (status, encoding, connection, ...)

nginx runs as a subprocess (``nginx -p PREFIX -c CONF -e ERROR_LOG -g 'daemon off;'``) on a free
loopback port with every path it writes (pid, logs, temp files) under ``folder``; the context
manager waits until the port answers and stops it (SIGTERM, then wait) on exit. Its error pages
(413, 502, 504, ...) are nginx's own HTML, sent with ``Server: nginx/<version>``, as in the
field. Without nginx (or, with ``brotli=True``, without ``libnginx-mod-http-brotli-filter``) the
test is skipped, or failed when ``CI`` is set: ``.ci/run`` installs them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse

import pytest

from tests.support.net import free_port

NGINX = "/usr/sbin/nginx"
BROTLI_MODULE = "/usr/lib/nginx/modules/ngx_http_brotli_filter_module.so"
INSTALL = "apt-get install -y --no-install-recommends {} (.ci/run does this)"

# one JSON object per request in access.log; never a request header (the key travels in one)
LOG_FORMAT = (
    '{"method":"$request_method","uri":"$request_uri","status":$status,'
    '"encoding":"$sent_http_content_encoding","upstream_status":"$upstream_status",'
    '"bytes_sent":$body_bytes_sent,"request_length":$request_length,'
    '"connection":$connection,"connection_requests":$connection_requests,'
    '"tls":"$ssl_protocol","request_time":$request_time}'
)


def missing(message: str):
    """Skip the test, or fail it under CI (where ``.ci/run`` must have installed the program)."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float, what: str, log: str) -> None:
    """Until ``port`` on 127.0.0.1 accepts a connection; raises if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}: {tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{what} did not open port {port} in {timeout:g} s: {tail(log)}"
                ) from None
            time.sleep(0.05)


def tail(path: str, size: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            return f.read()[-size:].decode("utf-8", "replace")
    except OSError:
        return "(no log)"


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


class Nginx:
    """nginx proxying ``upstream`` (``http://127.0.0.1:PORT[/path]``) on a free loopback port.

    tls: a ``tests.support.tls.ServerCert`` (or (cert, key) paths) to terminate TLS with.
    gzip / brotli: compress ``compress_types`` answers (``gzip_min_length``/``brotli_min_length``
    ``min_length``, ``gzip_proxied any``); brotli loads Debian's brotli filter module.
    keepalive_requests: requests per client connection before nginx closes it.
    client_max_body_size: nginx's own 413 above it (nginx syntax: ``128``, ``1k``, ``64m``).
    proxy_read_timeout: nginx's own 504 when the upstream is silent longer (``1s``).
    proxy_buffering: False streams the upstream's answer through as it comes (chunked).
    limit_req: ``(rate_per_s, burst)`` — nginx's ``limit_req`` on the client address (a rate
    below 1/s or fractional is written per minute), ``nodelay`` by ``limit_nodelay``; refused
    requests get ``limit_status`` with a JSON error body and, when ``retry_after`` is given,
    ``Retry-After: <retry_after>``.
    extra_main / extra_http / extra_server / extra_location: raw config lines added there.
    """

    def __init__(
        self,
        upstream: str,
        folder=None,
        *,
        tls=None,
        gzip: bool = False,
        brotli: bool = False,
        compress_types: tuple[str, ...] = ("application/json",),
        min_length: int = 20,
        keepalive_requests: int | None = None,
        client_max_body_size: str = "64m",
        proxy_read_timeout: str | None = None,
        proxy_buffering: bool = True,
        limit_req: tuple[float, int] | None = None,
        limit_status: int = 429,
        retry_after: float | None = None,
        limit_nodelay: bool = True,
        extra_main: tuple[str, ...] = (),
        extra_http: tuple[str, ...] = (),
        extra_server: tuple[str, ...] = (),
        extra_location: tuple[str, ...] = (),
        start_timeout: float = 15,
    ):
        parsed = urllib.parse.urlsplit(upstream)
        if parsed.scheme != "http" or not parsed.port:
            raise ValueError(f"upstream must be http://host:port[/path], got {upstream!r}")
        self.upstream = upstream
        self._upstream_host = f"{parsed.hostname}:{parsed.port}"
        self._path = parsed.path.rstrip("/")
        self._own_folder = folder is None
        self.folder = os.fspath(folder) if folder is not None else tempfile.mkdtemp(prefix="nginx-")
        self.tls = tuple(tls) if isinstance(tls, (tuple, list)) else tls
        self.gzip = gzip
        self.brotli = brotli
        self.compress_types = compress_types
        self.min_length = min_length
        self.keepalive_requests = keepalive_requests
        self.client_max_body_size = client_max_body_size
        self.proxy_read_timeout = proxy_read_timeout
        self.proxy_buffering = proxy_buffering
        self.limit_req = limit_req
        self.limit_status = limit_status
        self.retry_after = retry_after
        self.limit_nodelay = limit_nodelay
        self.extra_main = extra_main
        self.extra_http = extra_http
        self.extra_server = extra_server
        self.extra_location = extra_location
        self.start_timeout = start_timeout
        self.port = 0
        self._proc: subprocess.Popen | None = None
        self.conf_path = os.path.join(self.folder, "nginx.conf")
        self.access_log_path = os.path.join(self.folder, "access.log")
        self.error_log_path = os.path.join(self.folder, "error.log")

    # -- addresses ------------------------------------------------------------------------------
    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def url(self) -> str:
        """``scheme://127.0.0.1:port`` (no path)."""
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """The upstream's base URL as seen through nginx (same path, e.g. ``/v1``)."""
        return self.url + self._path

    # -- what it saw ----------------------------------------------------------------------------
    def access_log(self) -> list[dict]:
        """One dict per request nginx finished (see ``LOG_FORMAT``), in order."""
        try:
            with open(self.access_log_path, encoding="utf-8") as f:
                return [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def logs_text(self) -> str:
        """Access and error log, as text (for "the key appears nowhere" checks)."""
        parts = []
        for path in (self.access_log_path, self.error_log_path):
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    parts.append(f.read())
            except FileNotFoundError:
                pass
        return "\n".join(parts)

    # -- config ---------------------------------------------------------------------------------
    def _rate(self) -> str:
        rate = float(self.limit_req[0])
        if rate >= 1 and rate == int(rate):
            return f"{int(rate)}r/s"
        return f"{max(1, round(rate * 60))}r/m"

    def config(self) -> str:
        d = self.folder
        main = [
            "worker_processes 1;",
            f"pid {d}/nginx.pid;",
            f"error_log {d}/error.log info;",
        ]
        if os.geteuid() == 0:
            # workers would run as nobody, who cannot reach a test's private temp folder
            main.append("user root;")
        if self.brotli:
            main.insert(0, f"load_module {BROTLI_MODULE};")
        main += list(self.extra_main)
        http = [
            f"log_format ve escape=json '{LOG_FORMAT}';",
            f"access_log {d}/access.log ve;",
            *(
                f"{kind}_temp_path {d}/tmp/{kind};"
                for kind in ("proxy", "fastcgi", "uwsgi", "scgi")
            ),
            f"client_body_temp_path {d}/tmp/client_body;",
            "default_type application/octet-stream;",
            f"client_max_body_size {self.client_max_body_size};",
        ]
        types = " ".join(self.compress_types)
        if self.keepalive_requests is not None:
            http.append(f"keepalive_requests {self.keepalive_requests};")
        if self.gzip:
            http += [
                "gzip on;",
                f"gzip_types {types};",
                f"gzip_min_length {self.min_length};",
                "gzip_proxied any;",
                "gzip_vary on;",
            ]
        if self.brotli:
            http += [
                "brotli on;",
                f"brotli_types {types};",
                f"brotli_min_length {self.min_length};",
            ]
        if self.limit_req:
            http.append(f"limit_req_zone $binary_remote_addr zone=ve:1m rate={self._rate()};")
        http += list(self.extra_http)

        server = [f"listen 127.0.0.1:{self.port}{' ssl' if self.tls else ''};"]
        if self.tls:
            cert, key = (self.tls.cert, self.tls.key) if hasattr(self.tls, "cert") else self.tls
            server += [
                f"ssl_certificate {cert};",
                f"ssl_certificate_key {key};",
                "ssl_protocols TLSv1.2 TLSv1.3;",
            ]
        server += list(self.extra_server)

        location = [
            f"proxy_pass http://{self._upstream_host};",
            "proxy_http_version 1.1;",
            'proxy_set_header Connection "";',
        ]
        if self.proxy_read_timeout:
            location.append(f"proxy_read_timeout {self.proxy_read_timeout};")
        if not self.proxy_buffering:
            location.append("proxy_buffering off;")
        named = []
        if self.limit_req:
            burst = int(self.limit_req[1])
            location += [
                f"limit_req zone=ve burst={burst}{' nodelay' if self.limit_nodelay else ''};",
                f"limit_req_status {self.limit_status};",
                f"error_page {self.limit_status} = @limited;",
            ]
            body = json.dumps(
                {
                    "error": {
                        "message": "nginx limit_req: too many requests",
                        "type": "requests",
                        "code": "rate_limit_exceeded",
                    }
                }
            )
            named = [
                "location @limited {",
                "    default_type application/json;",
                *(
                    [f"    add_header Retry-After {self.retry_after:g} always;"]
                    if self.retry_after is not None
                    else []
                ),
                f"    return {self.limit_status} '{body}';",
                "}",
            ]
        location += list(self.extra_location)

        def block(lines, indent):
            return "\n".join(" " * indent + line for line in lines)

        return (
            block(main, 0)
            + "\nevents {\n    worker_connections 512;\n}\nhttp {\n"
            + block(http, 4)
            + "\n    server {\n"
            + block(server, 8)
            + "\n        location / {\n"
            + block(location, 12)
            + "\n        }\n"
            + block(named, 8)
            + "\n    }\n}\n"
        )

    # -- life -----------------------------------------------------------------------------------
    def start(self) -> "Nginx":
        if not os.path.exists(NGINX):
            missing(f"nginx is not installed: {INSTALL.format('nginx')}")
        if self.brotli and not os.path.exists(BROTLI_MODULE):
            missing(
                "nginx's brotli filter is not installed: "
                + INSTALL.format("libnginx-mod-http-brotli-filter")
            )
        os.makedirs(os.path.join(self.folder, "tmp"), exist_ok=True)
        for attempt in range(3):  # a free port can be taken between asking and binding
            self.port = free_port()
            with open(self.conf_path, "w") as f:
                f.write(self.config())
            stderr = open(os.path.join(self.folder, "stderr.log"), "ab")
            self._proc = subprocess.Popen(
                [
                    NGINX,
                    "-p",
                    self.folder + "/",
                    "-c",
                    self.conf_path,
                    "-e",
                    self.error_log_path,
                    "-g",
                    "daemon off;",
                ],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
            )
            stderr.close()
            try:
                wait_for_port(
                    self.port, self._proc, self.start_timeout, "nginx", self.error_log_path
                )
                return self
            except RuntimeError:
                stop_process(self._proc)
                if attempt == 2 or "Address already in use" not in tail(self.error_log_path):
                    raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc)  # SIGTERM: fast shutdown, in-flight requests cut
            self._proc = None
        if self._own_folder:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> "Nginx":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
