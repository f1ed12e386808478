"""BigQuery output with ``--bigquery_method STREAMING_INSERTS`` against bqemulator on loopback,
pointed at it by ``BIGQUERY_EMULATOR_HOST`` alone: the job creates both tables from the one
schema declaration (partitioned and clustered: tables.insert keeps both, unlike load jobs),
writes every row, and rows BigQuery refuses come back as failure rows. The default FILE_LOADS
path and BigQuery input: test_bigquery.py."""

import uuid

import pyarrow.parquet as pq
import pytest
from google.cloud import bigquery

from pipelines import describe_images as job
from schemas import rows as schema
from tests.pipelines.conftest import read_output
from tests.support.bq import PROJECT
from tests.support.bq_proxy import BigQueryGapProxy

pytestmark = [pytest.mark.emulator]


@pytest.fixture(scope="module")
def gap(bq_emulator):
    proxy = BigQueryGapProxy(bq_emulator.url)
    yield proxy
    proxy.stop()


@pytest.fixture(autouse=True)
def _pointed(gap, monkeypatch):
    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", gap.url)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "")
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT")


@pytest.fixture
def dataset(bq_emulator):
    client = bq_emulator.client()
    name = "ve_" + uuid.uuid4().hex[:8]
    client.create_dataset(name)
    return client, name


def run_to_bigquery(bq_emulator, out, table, *flags, api_base="local"):
    return job.run(
        [
            "--input",
            "examples/images.parquet",
            "--api_base",
            api_base,
            "--output_table",
            table,
            "--bigquery_method",
            "STREAMING_INSERTS",
            "--project",
            PROJECT,
            *flags,
        ]
        + (["--output", out] if out else [])
    )


def test_job_writes_both_tables_created_from_the_schema(bq_emulator, dataset, tmp_path):
    client, ds = dataset
    table = f"{PROJECT}:{ds}.descriptions"
    run_to_bigquery(bq_emulator, None, table)
    described = client.get_table(f"{PROJECT}.{ds}.descriptions")
    failed = client.get_table(f"{PROJECT}.{ds}.descriptions_failures")
    for got, fields in ((described, schema.DESCRIPTION_FIELDS), (failed, schema.FAILURE_FIELDS)):
        expected = schema.to_bigquery(fields)["fields"]
        assert [(f.name, f.field_type, f.mode) for f in got.schema] == [
            (f["name"], f["type"], f["mode"]) for f in expected
        ]
    assert described.time_partitioning.field == "processed_at"
    assert described.time_partitioning.type_ == "DAY"
    assert described.clustering_fields == ["model"]
    assert failed.time_partitioning.field == "failed_at" and failed.clustering_fields == ["stage"]
    rows = {
        r["image_id"]: r
        for r in client.query(f"SELECT * FROM `{PROJECT}.{ds}.descriptions`").result(timeout=30)
    }
    assert set(rows) == {"astronaut", "coffee", "chelsea", "rocket"}
    assert "451x300" in rows["chelsea"]["description"]
    assert rows["chelsea"]["processed_at"].tzinfo is not None
    assert rows["rocket"]["total_tokens"] > 0
    failures = {
        r["image_id"]: r["stage"]
        for r in client.query(
            f"SELECT image_id, stage FROM `{PROJECT}.{ds}.descriptions_failures`"
        ).result(timeout=30)
    }
    assert failures == {"missing-file": "read", "not-an-image": "decode"}


