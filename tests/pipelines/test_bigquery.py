"""BigQuery the way users run it, from the command line, pointed at emulators by variables alone
(``BIGQUERY_EMULATOR_HOST``, ``BIGQUERY_STORAGE_EMULATOR_HOST``, ``STORAGE_EMULATOR_HOST``):
bqemulator and fake-gcs-server on loopback, sharing one folder, so Beam's own FILE_LOADS path
(staged files on gs://, then load jobs), its Storage Read API reader (``--input_table``) and its
query-and-export reader (``--input_query``) all run unchanged. Where the emulator differs from
BigQuery the test-side ``BigQueryGapProxy`` fills in (see tests/support/bq_proxy.py); the job
itself is not told it talks to an emulator. Launch checks: test_bigquery_checks.py.
"""

import json
import uuid

import pyarrow.parquet as pq
import pytest
from google.cloud import bigquery

from pipelines import describe_images as job
from pipelines import review
from schemas import rows as schema
from tests.pipelines.conftest import read_output
from tests.pipelines.test_review import Page
from tests.support.bq import PROJECT, Emulators
from tests.support.fake_api import RecordingApi

pytestmark = [pytest.mark.emulator]

IMAGES = ["astronaut", "chelsea", "coffee", "rocket"]
BAD = {"missing-file": "read", "not-an-image": "decode"}


@pytest.fixture(scope="module")
def emulators():
    started = Emulators().start()
    yield started
    started.stop()


@pytest.fixture(autouse=True)
def _pointed(emulators, monkeypatch):
    emulators.point(monkeypatch)
    monkeypatch.setenv("VE_BQ_KEY", "sk-test-bq")
    # --project becomes GOOGLE_CLOUD_PROJECT when unset: keep it from leaking into other tests
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "")
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT")


def new_dataset(emulators) -> str:
    name = "ve_" + uuid.uuid4().hex[:8]
    emulators.bigquery().create_dataset(name)
    return name


def new_bucket(emulators) -> str:
    return emulators.storage().create_bucket("ve-tmp-" + uuid.uuid4().hex[:8]).name


def cli(*flags):
    return job.run(["--project", PROJECT, *[str(f) for f in flags]])


def query(emulators, sql):
    return [dict(r.items()) for r in emulators.bigquery().query(sql).result(timeout=30)]


def objects(emulators, bucket):
    return [b.name for b in emulators.storage().list_blobs(bucket)]


@pytest.fixture(scope="module")
def loaded(emulators):
    """One default (FILE_LOADS) run from examples/images.parquet into a fresh dataset."""
    with pytest.MonkeyPatch.context() as mp:
        emulators.point(mp)
        ds, bucket = new_dataset(emulators), new_bucket(emulators)
        start = len(emulators.gap.jobs)
        table = f"{PROJECT}:{ds}.descriptions"
        cli(
            "--input",
            "examples/images.parquet",
            "--api_base",
            "local",
            "--output_table",
            table,
            "--temp_location",
            f"gs://{bucket}/tmp",
        )
        yield {"ds": ds, "table": table, "bucket": bucket, "jobs": emulators.gap.jobs[start:]}


@pytest.mark.slow
def test_file_loads_write_every_row_once_into_tables_made_from_the_schema(emulators, loaded):
    ds, client = loaded["ds"], emulators.bigquery()
    for name, fields in (("descriptions", schema.DESCRIPTION_FIELDS), ("failures", None)):
        got = client.get_table(f"{PROJECT}.{ds}.{name if fields else 'descriptions_failures'}")
        expected = schema.to_bigquery(fields or schema.FAILURE_FIELDS)["fields"]
        assert [(f.name, f.field_type, f.mode) for f in got.schema] == [
            (f["name"], f["type"], f["mode"]) for f in expected
        ]
    rows = query(emulators, f"SELECT * FROM `{PROJECT}.{ds}.descriptions`")
    assert sorted(r["image_id"] for r in rows) == IMAGES  # each once
    chelsea = next(r for r in rows if r["image_id"] == "chelsea")
    assert "451x300" in chelsea["description"] and chelsea["processed_at"].tzinfo is not None
    failures = query(
        emulators, f"SELECT image_id, stage FROM `{PROJECT}.{ds}.descriptions_failures`"
    )
    assert {r["image_id"]: r["stage"] for r in failures} == BAD and len(failures) == 2


