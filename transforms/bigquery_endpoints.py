"""Where Beam's Google clients connect, and a guarantee that none of them signs in interactively.

``install()`` is applied at launch (``pipelines.describe_images.run``) and on every worker: this
module holds a ``BeamPlugin``, which Dataflow imports at worker start-up, and ``run()`` names it
in ``--beam_plugins`` for the other portable runners' workers. Importing it installs. Each patch
reads the environment when a client is made, so nothing changes while the variables are unset:

- always: apitools' last resort when it finds no credentials — an interactive OAuth sign-in that
  opens a browser and waits on localhost:8080 for ever — raises ``NoCredentialsError`` instead;
- ``BIGQUERY_EMULATOR_HOST`` (``http://host:port``, as google-cloud-bigquery reads it): Beam's
  apitools BigQuery client (jobs, tables, datasets) and its google-cloud-bigquery client
  (streaming inserts) call it, anonymously;
- ``BIGQUERY_STORAGE_EMULATOR_HOST`` (``host:port`` of the Storage Read API, plain-text gRPC):
  Beam's ``--input_table`` reader calls it, anonymously;
- ``STORAGE_EMULATOR_HOST`` (google-cloud-storage's own variable): Beam's GCS client is made
  anonymous at once instead of looking for credentials for about 30 s first.
"""

from __future__ import annotations

import os
import threading

from apache_beam.utils.plugin import BeamPlugin

REST_VARIABLE = "BIGQUERY_EMULATOR_HOST"
STORAGE_READ_VARIABLE = "BIGQUERY_STORAGE_EMULATOR_HOST"
GCS_VARIABLE = "STORAGE_EMULATOR_HOST"
CREDENTIALS_HINT = (
    "provide Google credentials: run `gcloud auth application-default login`, or set "
    "GOOGLE_APPLICATION_CREDENTIALS to a service-account key file; on Dataflow the job uses "
    "its workers' service account (Workload Identity on GKE)"
)

_lock = threading.Lock()
_installed = False


class NoCredentialsError(RuntimeError):
    """Raised where apitools would have started an interactive sign-in."""


def rest_endpoint() -> str | None:
    """``BIGQUERY_EMULATOR_HOST`` as a URL without a trailing slash, or None."""
    value = os.environ.get(REST_VARIABLE, "").strip()
    if not value:
        return None
    return (value if "://" in value else f"http://{value}").rstrip("/")


def storage_read_endpoint() -> str | None:
    """``BIGQUERY_STORAGE_EMULATOR_HOST`` as ``host:port``, or None."""
    value = os.environ.get(STORAGE_READ_VARIABLE, "").strip()
    return value.split("://", 1)[-1].rstrip("/") or None


def emulated() -> bool:
    return bool(rest_endpoint())


def emulator_project() -> str:
    return os.environ.get("GOOGLE_CLOUD_PROJECT") or "emulator"


def install(project: str | None = None) -> None:
    """Apply the patches once per process; ``project`` (``--project``) becomes
    ``GOOGLE_CLOUD_PROJECT`` when that is unset, the only way it reaches Beam's inner
    google-cloud-bigquery client."""
    global _installed
    if project:
        os.environ.setdefault("GOOGLE_CLOUD_PROJECT", project)
    with _lock:
        if _installed:
            return
        _forbid_interactive_sign_in()
        _route_bigquery_rest()
        _route_storage_read()
        _route_gcs()
        _installed = True


def _forbid_interactive_sign_in() -> None:
    from apitools.base.py import credentials_lib, exceptions

    class _Refused(NoCredentialsError, exceptions.CredentialsError):
        pass

    def refuse(*_args, **_kwargs):
        raise _Refused(f"no Google credentials found: {CREDENTIALS_HINT}")

    # GetCredentials tries the environment, GCE/GAE metadata and ADC first; only this last
    # resort is interactive
    credentials_lib.CredentialsFromFile = refuse


def _route_bigquery_rest() -> None:
    import google.cloud.bigquery as gcp_bigquery
    from apache_beam.internal.http_client import get_new_http
    from apache_beam.io.gcp import bigquery_tools
    from apache_beam.io.gcp.internal.clients.bigquery import bigquery_v2_client

    original = bigquery_tools.BigQueryWrapper._bigquery_client

    def apitools_client(pipeline_options):
        url = rest_endpoint()
        if not url:
            return original(pipeline_options)
        return bigquery_v2_client.BigqueryV2(
            url=f"{url}/bigquery/v2/",
            http=get_new_http(),
            credentials=None,
            get_credentials=False,
            response_encoding="utf8",
        )

    class _GcpBigQuery:
        """google.cloud.bigquery as Beam's BigQueryWrapper sees it: its Client() is anonymous
        at the emulator when one is named."""

        def __getattr__(self, name):
            return getattr(gcp_bigquery, name)

        @staticmethod
        def Client(*args, **kwargs):  # the name Beam calls
            url = rest_endpoint()
            if url:
                from google.auth.credentials import AnonymousCredentials

                kwargs.setdefault("project", emulator_project())
                kwargs["credentials"] = AnonymousCredentials()
                kwargs["client_options"] = {"api_endpoint": url}
            return gcp_bigquery.Client(*args, **kwargs)

    bigquery_tools.BigQueryWrapper._bigquery_client = staticmethod(apitools_client)
    bigquery_tools.gcp_bigquery = _GcpBigQuery()


def _route_storage_read() -> None:
    from apache_beam.io.gcp import bigquery as beam_bigquery

    real = getattr(beam_bigquery, "bq_storage", None)
    if real is None:  # google-cloud-bigquery-storage not installed: Beam cannot read either
        return

    class _StorageRead:
        def __getattr__(self, name):
            return getattr(real, name)

        @staticmethod
        def BigQueryReadClient(*args, **kwargs):  # the name Beam calls
            host = storage_read_endpoint()
            if not host or args or kwargs:
                return real.BigQueryReadClient(*args, **kwargs)
            import grpc
            from google.auth.credentials import AnonymousCredentials
            from google.cloud.bigquery_storage_v1.services.big_query_read.transports import (
                BigQueryReadGrpcTransport,
            )

            transport = BigQueryReadGrpcTransport(
                host=host, channel=grpc.insecure_channel(host), credentials=AnonymousCredentials()
            )
            return real.BigQueryReadClient(transport=transport)

    beam_bigquery.bq_storage = _StorageRead()


def _route_gcs() -> None:
    from apache_beam.io.gcp import gcsio

    original = gcsio.create_storage_client

    def create_storage_client(pipeline_options, use_credentials=True):
        if os.environ.get(GCS_VARIABLE):
            use_credentials = False  # google-cloud-storage's anonymous client follows the variable
        return original(pipeline_options, use_credentials)

    gcsio.create_storage_client = create_storage_client


def install_for(options) -> None:
    """``install`` with the job's ``--project``, and this module in ``--beam_plugins`` so that
    every portable runner's workers import it at start-up (Dataflow finds the plugin itself)."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions, SetupOptions

    install(options.view_as(GoogleCloudOptions).project)
    setup = options.view_as(SetupOptions)
    setup.beam_plugins = sorted(set(setup.beam_plugins or []) | {__name__})


class BigQueryEndpoints(BeamPlugin):
    """Beam imports every BeamPlugin's module on its workers at start-up: that import installs."""


install()
