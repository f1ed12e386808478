"""One row's surprise is that row's failure row: an exception injected at each stage of handling a
row — planning, preparing, sending, parsing, building its row, counting it, emitting it — leaves
every input row accounted for exactly once, the others described, and the bundle going on."""

import uuid

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from schemas import rows as schema
from tests.support.fake_api import RecordingApi
from tests.transforms.test_describe_images import config, make_images, run_fn
from transforms import describe_images as di
from transforms.core import describe_config
from transforms.core.api import client as vision_api
from transforms.core.describe_config import DescribeConfig
from transforms.core.images import loader as images
from transforms.core.online import worker as describer
from transforms.core.question import answers
from transforms.plan_requests import PlanRequests

VICTIM = "id-3"


class Boom(RuntimeError):
    pass


def _raise_for_victim(original, pick):
    """Wrap ``original`` so that it raises ``Boom`` when ``pick(args)`` names the victim row."""

    def wrapped(*args, **kwargs):
        if pick(args, kwargs):
            raise Boom("injected")
        return original(*args, **kwargs)

    return wrapped


def _victim_path(tmp_path):
    return str(tmp_path / "img0003.png")


# stage name -> (what to patch, how to recognise the victim's call, expected stage of the row)
def _patches(tmp_path):
    victim_path = _victim_path(tmp_path)
    return {
        "prepare": (
            (images.ImageLoader, "prepare"),
            lambda a, k: a[1] == victim_path,
            "read",
        ),
        # the victim's request is recognised by its image (the body holds a data: URL)
        "send": ((vision_api.VisionClient, "complete"), None, "request"),
        "build_row": (
            (describer, "description_row"),
            lambda a, k: a[0].get("image_id") == VICTIM,
            "response",
        ),
    }


@pytest.mark.parametrize("stage", ["prepare", "send", "build_row"])
def test_an_exception_at_any_stage_fails_only_its_row(tmp_path, monkeypatch, stage):
    monkeypatch.setenv("VE_TEST_KEY", "sk-containment-key")
    refs, digests = make_images(tmp_path, 8)
    (target, name), pick, expected_stage = _patches(tmp_path)[stage]
    original = getattr(target, name)
    if pick is None:
        victim_url = images.ImageLoader().prepare(_victim_path(tmp_path)).url

        def pick(a, k):
            return victim_url in str(a[1])

    monkeypatch.setattr(target, name, _raise_for_victim(original, pick))
    with RecordingApi() as api:
        fn = di.DescribeImagesFn(config(api, max_concurrency=3, run_id=uuid.uuid4().hex))
        described, failed = run_fn(fn, [refs[:5], refs[5:]])
    assert sorted(r["image_id"] for r in described) == sorted(set(digests) - {VICTIM})
    assert len(failed) == 1
    row = failed[0]
    schema.check_row(schema.FAILURE_FIELDS, row)
    assert (row["image_id"], row["error_type"], row["stage"]) == (
        VICTIM,
        "internal",
        expected_stage,
    )
    assert "Boom" in row["error"] and "injected" in row["error"]


def test_an_exception_while_parsing_the_answer_fails_only_its_row(tmp_path, monkeypatch):
    monkeypatch.setenv("VE_TEST_KEY", "sk-containment-key")
    refs, _ = make_images(tmp_path, 4)
    calls = []

    def parse_answer(schema_, content):
        calls.append(content)
        if len(calls) == 2:
            raise Boom("parser bug")
        return {"label": "x"}

    monkeypatch.setattr(answers, "parse_answer", parse_answer)
    with RecordingApi() as api:
        cfg = config(api, max_concurrency=1, output_schema="label STRING", run_id=uuid.uuid4().hex)
        described, failed = run_fn(di.DescribeImagesFn(cfg), [refs])
    assert len(described) == 3 and len(failed) == 1
    assert (failed[0]["stage"], failed[0]["error_type"]) == ("response", "internal")


def test_a_failing_counter_loses_no_row(tmp_path, monkeypatch):
    monkeypatch.setenv("VE_TEST_KEY", "sk-containment-key")
    refs, digests = make_images(tmp_path, 6)
    with RecordingApi() as api:
        fn = di.DescribeImagesFn(config(api, max_concurrency=2, run_id=uuid.uuid4().hex))

        class BrokenCounter:
            def inc(self, n=1):
                raise Boom("metrics backend")

            def update(self, v):
                raise Boom("metrics backend")

        for attr in ("_requests", "_described", "_latency", "_billed_requests"):
            setattr(fn, attr, BrokenCounter())
        described, failed = run_fn(fn, [refs])
    assert sorted(r["image_id"] for r in described) == sorted(digests) and failed == []


def test_a_row_that_does_not_fit_its_columns_becomes_a_failure_row(tmp_path, monkeypatch):
    monkeypatch.setenv("VE_TEST_KEY", "sk-containment-key")
    refs, _ = make_images(tmp_path, 3)
    original = describer.answer_columns

    def wrong_type(*args, **kwargs):
        columns = original(*args, **kwargs)
        if args[4].get("image_id") == "id-1":
            columns["description"] = None  # a required column: a writer would refuse the row
        return columns

    monkeypatch.setattr(describer, "answer_columns", wrong_type)
    with RecordingApi() as api:
        fn = di.DescribeImagesFn(config(api, max_concurrency=2, run_id=uuid.uuid4().hex))
        described, failed = run_fn(fn, [refs])
    assert sorted(r["image_id"] for r in described) == ["id-0", "id-2"]
    assert [(r["image_id"], r["stage"], r["error_type"]) for r in failed] == [
        ("id-1", "emit", "internal")
    ]


def test_a_surprise_while_planning_is_a_failure_row_under_a_pipeline(tmp_path, monkeypatch):
    """Under TestPipeline: PlanRequests meets a row its prompt renderer chokes on."""
    refs, _ = make_images(tmp_path, 4)
    original = describe_config.plan_ref

    def plan(ref, *args, **kwargs):
        if ref.get("image_id") == "id-2":
            raise Boom("renderer bug")
        return original(ref, *args, **kwargs)

    # PlanRequests looks the name up as describe_config.plan_ref when it runs
    monkeypatch.setattr(describe_config, "plan_ref", plan)
    cfg = DescribeConfig(api_base="http://127.0.0.1:9/v1", run_id=uuid.uuid4().hex)
    with TestPipeline(runner="FnApiRunner") as p:
        planned, failures, _ = p | beam.Create(refs) | PlanRequests(cfg)
        assert_that(
            planned | "Ids" >> beam.Map(lambda r: r["image_id"]),
            equal_to(["id-0", "id-1", "id-3"]),
            label="Planned",
        )
        assert_that(
            failures | beam.Map(lambda r: (r["image_id"], r["stage"], r["error_type"])),
            equal_to([("id-2", "read", "internal")]),
            label="Failed",
        )
