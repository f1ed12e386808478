"""api.shared_limit: ``--rate_limit_descriptors`` parsing and ``EnvoyLimit.acquire``.

Parsing: the default descriptor is the model; a list of objects becomes hashable, sorted tuples
(so the same descriptor written in another key order is equal); anything else is refused with a
message saying what is wrong. ``EnvoyLimit`` is checked against the loopback rate-limit service
of tests/support/envoy_rls.py (the gRPC method Envoy's RLS serves, not Envoy itself): what it
asks, the whole hits it asks for, and the seconds ``acquire`` reports it waited.
"""

import itertools

import pytest

from tests.support.envoy_rls import EnvoyRls
from transforms.core.api import shared_limit


def test_default_descriptor_is_the_model():
    assert shared_limit.parse_descriptors(None, "gpt-4o") == ((("model", "gpt-4o"),),)
    assert shared_limit.parse_descriptors("", "o3") == ((("model", "o3"),),)


def test_descriptors_become_sorted_hashable_tuples():
    a = shared_limit.parse_descriptors('[{"tier": "gold", "model": "gpt-4o"}, {"user": "u1"}]', "m")
    b = shared_limit.parse_descriptors('[{"model": "gpt-4o", "tier": "gold"}, {"user": "u1"}]', "m")
    assert a == b == ((("model", "gpt-4o"), ("tier", "gold")), (("user", "u1"),))
    assert hash(a) == hash(b)  # lives in the pickled, frozen DescribeConfig


@pytest.mark.parametrize(
    "text,words",
    [
        ("{nope", "not JSON"),
        ('{"model": "gpt-4o"}', "JSON list of objects"),
        ("[]", "JSON list of objects"),
        ('["model"]', "JSON list of objects"),
        ("[{}]", "strings to strings"),
        ('[{"model": 4}]', "strings to strings"),
        ('[{"model": "gpt-4o"}, {"n": null}]', "strings to strings"),
    ],
)
def test_bad_descriptors_say_what_is_wrong(text, words):
    with pytest.raises(ValueError, match=words):
        shared_limit.parse_descriptors(text, "gpt-4o")


class RawHits(EnvoyRls):
    """The loopback service, also keeping ``hits_addend`` as sent (it counts a 0 as 1)."""

    def __init__(self, per_second):
        self.raw_hits = []
        super().__init__(per_second)

    def _should(self, request, context):
        self.raw_hits.append(request.hits_addend)
        return super()._should(request, context)


def test_acquire_asks_the_service_with_the_domain_and_descriptors():
    descriptors = shared_limit.parse_descriptors('[{"model": "gpt-4o", "tier": "gold"}]', "x")
    # the first acquire reads 100.0 then 100.25, every later read 200.0 (a retried RPC under a
    # loaded machine reads the clock no more often than it asks the service)
    ticks = itertools.chain([100.0, 100.25], itertools.repeat(200.0))
    with RawHits(per_second=1000) as rls:
        limit = shared_limit.EnvoyLimit(
            rls.address, "my-domain", descriptors, clock=lambda: next(ticks)
        )
        assert limit.acquire() == pytest.approx(0.25)  # the clock's difference, whatever it is
        assert limit.acquire(0.3) == 0.0  # a fraction of a request still asks for one hit
    # every ask names the domain and descriptors, one hit each (an RPC the limiter retried
    # under load asks again, alike)
    assert len(rls.calls) >= 2
    assert all(c == ("my-domain", [{"model": "gpt-4o", "tier": "gold"}], 1) for c in rls.calls)
    assert set(rls.raw_hits) == {1}


def test_acquire_waits_while_the_service_says_over_limit():
    with EnvoyRls(per_second=10) as rls:  # a bucket of one token, refilled every 0.1 s
        limit = shared_limit.EnvoyLimit(rls.address, descriptors=((("model", "m"),),))
        limit.acquire()  # the bucket's one token
        second = limit.acquire()
    assert second >= 0.07  # waited for the bucket to refill, and said so
    assert rls.allowed == 2 and len(rls.calls) >= 3  # it was told to wait at least once
    assert {call[0] for call in rls.calls} == {shared_limit.DEFAULT_DOMAIN}
