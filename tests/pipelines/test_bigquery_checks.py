"""Every BigQuery mistake stops the job at launch in one line that says what to fix, before any
row is read or any request is paid for (the API here counts requests: none may arrive), against
bqemulator and fake-gcs-server on loopback. The emulator has no IAM: ``BigQueryGapProxy.refuse``
answers 403 where a test needs a permission missing."""

import uuid

import pytest
from google.cloud import bigquery

from pipelines import describe_images as job
from schemas import rows as schema
from tests.support.bq import PROJECT
from tests.support.bq_proxy import BigQueryGapProxy
from tests.support.fake_api import RecordingApi
from tests.support.gcs import BatchSplittingProxy
from tests.support.net import free_port

pytestmark = [pytest.mark.emulator]


@pytest.fixture(scope="module")
def gap(bq_emulator):
    proxy = BigQueryGapProxy(bq_emulator.url)
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def gcs(fake_gcs):
    split = BatchSplittingProxy(fake_gcs.url)
    bucket = fake_gcs.client().create_bucket("ve-checks-" + uuid.uuid4().hex[:8]).name
    yield split, bucket
    split.stop()


@pytest.fixture(autouse=True)
def _pointed(gap, gcs, monkeypatch):
    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", gap.url)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs[0].url)
    monkeypatch.setenv("VE_BQ_KEY", "sk-test-bq")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "")
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT")
    yield
    gap.refuse.clear()


def fields_of(fields, change=None, drop=()):
    out = []
    for f in schema.to_bigquery(fields)["fields"]:
        if f["name"] in drop:
            continue
        kind = (change or {}).get(f["name"], f["type"])
        out.append(bigquery.SchemaField(f["name"], kind, mode=f["mode"]))
    return out


def refs_table(client, ds, image_type="STRING"):
    columns = [("image_id", "STRING"), ("image_uri", image_type), ("title", "STRING")]
    table = bigquery.Table(
        f"{PROJECT}.{ds}.refs", schema=[bigquery.SchemaField(n, t) for n, t in columns]
    )
    client.create_table(table)


def _case(name):
    """Each case: (setup(client, ds, gap, monkeypatch, tmp_path) -> flags, words of the line)."""
    return pytest.param(*CASES[name], id=name)


def out_flags(ds, temp="gs://{bucket}/tmp", table="d"):
    flags = ["--output_table", f"{PROJECT}:{ds}.{table}"]
    return flags + (["--temp_location", temp] if temp else [])


def existing(change=None, drop=(), extra=()):
    def setup(client, ds, gap, mp, tmp):
        cols = fields_of(schema.DESCRIPTION_FIELDS, change, drop) + list(extra)
        client.create_table(bigquery.Table(f"{PROJECT}.{ds}.d", schema=cols))
        return out_flags(ds)

    return setup


def refused(pattern, flags):
    def setup(client, ds, gap, mp, tmp):
        refs_table(client, ds)
        gap.refuse[pattern.format(ds=ds)] = (403, "accessDenied")
        return flags(ds)

    return setup


def no_java(client, ds, gap, mp, tmp):
    mp.setenv("PATH", str(tmp))
    mp.delenv("JAVA_HOME", raising=False)
    return out_flags(ds, temp=None) + ["--bigquery_method", "STORAGE_WRITE_API"]


def with_refs(flags, image_type="STRING"):
    def setup(client, ds, gap, mp, tmp):
        refs_table(client, ds, image_type)
        return flags(ds)

    return setup


