"""bqemulator (PyPI) on loopback for the BigQuery tests, started by the tests themselves.

Offline it needs DuckDB's spatial extension installed from the duckdb-extension-spatial wheel
first (DuckDB would otherwise download it), and BQEMU_ENABLE_FORMAT_EXTENSIONS=false so it does
not try to download the Avro extension either.

Beam's WriteToBigQuery has no endpoint option; its public ``test_client`` argument takes a
client object instead. ``EmulatorBigQueryClient`` is Beam's own apitools client pointed at the
emulator, plus the ``insert_rows_json`` that streaming inserts call, and picklable.
"""

from __future__ import annotations

import importlib.resources
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from apache_beam.io.gcp.internal.clients.bigquery import bigquery_v2_client

from tests.support.net import free_port

PROJECT = "test-project"


def install_spatial_extension() -> None:
    import duckdb

    con = duckdb.connect()
    installed = con.execute(
        "SELECT installed FROM duckdb_extensions() WHERE extension_name = 'spatial'"
    ).fetchone()
    if installed and installed[0]:
        return
    source = (
        importlib.resources.files("duckdb_extension_spatial")
        / "extensions"
        / f"v{duckdb.__version__}"
        / "spatial.duckdb_extension"
    )
    con.install_extension(str(source))


class BigQueryEmulator:
    def __init__(self):
        self.rest_port, self.grpc_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.rest_port}"
        self._dir = tempfile.TemporaryDirectory(prefix="bqemu-")
        self._log = open(os.path.join(self._dir.name, "emulator.log"), "wb")
        self._proc = None

    def start(self) -> "BigQueryEmulator":
        install_spatial_extension()
        exe = str(Path(sys.executable).with_name("bqemulator"))
        env = dict(os.environ, BQEMU_ENABLE_FORMAT_EXTENSIONS="false")
        self._proc = subprocess.Popen(
            [
                exe,
                "start",
                "--rest-host",
                "127.0.0.1",
                "--rest-port",
                str(self.rest_port),
                "--grpc-host",
                "127.0.0.1",
                "--grpc-port",
                str(self.grpc_port),
                "--project",
                PROJECT,
                "--ephemeral",
                "--log-level",
                "warning",
            ],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"bqemulator exited with {self._proc.returncode}: "
                    f"{Path(self._log.name).read_text()[-2000:]}"
                )
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=1) as response:
                    if response.status == 200:
                        socket.create_connection(("127.0.0.1", self.grpc_port), 1).close()
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("bqemulator was not ready within 60 s")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._log.close()
        self._dir.cleanup()

    def client(self):
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import bigquery

        return bigquery.Client(
            project=PROJECT,
            client_options={"api_endpoint": self.url},
            credentials=AnonymousCredentials(),
        )


class EmulatorBigQueryClient(bigquery_v2_client.BigqueryV2):
    def __init__(self, endpoint: str, project: str = PROJECT):
        super().__init__(url=f"{endpoint}/bigquery/v2/", credentials=None, get_credentials=False)
        self._endpoint, self._project, self._gcp = endpoint, project, None

    def insert_rows_json(self, *args, **kwargs):
        if self._gcp is None:
            from google.auth.credentials import AnonymousCredentials
            from google.cloud import bigquery

            self._gcp = bigquery.Client(
                project=self._project,
                client_options={"api_endpoint": self._endpoint},
                credentials=AnonymousCredentials(),
            )
        kwargs.setdefault("timeout", 30)
        return self._gcp.insert_rows_json(*args, **kwargs)

    def __reduce__(self):
        return (EmulatorBigQueryClient, (self._endpoint, self._project))
