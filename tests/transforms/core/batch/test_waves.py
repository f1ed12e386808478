"""batch.waves: the enqueued-token cap holds batches back until earlier ones end, one batch alone
always goes, a capacity refusal waits a round and is counted, and only refusals that say
"later" are taken for capacity."""

from transforms.core.batch.records import BatchRecord
from transforms.core.batch.transport import BatchHttpError
from transforms.core.batch.waves import Waves, refused_for_capacity


def _record(key, tokens, **kw):
    return BatchRecord(key=key, protocol="openai", custom_ids=[key], tokens=tokens, **kw)


def test_the_cap_holds_batches_until_earlier_ones_end_and_counts_the_waves():
    waves = Waves(cap=1000)
    a, b, c = _record("a", 700), _record("b", 600), _record("c", 200)
    for r in (a, b, c):
        waves.add(r, None)
    first = waves.take()
    assert first[0] is a
    waves.running(a)  # sent: its tokens are enqueued
    assert waves.take() is None and waves.queued("b")  # b would pass the cap behind a
    waves.next_round()
    waves.ended("a")
    assert waves.take()[0] is b
    waves.running(b)
    assert waves.take()[0] is c  # 600 + 200 fits
    waves.running(c)
    assert waves.waves == 2 and waves.peak == 800


def test_one_batch_alone_always_goes_and_no_cap_means_no_wait():
    alone = Waves(cap=100)
    alone.add(_record("big", 10_000), None)
    assert alone.take()[0].key == "big"
    free = Waves()
    for key in "xyz":
        free.running(_record(key, 10**9))
    assert free.fits(10**9)


def test_a_capacity_refusal_waits_a_round_and_is_counted():
    waves = Waves(cap=0)
    r = _record("a", 10)
    waves.running(r)
    waves.requeue(r, "/tmp/a.jsonl")
    assert waves.take() is None  # not again in the round that refused it
    waves.next_round()
    assert waves.take() == (r, "/tmp/a.jsonl") and waves.requeued == 1


def test_only_refusals_that_say_later_are_for_capacity():
    assert refused_for_capacity(_record("a", 1, state="failed", error_code="token_limit_exceeded"))
    assert refused_for_capacity(
        _record("a", 1, state="failed", error="Enqueued token limit reached (token_limit_exceeded)")
    )
    assert not refused_for_capacity(_record("a", 1, state="failed", error="invalid JSONL line"))
    assert not refused_for_capacity(
        _record("a", 1, state="completed", error_code="token_limit_exceeded")
    )
    assert refused_for_capacity(exc=BatchHttpError("too many batches in progress", 429))
    assert not refused_for_capacity(exc=BatchHttpError("bad request", 400))
