"""The whole job, as a user runs it: flags in, Parquet out, against the offline endpoint, a
remote-style endpoint with faults, a rate budget, several worker processes, and gs://."""

import hashlib
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import describe_images as job
from schemas import rows as schema
from tests.pipelines.conftest import read_output, write_input
from tests.support import images as timg
from tests.support.fake_api import RecordingApi


def test_examples_offline_as_in_the_readme(tmp_path, capsys):
    out = str(tmp_path / "out")
    job.run(["--input", "examples/images.parquet", "--output", out, "--api_base", "local"])
    descriptions = read_output(out, "descriptions")
    failures = read_output(out, "failures")
    assert descriptions.schema.equals(schema.DESCRIPTIONS_SCHEMA)
    assert failures.schema.equals(schema.FAILURES_SCHEMA)
    rows = {r["image_id"]: r for r in descriptions.to_pylist()}
    assert set(rows) == {"astronaut", "coffee", "chelsea", "rocket"}
    assert "451x300" in rows["chelsea"]["description"]
    assert rows["rocket"]["image_mime"] == "image/jpeg"
    assert all(
        r["model"] == "local-image-analyzer" and r["total_tokens"] > 0 for r in rows.values()
    )
    assert {(r["image_id"], r["stage"]) for r in failures.to_pylist()} == {
        ("missing-file", "read"),
        ("not-an-image", "decode"),
    }
    summary = capsys.readouterr().out
    assert "described   4" in summary and "failed      2" in summary and "images/s" in summary


def test_missing_key_stops_before_the_graph_is_built(tmp_path, monkeypatch):
    monkeypatch.delenv("AIMLAPI_API_KEY", raising=False)
    with pytest.raises(SystemExit) as info:
        job.run(["--input", "examples/images.parquet", "--output", str(tmp_path)])
    message = str(info.value)
    assert "AIMLAPI_API_KEY" in message and "--api_base local" in message
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize(
    "argv,words",
    [
        (["--output", "x"], "give exactly one input"),
        (["--input", "a.parquet", "--input_table", "p:d.t", "--output", "x"], "exactly one input"),
        (["--input_table", "nope", "--output", "x"], "must look like project:dataset.table"),
        (["--input", "examples/images.parquet"], "--output is required"),
        (["--input", "examples/nothing-*.parquet", "--output", "x"], "matches no file"),
        (["--input", "examples/rocket.jpg", "--output", "x"], "not readable Parquet"),
        (
            ["--input", "examples/images.parquet", "--output", "x", "--image_column", "url"],
            "'url' is not in the input",
        ),
        (
            ["--input", "examples/images.parquet", "--output", "x", "--id_column", "sku"],
            "'sku' is not in the input",
        ),
    ],
)
def test_bad_flags_say_what_to_fix(argv, words):
    with pytest.raises(SystemExit) as info:
        job.run(argv + ["--api_base", "local"])
    assert words in str(info.value)


def test_no_id_column_makes_the_reference_the_id(tmp_path):
    path = tmp_path / "refs.parquet"
    pq.write_table(pa.table({"url": ["examples/coffee.png", None]}), path)
    out = str(tmp_path / "out")
    job.run(["--input", str(path), "--output", out, "--api_base", "local", "--image_column", "url"])
    assert read_output(out, "descriptions").column("image_id").to_pylist() == [
        "examples/coffee.png"
    ]
    failure = read_output(out, "failures").to_pylist()[0]
    assert failure["image_id"] is None and failure["error_type"] == "empty_reference"


@pytest.mark.slow
def test_request_budget_is_held_without_429s(tmp_path, run_job):
    """--requests_per_minute 240 against an endpoint that allows 300/min (5/s): no 429s, and the
    endpoint never sees more than the budget."""
    source, digests = write_input(tmp_path, 36)
    out = str(tmp_path / "out")
    with RecordingApi(rate_limit_per_s=5) as api:
        run_job(api, source, out, "--requests_per_minute", 240, "--max_concurrency", 16)
    assert api.rate_limited == 0
    assert read_output(out, "descriptions").num_rows == 36
    span = api.arrivals[-1] - api.arrivals[0]
    rate_per_min = (len(api.arrivals) - 1) / span * 60
    assert rate_per_min <= 240 * 1.05