def test_rows_bigquery_refuses_become_failure_rows(bq_emulator, dataset, tmp_path):
    """A table that already exists with a conflicting column type (the launch check that would
    stop the job is skipped: the table changed after launch) refuses every row: each comes back
    as a failure row (stage write) in Parquet and in the failures table, none is lost."""
    client, ds = dataset
    fields = schema.to_bigquery(schema.DESCRIPTION_FIELDS)["fields"]
    conflicting = [
        bigquery.SchemaField(
            f["name"], "INTEGER" if f["name"] == "description" else f["type"], mode="NULLABLE"
        )
        for f in fields
    ]
    client.create_table(bigquery.Table(f"{PROJECT}.{ds}.described", schema=conflicting))
    out = str(tmp_path / "out")
    run_to_bigquery(bq_emulator, out, f"{PROJECT}:{ds}.described", "--skip_preflight")
    failures = read_output(out, "failures").to_pylist()
    refused = [f for f in failures if f["stage"] == "write"]
    assert sorted(f["image_id"] for f in refused) == ["astronaut", "chelsea", "coffee", "rocket"]
    assert all(
        f["error_type"] == "bigquery_rejected" and "BigQuery refused" in f["error"] for f in refused
    )
    assert len(failures) == 6  # the 2 bad inputs + the 4 refused: every input row once
    in_table = [
        r["image_id"]
        for r in client.query(
            f"SELECT image_id FROM `{PROJECT}.{ds}.described_failures` WHERE stage = 'write'"
        ).result(timeout=30)
    ]
    assert sorted(in_table) == ["astronaut", "chelsea", "coffee", "rocket"]


def test_job_parquet_loads_into_a_table_made_from_the_schema(bq_emulator, dataset, tmp_path):
    """The job's own Parquet output loads through the real client into a table created from
    the BigQuery form of the schema: the two forms agree on real data, not just on paper."""
    client, ds = dataset
    out = str(tmp_path / "out")
    job.run(["--input", "examples/images.parquet", "--output", out, "--api_base", "local"])
    for name, fields in (
        ("descriptions", schema.DESCRIPTION_FIELDS),
        ("failures", schema.FAILURE_FIELDS),
    ):
        table = bigquery.Table(
            f"{PROJECT}.{ds}.{name}",
            schema=[
                bigquery.SchemaField(f["name"], f["type"], mode=f["mode"])
                for f in schema.to_bigquery(fields)["fields"]
            ],
        )
        client.create_table(table)
        path = next((tmp_path / "out").glob(f"{name}-*.parquet"))
        with open(path, "rb") as f:
            client.load_table_from_file(
                f,
                table,
                job_config=bigquery.LoadJobConfig(source_format=bigquery.SourceFormat.PARQUET),
            ).result(timeout=60)
        count = next(
            iter(
                client.query(f"SELECT COUNT(*) AS n FROM `{PROJECT}.{ds}.{name}`").result(
                    timeout=30
                )
            )
        )["n"]
        assert count == pq.read_table(path).num_rows


def test_table_flags_are_checked(tmp_path):
    with pytest.raises(SystemExit, match="must look like project:dataset.table"):
        job.run(
            [
                "--input",
                "examples/images.parquet",
                "--api_base",
                "local",
                "--output_table",
                "not a table",
            ]
        )


def test_structured_columns_are_typed_in_the_table(bq_emulator, dataset, capsys):
    """--output_schema's fields become typed columns of the created table (ARRAY as REPEATED),
    filled from the offline endpoint's structured answers."""
    client, ds = dataset
    table = f"{PROJECT}:{ds}.structured"
    answer = "orientation STRING, width INT64, brightness FLOAT64, colours ARRAY<STRING>"
    run_to_bigquery(bq_emulator, None, table, "--output_schema", answer)
    got = client.get_table(f"{PROJECT}.{ds}.structured")
    columns = {f.name: (f.field_type, f.mode) for f in got.schema}
    assert columns["orientation"] == ("STRING", "NULLABLE")
    assert columns["width"] == ("INTEGER", "NULLABLE")
    assert columns["brightness"] == ("FLOAT", "NULLABLE")
    assert columns["colours"] == ("STRING", "REPEATED")
    rows = {
        r["image_id"]: r
        for r in client.query(f"SELECT * FROM `{PROJECT}.{ds}.structured`").result(timeout=30)
    }
    assert rows["chelsea"]["width"] == 451 and rows["chelsea"]["orientation"] == "landscape"
    assert isinstance(rows["chelsea"]["brightness"], float)
    assert rows["coffee"]["colours"] and all(isinstance(c, str) for c in rows["coffee"]["colours"])
