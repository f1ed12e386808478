"""``transforms.bigquery_endpoints``: no client can start an interactive sign-in, the emulator
variables point Beam's clients at an emulator, and nothing changes while they are unset."""

import os
import subprocess
import sys
import textwrap

import pytest
from google.auth.credentials import AnonymousCredentials

from tests.support.net import free_port
from transforms import bigquery_endpoints

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHILD = textwrap.dedent(
    """
    import sys

    def loopback_only(event, args):
        if event == "socket.connect" and isinstance(args[1], tuple):
            host = str(args[1][0])
        elif event == "socket.getaddrinfo":
            host = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
        else:
            return
        if not (host.startswith("127.") or host in ("localhost", "::1")):
            raise ConnectionRefusedError("loopback only: " + host)

    sys.addaudithook(loopback_only)
    import transforms.bigquery_endpoints
    from apache_beam.io.gcp.internal.clients.bigquery import bigquery_v2_client

    try:
        bigquery_v2_client.BigqueryV2()  # what each of Beam's BigQuery paths builds
    except transforms.bigquery_endpoints.NoCredentialsError as exc:
        print("REFUSED", exc)
    """
)


@pytest.mark.slow  # a fresh interpreter importing Beam
def test_no_client_can_start_an_interactive_sign_in(tmp_path):
    """Without credentials, apitools' last resort opens a browser and waits on localhost:8080
    for ever (this very script prints "Your browser has been opened" and hangs without the
    module); with it, building the client fails at once saying how to provide credentials."""
    closed = f"127.0.0.1:{free_port()}"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("GOOGLE_APPLICATION_CREDENTIALS", "BIGQUERY_EMULATOR_HOST")
    }
    env.update(
        HOME=str(tmp_path),
        CLOUDSDK_CONFIG=str(tmp_path / "gcloud"),
        GCE_METADATA_HOST=closed,
        GCE_METADATA_IP=closed,
        GCE_METADATA_ROOT=closed,
        PYTHONPATH=ROOT,
    )
    done = subprocess.run(
        [sys.executable, "-c", CHILD],
        env=env,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "browser" not in done.stdout + done.stderr
    assert "REFUSED no Google credentials found" in done.stdout, done.stderr[-2000:]
    assert "gcloud auth application-default login" in done.stdout


def _beam_clients():
    from apache_beam.io.gcp import bigquery as beam_bigquery
    from apache_beam.io.gcp import bigquery_tools

    gcp = bigquery_tools.gcp_bigquery.Client(project="p", credentials=AnonymousCredentials())
    read = beam_bigquery.bq_storage.BigQueryReadClient(credentials=AnonymousCredentials())
    return gcp._connection.API_BASE_URL, read._transport._host


def test_nothing_changes_while_the_variables_are_unset(monkeypatch):
    for name in (bigquery_endpoints.REST_VARIABLE, bigquery_endpoints.STORAGE_READ_VARIABLE):
        monkeypatch.delenv(name, raising=False)
    bigquery_endpoints.install()
    rest, storage_read = _beam_clients()
    assert rest == "https://bigquery.googleapis.com"
    assert storage_read.startswith("bigquerystorage.googleapis.com")


def test_the_variables_point_beams_clients_at_the_emulator(monkeypatch):
    from apache_beam.io.gcp import bigquery as beam_bigquery
    from apache_beam.io.gcp import bigquery_tools
    from apache_beam.options.pipeline_options import PipelineOptions

    monkeypatch.setenv(bigquery_endpoints.REST_VARIABLE, "127.0.0.1:9050")  # no scheme: http
    monkeypatch.setenv(bigquery_endpoints.STORAGE_READ_VARIABLE, "127.0.0.1:9060")
    bigquery_endpoints.install()
    apitools = bigquery_tools.BigQueryWrapper._bigquery_client(PipelineOptions())
    assert apitools._url == "http://127.0.0.1:9050/bigquery/v2/"
    gcp = bigquery_tools.gcp_bigquery.Client()
    assert gcp._connection.API_BASE_URL == "http://127.0.0.1:9050"
    assert isinstance(gcp._credentials, AnonymousCredentials)
    read = beam_bigquery.bq_storage.BigQueryReadClient()
    assert read._transport._host.startswith("127.0.0.1:9060")
