"""A job-wide request budget through an Envoy rate-limit service (Beam's ``EnvoyRateLimiter``).

``--requests_per_minute`` is split evenly across worker processes (the budget ÷ the maximum
worker count), which is exact for a fixed-size job and under-uses the budget under autoscaling:
with 3 of 10 workers up, 70 % of it sits idle. Where an Envoy rate-limit service (RLS) runs — the
one Envoy proxies use, reachable from the workers over gRPC — every worker asks it before each
request instead, so the whole budget is shared by whichever workers exist. The price: one gRPC
round trip per request (about a millisecond in the same region, but a dependency the job now has:
an RLS that is down stops the requests, after Beam's own retries), and the service to run.

This is the one ``transforms.core`` module that touches Beam, and only when it is used: the
limiter is Beam's (``apache_beam.io.components.rate_limiter``), imported when made.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

DEFAULT_DOMAIN = "vision-enrich"


def parse_descriptors(text: str | None, model: str) -> tuple[tuple[tuple[str, str], ...], ...]:
    """``--rate_limit_descriptors``: a JSON list of objects of string values (the RLS config's
    descriptor keys); by default one descriptor ``{"model": <--model>}``. Hashable, for the
    pickled config. Raises ValueError with what is wrong."""
    if not text:
        return ((("model", model),),)
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"--rate_limit_descriptors is not JSON: {exc}") from None
    if not isinstance(value, list) or not value or not all(isinstance(d, dict) for d in value):
        raise ValueError(
            '--rate_limit_descriptors must be a JSON list of objects, e.g. [{"model": "gpt-4o"}]'
        )
    out = []
    for d in value:
        if not d or not all(isinstance(k, str) and isinstance(v, str) for k, v in d.items()):
            raise ValueError("--rate_limit_descriptors: every descriptor maps strings to strings")
        out.append(tuple(sorted(d.items())))
    return tuple(out)


class EnvoyLimit:
    """``acquire()`` blocks until the RLS allows one request; returns the seconds it waited (the
    interface of ``api.ratelimit.RateLimiter``, so the API client takes either)."""

    def __init__(
        self,
        address: str,
        domain: str = DEFAULT_DOMAIN,
        descriptors: tuple[tuple[tuple[str, str], ...], ...] = (),
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        from apache_beam.io.components.rate_limiter import EnvoyRateLimiter

        self._limiter = EnvoyRateLimiter(
            service_address=address,
            domain=domain,
            descriptors=[dict(d) for d in descriptors],
            timeout=timeout,
            block_until_allowed=True,
            namespace="vision_enrich",
        )
        self._clock = clock

    def acquire(self, cost: float = 1.0) -> float:
        start = self._clock()
        self._limiter.allow(hits_added=max(1, int(cost)))
        return self._clock() - start
