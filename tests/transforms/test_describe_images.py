"""DescribeImages: the DoFn called directly (setup/process/finish_bundle/teardown) against a
real loopback server, and the composite under TestPipeline with both outputs and counters."""

import hashlib

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP

from schemas import rows as schema
from tests.support import images as timg
from tests.support.fake_api import FaultPlan, RecordingApi
from transforms import describe_images as di
from transforms.core.api.retry import RetryPolicy
from transforms.core.describe_config import DESCRIPTIONS, FAILURES, NAMESPACE, DescribeConfig


def config(api, **kw):
    kw.setdefault("retry", RetryPolicy(max_retries=3, backoff_base=0.01, backoff_max=0.05))
    kw.setdefault("request_timeout", 5.0)
    return DescribeConfig(api_base=api.base_url, api_key_env="VE_TEST_KEY", **kw)


def make_images(tmp_path, n, start=0):
    refs, digests = [], {}
    for i in range(start, start + n):
        data = timg.png(seed=i, size=(32 + i % 7, 24 + i % 5))
        path = tmp_path / f"img{i:04d}.png"
        path.write_bytes(data)
        refs.append({"image_id": f"id-{i}", "image_uri": str(path)})
        digests[f"id-{i}"] = hashlib.sha256(data).hexdigest()
    return refs, digests


def run_fn(fn, batches):
    """Drive the DoFn as a runner would; returns (descriptions, failures)."""
    out = {DESCRIPTIONS: [], FAILURES: []}

    def collect(items):
        for item in items or ():
            if isinstance(item, beam.pvalue.TaggedOutput):
                out[item.tag].append(item.value.value)
            else:
                out[DESCRIPTIONS].append(item.value)

    fn.setup()
    try:
        fn.start_bundle()
        for batch in batches:
            collect(fn.process(batch, window=GlobalWindow(), timestamp=MIN_TIMESTAMP))
        collect(fn.finish_bundle())
    finally:
        fn.teardown()
    return out[DESCRIPTIONS], out[FAILURES]


def test_dofn_setup_process_teardown(tmp_path, monkeypatch):
    monkeypatch.setenv("VE_TEST_KEY", "sk-dofn-key")
    refs, digests = make_images(tmp_path, 20)
    bad = [
        {"image_id": "none", "image_uri": None},
        {"image_id": "gone", "image_uri": str(tmp_path / "gone.png")},
    ]
    with RecordingApi(latency=0.05) as api:
        fn = di.DescribeImagesFn(config(api, max_concurrency=4))
        described, failed = run_fn(fn, [refs[:10] + bad[:1], refs[10:] + bad[1:]])
        assert not di.worker_held(fn.config)  # teardown released the session and threads
    assert sorted(r["image_id"] for r in described) == sorted(digests)
    for row in described:
        schema.check_row(schema.DESCRIPTION_FIELDS, row)
        assert row["description"] == "sha256:" + digests[row["image_id"]]  # its own image
        assert row["image_sha256"] == digests[row["image_id"]]
        assert row["model"] == "test-model-2024" and row["requested_model"] == "gpt-4o"
    assert {(r["image_id"], r["stage"], r["error_type"]) for r in failed} == {
        ("none", "read", "empty_reference"),
        ("gone", "read", "not_found"),
    }
    for row in failed:
        schema.check_row(schema.FAILURE_FIELDS, row)
    assert api.schema_errors == [] and api.auth_headers == {"Bearer sk-dofn-key"}
    assert api.endpoint.max_in_flight <= 4
    assert api.endpoint.connections <= 4  # one pooled session, connections reused


def test_dofn_worker_is_shared_by_instances_in_a_process(tmp_path, monkeypatch):
    monkeypatch.setenv("VE_TEST_KEY", "k")
    with RecordingApi() as api:
        cfg = config(api)
        a, b = di.DescribeImagesFn(cfg), di.DescribeImagesFn(cfg)
        a.setup()
        b.setup()
        assert a.worker is b.worker
        a.teardown()
        assert di.worker_held(cfg)
        b.teardown()
        assert not di.worker_held(cfg)


def test_batches_overlap_and_concurrency_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setenv("VE_TEST_KEY", "k")
    refs, _ = make_images(tmp_path, 48)
    with RecordingApi(latency=0.1) as api:
        fn = di.DescribeImagesFn(config(api, max_concurrency=8))
        described, failed = run_fn(fn, [refs[i : i + 6] for i in range(0, 48, 6)])
    assert len(described) == 48 and failed == []
    # batches of 6 with 8 slots: only overlapping batches can fill all 8 slots
    assert api.endpoint.max_in_flight == 8


def test_composite_under_test_pipeline(tmp_path, monkeypatch):
    monkeypatch.setenv("VE_TEST_KEY", "sk-pipeline")
    refs, digests = make_images(tmp_path, 30)
    (tmp_path / "notes.txt").write_text("not an image")
    bad = [
        {"image_id": "blank", "image_uri": "  "},
        {"image_id": "ftp", "image_uri": "ftp://example.com/a.png"},
        {"image_id": "text", "image_uri": str(tmp_path / "notes.txt")},
    ]
    plan = FaultPlan(script=["503", None, "429_retry_after", None, "reset"], retry_after=0.2)
    with RecordingApi(plan=plan) as api:
        p = TestPipeline(options=PipelineOptions(["--runner=FnApiRunner"]))
        outputs = (
            p
            | beam.Create(refs + bad)
            | di.DescribeImages(config(api, max_concurrency=4, batch_size=8))
        )
        assert_that(
            outputs[DESCRIPTIONS]
            | "Answers" >> beam.Map(lambda r: (r["image_id"], r["description"])),
            equal_to([(k, "sha256:" + d) for k, d in digests.items()]),
            label="CheckDescriptions",
        )
        assert_that(
            outputs[FAILURES]
            | "Kinds" >> beam.Map(lambda r: (r["image_id"], r["stage"], r["error_type"])),
            equal_to(
                [
                    ("blank", "read", "empty_reference"),
                    ("ftp", "read", "unsupported_scheme"),
                    ("text", "decode", "not_an_image"),
                ]
            ),
            label="CheckFailures",
        )
        result = p.run()
        result.wait_until_finish()
    counters = {
        c.key.metric.name: c.committed
        for c in result.metrics().query()["counters"]
        if c.key.metric.namespace == NAMESPACE
    }
    assert counters["images_described"] == 30 and counters["images_failed"] == 3
    assert counters["requests"] == 33 and counters["retries"] == 3
    assert counters["http_429"] == 1
    assert counters["prompt_tokens"] > 0 and counters["completion_tokens"] > 0
    dists = {
        d.key.metric.name: d.committed
        for d in result.metrics().query()["distributions"]
        if d.key.metric.namespace == NAMESPACE
    }
    assert dists["request_latency_ms"].count == 30
