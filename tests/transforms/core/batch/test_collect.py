"""batch.collect: an ended batch into rows — one row per input row, whatever the batch did. The
collector runs with the shard's real parts (``RequestBuilder``, row builders, the failure-row
maker) and a provider's results given as ``LineOutcome``s, the way a sender returns them."""

from __future__ import annotations

import collections

from transforms.core.api.responses import Completion
from transforms.core.batch.collect import LineGroup, ResultsCollector
from transforms.core.batch.records import BatchRecord, LineOutcome
from transforms.core.batch.transport import BatchHttpError
from transforms.core.describe_config import DESCRIPTIONS, FAILURES, ChatConfig, DescribeConfig
from transforms.core.images import loader as images
from transforms.core.request_builder import RequestBuilder
from transforms.core.row_builders import failure_row

CFG = DescribeConfig(api_base="http://127.0.0.1:9/v1", api_key_env=None, chat=ChatConfig())
IMAGE = images.PreparedImage(url="", mime="image/png", width=8, height=8, sha256="ab" * 32)


class Results:
    def __init__(self, outcomes=(), broken=False):
        self.outcomes, self.broken = list(outcomes), broken

    def results(self, record):
        if self.broken:
            raise BatchHttpError("HTTP 500 from the provider", 500)
        yield from self.outcomes


class Collector(ResultsCollector):
    def __init__(self, sender):
        self.sender, self.cfg, self.asker = sender, CFG, RequestBuilder(CFG)
        self.counts = collections.Counter()
        self.batch_prices = (1.25, 5.0)

    def _fail(self, refs, stage, error, error_type, status=None, request_id=None, attempts=0):
        return [
            (FAILURES, failure_row(r, stage, error, error_type, status, request_id, attempts, CFG))
            for r in refs
        ]


def _groups(*cids, rows=2):
    return {
        cid: LineGroup(
            refs=[
                {"image_id": f"{cid}-{i}", "image_uri": f"/{cid}.png", "request_key": "k"}
                for i in range(rows)
            ],
            image=IMAGE,
            estimate=100,
            record="r1",
        )
        for cid in cids
    }


def _record(state, *cids):
    return BatchRecord(
        key="r1", protocol="openai", custom_ids=list(cids), state=state, batch_id="b1"
    )


def _answer(text="A cat.", prompt=100, done=10):
    return Completion(text, "gpt-4o", "stop", prompt, done, prompt + done, "resp-1")


def test_every_row_of_a_line_gets_the_answer_and_only_the_first_is_billed():
    groups = _groups("a", "b")
    outcomes = [
        LineOutcome("a", completion=_answer()),
        LineOutcome("b", error_type="batch_line_error", error="HTTP 400: bad image"),
    ]
    rows = list(Collector(Results(outcomes))._collect(_record("completed", "a", "b"), groups))
    described = [r for tag, r in rows if tag == DESCRIPTIONS]
    failed = [r for tag, r in rows if tag == FAILURES]
    assert [r["image_id"] for r in described] == ["a-0", "a-1"]
    assert [r["billed"] for r in described] == [True, False]
    assert {r["description"] for r in described} == {"A cat."}
    assert [(r["image_id"], r["error_type"]) for r in failed] == [
        ("b-0", "batch_line_error"),
        ("b-1", "batch_line_error"),
    ]
    assert all(g.done for g in groups.values())


def test_a_batch_priced_at_the_batch_rate_beside_the_online_one():
    collector = Collector(Results([LineOutcome("a", completion=_answer(prompt=1000, done=100))]))
    list(collector._collect(_record("completed", "a"), _groups("a", rows=1)))
    assert collector.counts["batch_cost_microdollars"] == 1000 * 1.25 + 100 * 5.0
    assert collector.counts["cost_microdollars"] == 1000 * 2.5 + 100 * 10.0  # gpt-4o online


def test_lines_the_batch_never_reached_or_could_not_return_are_failures_that_say_so():
    cases = {
        "expired": "batch_expired",
        "cancelled": "batch_cancelled",
        "completed": "batch_missing",
        "failed": "batch_refused",
    }
    for state, error_type in cases.items():
        rows = list(Collector(Results())._collect(_record(state, "a"), _groups("a")))
        assert [(tag, r["error_type"]) for tag, r in rows] == [(FAILURES, error_type)] * 2, state
    rows = list(Collector(Results(broken=True))._collect(_record("completed", "a"), _groups("a")))
    assert {r["error_type"] for _, r in rows} == {"batch_results_unreadable"}
    assert "rerun the same command" in rows[0][1]["error"]


def test_a_line_another_run_or_record_holds_is_left_alone():
    groups = _groups("a")
    groups["a"].record = "another-record"
    outcomes = [LineOutcome("a", completion=_answer())]
    assert list(Collector(Results(outcomes))._collect(_record("completed", "a"), groups)) == []
    assert not groups["a"].done