CASES = {
    "file_loads_without_temp_location": (
        lambda c, ds, g, mp, tmp: out_flags(ds, temp=None),
        ["FILE_LOADS", "--temp_location", "gs:// folder (it is not set)", "STREAMING_INSERTS"],
    ),
    "file_loads_with_a_local_temp_location": (
        lambda c, ds, g, mp, tmp: out_flags(ds, temp=str(tmp)),
        ["--temp_location, which must be a gs:// folder"],
    ),
    "temp_location_not_writable": (
        lambda c, ds, g, mp, tmp: out_flags(ds, temp="gs://no-such-bucket-ve/tmp"),
        ["--temp_location gs://no-such-bucket-ve/tmp is not writable", "roles/storage"],
    ),
    "dataset_missing": (
        lambda c, ds, g, mp, tmp: out_flags("no_such_dataset"),
        ["no_such_dataset does not exist", "bq mk --dataset"],
    ),
    "dataset_not_readable": (
        refused(r"GET /bigquery/v2/projects/[^/]+/datasets/{ds}\?", out_flags),
        ["no access to BigQuery dataset", "roles/bigquery.dataEditor"],
    ),
    "column_of_the_wrong_type": (
        existing(change={"description": "INTEGER"}),
        ["column description of table", "is INTEGER", "the job writes STRING"],
    ),
    "column_missing": (existing(drop=("model",)), ["has no column model (STRING)", "bq update"]),
    "required_column_the_job_leaves_empty": (
        existing(extra=[bigquery.SchemaField("owner", "STRING", mode="REQUIRED")]),
        ["REQUIRED column(s) ['owner']"],
    ),
    "table_not_writable": (
        lambda c, ds, g, mp, tmp: (
            c.create_table(
                bigquery.Table(f"{PROJECT}.{ds}.d", schema=fields_of(schema.DESCRIPTION_FIELDS))
            ),
            g.refuse.update({r"testIamPermissions": (403, "accessDenied")}),
            out_flags(ds),
        )[-1],
        ["table", "may not be written", "roles/bigquery.dataEditor"],
    ),
    "input_table_missing": (
        lambda c, ds, g, mp, tmp: ["--input_table", f"{PROJECT}:{ds}.nothing"],
        ["--input_table", "nothing does not exist", "bq ls"],
    ),
    "input_table_not_readable": (
        refused(
            r"GET /bigquery/v2/projects/[^/]+/datasets/{ds}/tables/refs",
            lambda ds: ["--input_table", f"{PROJECT}:{ds}.refs"],
        ),
        ["may not be read", "roles/bigquery.dataViewer"],
    ),
    "input_reference_column_of_the_wrong_type": (
        with_refs(lambda ds: ["--input_table", f"{PROJECT}:{ds}.refs"], image_type="INTEGER"),
        ["--image_column 'image_uri' of --input_table is INTEGER, not STRING"],
    ),
    "prompt_column_not_in_the_input_table": (
        with_refs(
            lambda ds: ["--input_table", f"{PROJECT}:{ds}.refs", "--prompt_template", "{nope}"]
        ),
        ["the prompt uses column(s) ['nope']", "title"],
    ),
    "query_that_fails": (
        lambda c, ds, g, mp, tmp: ["--input_query", "SELEC 1", "--temp_location", "gs://b/t"],
        ["--input_query fails", "Syntax error", "bq query --dry_run"],
    ),
    "query_without_a_gs_temp_location": (
        with_refs(lambda ds: ["--input_query", f"SELECT * FROM `{PROJECT}.{ds}.refs`"]),
        ["--input_query exports the query's result in --temp_location"],
    ),
    "storage_write_api_without_java": (
        no_java,
        ["STORAGE_WRITE_API", "no Java runtime was found", "Java 11", "FILE_LOADS"],
    ),
    "skip_existing_table_not_written_by_the_job": (
        lambda c, ds, g, mp, tmp: (
            c.create_table(
                bigquery.Table(
                    f"{PROJECT}.{ds}.other", schema=[bigquery.SchemaField("image_id", "STRING")]
                )
            ),
            ["--skip_existing", f"{PROJECT}:{ds}.other", "--output", str(tmp / "out")],
        )[-1],
        ["--skip_existing", "has no column(s) ['image_uri', 'request_key']"],
    ),
}


@pytest.mark.parametrize(("setup", "words"), [_case(name) for name in CASES])
def test_each_bigquery_mistake_stops_the_job_at_launch_in_one_line(
    bq_emulator, gap, gcs, monkeypatch, tmp_path, setup, words
):
    client = bq_emulator.client()
    ds = "ve_" + uuid.uuid4().hex[:8]
    client.create_dataset(ds)
    flags = [f.replace("{bucket}", gcs[1]) for f in setup(client, ds, gap, monkeypatch, tmp_path)]
    if not any(f in flags for f in ("--input_table", "--input_query")):
        flags += ["--input", "examples/images.parquet"]
    if not any(f in flags for f in ("--output_table", "--output")):
        flags += ["--output", str(tmp_path / "out")]
    with RecordingApi() as api:
        with pytest.raises(SystemExit) as stopped:
            job.run(
                [
                    "--api_base",
                    api.base_url,
                    "--api_key_env",
                    "VE_BQ_KEY",
                    "--project",
                    PROJECT,
                    *flags,
                ]
            )
        assert api.endpoint.requests == 0  # nothing paid for
    line = str(stopped.value)
    assert line.startswith("describe_images: ") and "\n" not in line and len(line) < 600
    for word in words:
        assert word in line


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    """No emulator, no key file, no gcloud login, and a metadata server that is not there."""
    for name in (
        "BIGQUERY_EMULATOR_HOST",
        "BIGQUERY_STORAGE_EMULATOR_HOST",
        "GOOGLE_APPLICATION_CREDENTIALS",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    closed = f"127.0.0.1:{free_port()}"
    for name in ("GCE_METADATA_HOST", "GCE_METADATA_IP", "GCE_METADATA_ROOT"):
        monkeypatch.setenv(name, closed)


@pytest.mark.slow  # google-auth probes the absent metadata server for about 3 s each time
@pytest.mark.parametrize(
    "flags",
    [
        ["--input", "examples/images.parquet", "--output_table", f"{PROJECT}:ds.t"],
        ["--input_table", f"{PROJECT}:ds.refs", "--output", "unused"],
        ["--input_query", "SELECT 1", "--output", "unused", "--temp_location", "gs://b/t"],
        ["--input", "examples/images.parquet", "--output", "unused", "--skip_existing", "p:d.t"],
    ],
    ids=["output_table", "input_table", "input_query", "skip_existing_table"],
)
def test_no_credentials_stops_the_job_at_launch_saying_how_to_provide_them(no_credentials, flags):
    with RecordingApi() as api:
        with pytest.raises(SystemExit) as stopped:
            job.run(["--api_base", api.base_url, "--api_key_env", "VE_BQ_KEY", *flags])
        assert api.endpoint.requests == 0
    line = str(stopped.value)
    assert "\n" not in line and "no Google credentials found for BigQuery" in line
    for way in ("gcloud auth application-default login", "GOOGLE_APPLICATION_CREDENTIALS"):
        assert way in line
    assert "Workload Identity" in line and "BIGQUERY_EMULATOR_HOST" in line
