"""The ledger: request keys, one outcome per key among threads, budgets that are never crossed;
and PlanRequests (grouping by reference, skipping what exists) under TestPipeline."""

import threading
import time

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.core import ledger
from transforms.core.describe_config import DescribeConfig, plan_ref
from transforms.plan_requests import SKIPPED, PlanRequests

ARGS = ("gpt-4o", "What's in it?", None, None, 300, "auto", 2048)


def test_request_key_changes_with_every_part_of_the_question():
    base = ledger.request_key(*ARGS)
    assert base == ledger.request_key(*ARGS) and len(base) == 32
    for i, other in enumerate(["gpt-4o-mini", "Other?", "Be brief.", "x STRING", 10, "low", 512]):
        changed = list(ARGS)
        changed[i] = other
        assert ledger.request_key(*changed) != base, i


def test_one_owner_per_key_and_everyone_gets_its_outcome():
    shared = ledger.SharedAnswers()
    calls, results = [], []
    lock = threading.Lock()

    def work():
        owner, entry = shared.claim("k")
        if owner:
            with lock:
                calls.append(1)
            time.sleep(0.05)  # others arrive while it is out
            shared.publish("k", entry, "answer")
            value = "answer"
        else:
            value = shared.wait(entry)
        with lock:
            results.append(value)

    threads = [threading.Thread(target=work) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert len(calls) == 1 and results == ["answer"] * 12
    assert shared.claim("k")[0] is False  # still known afterwards


def test_abandoned_claims_are_retried_and_old_keys_forgotten():
    shared = ledger.SharedAnswers(keep=2)
    owner, entry = shared.claim("a")
    shared.abandon("a", entry)
    assert shared.claim("a")[0] is True
    for key in "bcd":
        ok, e = shared.claim(key)
        shared.publish(key, e, key)
    assert shared.claim("b")[0] is True  # evicted: at most `keep` finished keys are held


def test_budget_counts_images_and_reserves_cost_before_sending():
    images = ledger.Budget(max_images=2)
    assert images.reserve(0) and images.reserve(0) and not images.reserve(0)
    assert "2 of --max_images 2" in images.reason()
    money = ledger.Budget(max_cost=1.0)
    assert money.reserve(0.4) and money.reserve(0.4)
    assert not money.reserve(0.4)  # 0.8 held + 0.4 would cross 1.0
    money.settle(0.4, 0.1)  # the answer cost less than its estimate: room again
    assert money.reserve(0.4)
    assert money.spent == pytest.approx(0.1)


def test_plan_requests_groups_by_reference_and_skips_what_exists():
    cfg = DescribeConfig(api_base="http://127.0.0.1:9/v1")
    refs = [
        {"image_id": "a", "image_uri": "/img/1.png"},
        {"image_id": "b", "image_uri": "/img/1.png"},
        {"image_id": "c", "image_uri": "/img/2.png"},
        {"image_id": "d", "image_uri": "/img/3.png"},
    ]
    planned = plan_ref(refs[3], cfg, None, None)
    done = [(ledger.reference_key("/img/3.png", planned["request_key"]), "d")]
    with TestPipeline(runner="FnApiRunner") as p:
        existing = p | "Existing" >> beam.Create(done)
        groups, failures, skipped = p | beam.Create(refs) | PlanRequests(cfg, existing)
        shape = groups | beam.Map(
            lambda g: (
                g["image_uri"],
                sorted([g["image_id"]] + [d["image_id"] for d in g["duplicates"]]),
            )
        )
        assert_that(shape, equal_to([("/img/1.png", ["a", "b"]), ("/img/2.png", ["c"])]))
        assert_that(
            skipped | "Ids" >> beam.Map(lambda r: r["image_id"]), equal_to(["d"]), label=SKIPPED
        )
        assert_that(failures, equal_to([]), label="NoFailures")