@pytest.mark.slow
def test_load_jobs_ask_for_day_partitions_and_clustering(loaded):
    """bqemulator keeps neither, so the load job requests themselves are checked."""
    loads = {
        j["configuration"]["load"]["destinationTable"]["tableId"]: j["configuration"]["load"]
        for j in loaded["jobs"]
        if "load" in j.get("configuration", {})
    }
    assert set(loads) == {"descriptions", "descriptions_failures"}
    asked = loads["descriptions"]
    assert asked["timePartitioning"] == {"type": "DAY", "field": "processed_at"}
    assert asked["clustering"] == {"fields": ["model"]}
    assert asked["createDisposition"] == "CREATE_IF_NEEDED"
    assert asked["writeDisposition"] == "WRITE_APPEND"
    failed = loads["descriptions_failures"]
    assert failed["timePartitioning"]["field"] == "failed_at"
    assert failed["clustering"] == {"fields": ["stage"]}


@pytest.mark.slow
def test_staged_load_files_are_deleted_once_loaded(emulators, loaded):
    assert objects(emulators, loaded["bucket"]) == []
    sources = [
        uri
        for j in loaded["jobs"]
        for uri in j.get("configuration", {}).get("load", {}).get("sourceUris", [])
    ]
    assert sources and all(f"gs://{loaded['bucket']}/tmp/bq_load/" in u for u in sources)


@pytest.mark.slow
def test_a_rerun_with_skip_existing_reads_the_table_and_sends_nothing_again(emulators, loaded):
    """The launch checks pass on the tables load jobs made (their one probe request is the
    only request), and no row already there is asked for or added again."""
    table, ds = loaded["table"], loaded["ds"]
    with RecordingApi() as api:
        cli(
            "--input",
            "examples/images.parquet",
            "--api_base",
            api.base_url,
            "--api_key_env",
            "VE_BQ_KEY",
            "--output_table",
            table,
            "--skip_existing",
            table,
            "--temp_location",
            f"gs://{loaded['bucket']}/tmp",
        )
        assert api.endpoint.requests == 1 and api.bodies[0]["max_tokens"] == 1  # the probe
    n = query(emulators, f"SELECT COUNT(*) AS n FROM `{PROJECT}.{ds}.descriptions`")[0]["n"]
    assert n == 4


@pytest.mark.slow
def test_the_review_page_reads_the_tables_load_jobs_made(emulators, loaded, tmp_path):
    ds = loaded["ds"]
    # a --skip_existing rerun adds its failures again (failures are retried)
    failed = query(emulators, f"SELECT COUNT(*) AS n FROM `{PROJECT}.{ds}.descriptions_failures`")
    target = tmp_path / "review.html"
    review.run(["--output_table", loaded["table"], "--html", str(target), "--sample", "4"])
    page = target.read_text()
    parsed = Page(page)
    assert parsed.count("card") == 4 and parsed.count("failure-group") == 2
    assert "data-total='described'><span class='value'>4<" in page
    assert f"data-total='failed'><span class='value'>{failed[0]['n']}<" in page
    assert all(name in page for name in [*IMAGES, *BAD])


@pytest.mark.slow
def test_a_load_bigquery_refuses_stops_the_job_and_keeps_its_rows(emulators, tmp_path):
    """A table changed after launch (here: made with a conflicting column, the launch checks
    skipped) refuses the whole load. The job stops with one line saying so, and keeps the staged
    files with every refused row: `bq load` takes them once the table is fixed."""
    ds, bucket = new_dataset(emulators), new_bucket(emulators)
    fields = schema.to_bigquery(schema.DESCRIPTION_FIELDS)["fields"]
    conflicting = [
        bigquery.SchemaField(f["name"], "INTEGER" if f["name"] == "description" else f["type"])
        for f in fields
    ]
    emulators.bigquery().create_table(bigquery.Table(f"{PROJECT}.{ds}.d", schema=conflicting))
    with pytest.raises(SystemExit) as stopped:
        cli(
            "--input",
            "examples/images.parquet",
            "--api_base",
            "local",
            "--output_table",
            f"{PROJECT}:{ds}.d",
            "--temp_location",
            f"gs://{bucket}/tmp",
            "--skip_preflight",
        )
    line = str(stopped.value)
    assert "\n" not in line and line.startswith("describe_images: vision-enrich BigQuery load")
    assert "none of its rows were added" in line
    staged = [o for o in objects(emulators, bucket) if f"{PROJECT}.{ds}.d/" in o]
    assert staged, "the refused rows' staged files were deleted"
    kept = [
        json.loads(line)
        for name in staged
        for line in emulators.storage().bucket(bucket).blob(name).download_as_text().splitlines()
    ]
    assert sorted(r["image_id"] for r in kept) == IMAGES
    assert query(emulators, f"SELECT COUNT(*) AS n FROM `{PROJECT}.{ds}.d`")[0]["n"] == 0


