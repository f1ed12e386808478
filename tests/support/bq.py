"""bqemulator (PyPI) on loopback for the BigQuery tests, started by the tests themselves.

Offline it needs DuckDB's spatial and avro extensions installed from the
duckdb-extension-spatial and duckdb-extension-avro wheels first (DuckDB would otherwise download
them at the emulator's start); Avro is what Beam's ``--input_query`` reader has the extract job
write. With ``gcs_root`` (a fake-gcs-server's ``-filesystem-root``) load and extract jobs
resolve ``gs://BUCKET/NAME`` there.

The job reaches an emulator through the variables alone (``transforms.bigquery_endpoints``);
``Emulators`` starts the pair the default FILE_LOADS path and BigQuery input need.
``EmulatorBigQueryClient`` is the older way in, through WriteToBigQuery's ``test_client``: Beam's
apitools client pointed at the emulator plus the ``insert_rows_json`` streaming inserts call.
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


def install_extensions(names=("spatial", "avro")) -> None:
    """DuckDB extensions from their PyPI wheels into DuckDB's extension folder, offline."""
    import duckdb

    con = duckdb.connect()
    for name in names:
        installed = con.execute(
            "SELECT installed FROM duckdb_extensions() WHERE extension_name = ?", [name]
        ).fetchone()
        if installed and installed[0]:
            continue
        source = (
            importlib.resources.files(f"duckdb_extension_{name}")
            / "extensions"
            / f"v{duckdb.__version__}"
            / f"{name}.duckdb_extension"
        )
        con.install_extension(str(source))


class BigQueryEmulator:
    def __init__(self, gcs_root: str | None = None):
        self.rest_port, self.grpc_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.rest_port}"
        self.grpc = f"127.0.0.1:{self.grpc_port}"
        self.gcs_root = gcs_root
        self._dir = tempfile.TemporaryDirectory(prefix="bqemu-")
        self._log = open(os.path.join(self._dir.name, "emulator.log"), "wb")
        self._proc = None

    def start(self) -> "BigQueryEmulator":
        install_extensions()
        exe = str(Path(sys.executable).with_name("bqemulator"))
        env = dict(os.environ)
        if self.gcs_root:
            env["BQEMU_GCS_LOCAL_ROOT"] = self.gcs_root
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


class Emulators:
    """fake-gcs-server and bqemulator sharing one folder, each behind the proxy that fills its
    gaps (``BatchSplittingProxy``, ``BigQueryGapProxy``): what the job needs for BigQuery
    through variables alone. ``point(monkeypatch)`` sets them; ``gap`` records and refuses."""

    def __init__(self):
        from tests.support.gcs import FakeGcs

        self.gcs = FakeGcs()
        self.bq = BigQueryEmulator(gcs_root=self.gcs.root)
        self.split = self.gap = None

    def start(self) -> "Emulators":
        from tests.support.bq_proxy import BigQueryGapProxy
        from tests.support.gcs import BatchSplittingProxy

        self.gcs.start()
        try:
            self.split = BatchSplittingProxy(self.gcs.url)
            self.bq.start()
            self.gap = BigQueryGapProxy(self.bq.url, self.gcs.root, self.gcs.url)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for part in (self.gap, self.split):
            if part is not None:
                part.stop()
        self.bq.stop()
        self.gcs.stop()

    def point(self, monkeypatch) -> None:
        monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", self.gap.url)
        monkeypatch.setenv("BIGQUERY_STORAGE_EMULATOR_HOST", self.bq.grpc)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", self.split.url)

    def bigquery(self):
        return self.bq.client()

    def storage(self):
        return self.gcs.client()