@pytest.mark.slow
def test_two_worker_processes_one_session_each(tmp_path, run_job):
    source, digests = write_input(tmp_path, 120, files=4)
    out = str(tmp_path / "out")
    with RecordingApi(latency=0.02) as api:
        result = run_job(
            api,
            source,
            out,
            "--max_concurrency",
            4,
            "--runner",
            "DirectRunner",
            "--direct_num_workers",
            2,
            "--direct_running_mode",
            "multi_processing",
        )
    rows = read_output(out, "descriptions").to_pylist()
    assert sorted(r["image_id"] for r in rows) == sorted(digests)
    assert all(r["description"] == "sha256:" + digests[r["image_id"]] for r in rows)
    sessions = sum(
        c.committed
        for c in result.metrics().query()["counters"]
        if c.key.metric.name == "sessions_created"
    )
    assert sessions == 2  # one per worker process, however many DoFn instances each had
    # a handful of keep-alive connections per session, not one per request
    assert api.endpoint.requests == 120
    assert api.endpoint.connections <= sessions * 4
    assert api.endpoint.requests >= 10 * api.endpoint.connections
    assert api.endpoint.max_in_flight <= sessions * 4


@pytest.mark.emulator
def test_gcs_input_and_images(tmp_path, fake_gcs):
    client = fake_gcs.client()
    bucket = client.create_bucket("ve-job")
    digests = {}
    for i in range(5):
        data = timg.jpeg(seed=i)
        bucket.blob(f"photos/{i}.jpg").upload_from_string(data)
        digests[f"p{i}"] = hashlib.sha256(data).hexdigest()
    table = pa.table(
        {
            "image_id": list(digests) + ["absent"],
            "image_uri": [f"gs://ve-job/photos/{i}.jpg" for i in range(5)]
            + ["gs://ve-job/photos/absent.jpg"],
        }
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    bucket.blob("refs/part-0.parquet").upload_from_string(sink.getvalue().to_pybytes())
    out = str(tmp_path / "out")
    job.run(
        [
            "--input",
            "gs://ve-job/refs/*.parquet",
            "--output",
            out,
            "--api_base",
            "local",
            "--no_auth",
        ]
    )
    rows = read_output(out, "descriptions").to_pylist()
    assert {r["image_id"]: r["image_sha256"] for r in rows} == digests
    failures = read_output(out, "failures").to_pylist()
    assert [(f["image_id"], f["error_type"], f["http_status"]) for f in failures] == [
        ("absent", "not_found", 404)
    ]


def test_help_lists_every_flag_with_its_default(capsys):
    with pytest.raises(SystemExit) as info:
        job.run(["--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in [
        "--input",
        "--output",
        "--image_column",
        "--id_column",
        "--model",
        "--prompt",
        "--system_prompt",
        "--max_tokens",
        "--detail",
        "--api_base",
        "--api_key_env",
        "--max_concurrency",
        "--request_timeout",
        "--max_retries",
        "--requests_per_minute",
        "--max_image_side",
    ]:
        assert flag in text
    assert text.count("Default:") >= 18


@pytest.mark.emulator
def test_all_gcs_job_touches_no_local_file(fake_gcs, monkeypatch):
    """--input gs://, images in gs://, --output gs://: the whole job against fake-gcs-server,
    through the proxy that carries out batch requests for it (see tests/support/gcs.py)."""
    from tests.support.gcs import BatchSplittingProxy

    client = fake_gcs.client()
    bucket = client.create_bucket("ve-all-gcs")
    digests = {}
    for i in range(4):
        data = timg.png(seed=40 + i)
        bucket.blob(f"img/{i}.png").upload_from_string(data)
        digests[f"g{i}"] = hashlib.sha256(data).hexdigest()
    table = pa.table(
        {
            "image_id": [*digests, "gone"],
            "image_uri": [f"gs://ve-all-gcs/img/{i}.png" for i in range(4)]
            + ["gs://ve-all-gcs/img/gone.png"],
        }
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    bucket.blob("refs/part-0.parquet").upload_from_string(sink.getvalue().to_pybytes())
    proxy = BatchSplittingProxy(fake_gcs.url)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
    try:
        job.run(
            [
                "--input",
                "gs://ve-all-gcs/refs/*.parquet",
                "--output",
                "gs://ve-all-gcs/out",
                "--api_base",
                "local",
            ]
        )
    finally:
        proxy.stop()

    def read(name):
        blobs = list(client.list_blobs("ve-all-gcs", prefix=f"out/{name}-"))
        assert blobs, f"no gs://ve-all-gcs/out/{name}-*"
        return pa.concat_tables(
            [pq.read_table(pa.BufferReader(b.download_as_bytes())) for b in blobs]
        ).to_pylist()

    assert {r["image_id"]: r["image_sha256"] for r in read("descriptions")} == digests
    assert [(f["image_id"], f["error_type"]) for f in read("failures")] == [("gone", "not_found")]
    others = [
        b.name
        for b in client.list_blobs("ve-all-gcs", prefix="out/")
        if not b.name.endswith(".parquet")
    ]
    assert others == []  # the sink's temp files and the preflight probe are gone