@pytest.fixture(scope="module")
def source(emulators):
    """A dataset with the references table: the example rows, a caption for the prompt."""
    with pytest.MonkeyPatch.context() as mp:
        emulators.point(mp)
        ds = new_dataset(emulators)
        client = emulators.bigquery()
        table = bigquery.Table(
            f"{PROJECT}.{ds}.refs",
            schema=[
                bigquery.SchemaField("image_id", "STRING"),
                bigquery.SchemaField("image_uri", "STRING"),
                bigquery.SchemaField("caption", "STRING"),
                bigquery.SchemaField("rank", "INTEGER"),
            ],
        )
        client.create_table(table)
        rows = pq.read_table("examples/images.parquet").to_pylist()
        for i, row in enumerate(rows):
            row["caption"], row["rank"] = f"caption of {row['image_id']}", i
        assert client.insert_rows_json(table, rows) == []
        yield {"ds": ds, "table": f"{PROJECT}:{ds}.refs"}


@pytest.mark.slow
@pytest.mark.parametrize("how", ["table", "query"])
def test_references_come_from_bigquery_with_the_columns_a_prompt_needs(
    emulators, source, tmp_path, how
):
    """--input_table (Storage Read API) and --input_query (standard SQL, exported through
    gs://) feed the same rows and the value columns a prompt template names; the source
    dataset outlives Beam's clean-up, and the query's temporary dataset and export do not."""
    ds, bucket = source["ds"], new_bucket(emulators)
    if how == "table":
        flags = ["--input_table", source["table"], "--prompt_template", "{caption} #{rank}"]
    else:
        sql = (
            "SELECT image_id, image_uri, CONCAT('asked about ', caption) AS hint, rank "
            f"FROM `{PROJECT}.{ds}.refs` WHERE rank >= 0"
        )
        flags = ["--input_query", sql, "--prompt_template", "{hint} #{rank}"]
    out = tmp_path / "out"
    with RecordingApi() as api:
        cli(
            *flags,
            "--api_base",
            api.base_url,
            "--api_key_env",
            "VE_BQ_KEY",
            "--output",
            out,
            "--temp_location",
            f"gs://{bucket}/tmp",
            "--skip_preflight",
        )
        prompts = sorted(
            part["text"]
            for body in api.bodies
            for part in body["messages"][-1]["content"]
            if part["type"] == "text"
        )
    said = "caption of" if how == "table" else "asked about caption of"
    rank = {
        r["image_id"]: n for n, r in enumerate(pq.read_table("examples/images.parquet").to_pylist())
    }
    assert prompts == sorted(f"{said} {i} #{rank[i]}" for i in IMAGES)
    assert sorted(read_output(str(out), "descriptions").column("image_id").to_pylist()) == IMAGES
    failures = read_output(str(out), "failures").to_pylist()
    assert {f["image_id"]: f["stage"] for f in failures} == BAD
    client = emulators.bigquery()
    assert client.get_table(f"{PROJECT}.{ds}.refs").num_rows == 6  # the source survived
    left = [d.dataset_id for d in client.list_datasets()]
    assert ds in left and not [d for d in left if d.startswith("beam_temp_dataset_")]
    assert objects(emulators, bucket) == []  # the query's export was removed


@pytest.mark.slow
def test_worker_processes_are_pointed_at_the_emulators_too(emulators, source):
    """Two SDK worker processes of their own read the table and write the load files: the
    endpoints are installed there (--beam_plugins, and the BigQuery transforms' own import),
    not only in the launching process."""
    ds, bucket = new_dataset(emulators), new_bucket(emulators)
    cli(
        "--input_table",
        source["table"],
        "--api_base",
        "local",
        "--output_table",
        f"{PROJECT}:{ds}.d",
        "--temp_location",
        f"gs://{bucket}/tmp",
        "--direct_running_mode",
        "multi_processing",
        "--direct_num_workers",
        "2",
    )
    rows = query(emulators, f"SELECT image_id FROM `{PROJECT}.{ds}.d`")
    assert sorted(r["image_id"] for r in rows) == IMAGES
    assert objects(emulators, bucket) == []
