"""GroupByContent under TestPipeline: identical bytes under different references merge into one
request (with every other row riding along), different bytes or questions do not, and what cannot
be read or is sent by URL stays a request of its own."""

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from tests.support import images as timg
from transforms.core.describe_config import NAMESPACE, DescribeConfig
from transforms.group_by_content import GroupByContent


def planned(image_id, uri, request_key="q1", duplicates=()):
    return {
        "image_id": image_id,
        "image_uri": uri,
        "prompt": "p",
        "request_key": request_key,
        "duplicates": [{"image_id": d, "image_uri": uri} for d in duplicates],
    }


def shape(ref):
    """(sent reference's id, sorted ids riding along) — what decides requests and rows."""
    return ref["image_id"], tuple(sorted(d["image_id"] for d in ref["duplicates"]))


def test_identical_bytes_under_different_references_become_one_request(tmp_path):
    paths = {}
    for name, seed in (("b.png", 1), ("a.png", 1), ("c.png", 1), ("other.png", 2)):
        paths[name] = str(tmp_path / name)
        (tmp_path / name).write_bytes(timg.png(seed=seed))
    refs = [
        planned("b", paths["b.png"], duplicates=["b-again"]),  # already merged by reference
        planned("c", paths["c.png"]),
        planned("a", paths["a.png"]),
        planned("a-other-question", paths["a.png"], request_key="q2"),
        planned("other", paths["other.png"]),
        planned("missing-1", str(tmp_path / "missing-1.png")),
        planned("missing-2", str(tmp_path / "missing-2.png")),
        planned("by-url-1", "https://example.org/same.jpg"),
        planned("by-url-2", "https://example.org/also-same.jpg"),
    ]
    cfg = DescribeConfig(api_base="http://127.0.0.1:9")
    with TestPipeline(options=PipelineOptions(["--runner=FnApiRunner"])) as p:
        out = p | beam.Create(refs) | GroupByContent(cfg)
        assert_that(
            out | beam.Map(shape),
            equal_to(
                [
                    ("a", ("b", "b-again", "c")),  # the smallest path is the one sent
                    ("a-other-question", ()),
                    ("other", ()),
                    ("missing-1", ()),
                    ("missing-2", ()),
                    ("by-url-1", ()),
                    ("by-url-2", ()),
                ]
            ),
        )
        # riders keep their own references: each row is written under its own image_uri
        assert_that(
            out
            | beam.Filter(lambda r: r["image_id"] == "a")
            | beam.FlatMap(lambda r: [(d["image_id"], d["image_uri"]) for d in r["duplicates"]]),
            equal_to([("b", paths["b.png"]), ("b-again", paths["b.png"]), ("c", paths["c.png"])]),
            label="RidersKeepTheirReferences",
        )
    result = p.result
    counters = {
        c.key.metric.name: c.committed
        for c in result.metrics().query()["counters"]
        if c.key.metric.namespace == NAMESPACE
    }
    assert counters["rows_sharing_identical_bytes"] == 3  # b, its rider b-again, and c
    assert counters["content_hash_unread"] == 2
