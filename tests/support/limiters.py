"""Rate limits as providers and gateways enforce them, for the back-pressure tests and benchmark.

Each shape is a callable ``limit(now, cost=1.0) -> Decision``: was a request arriving at ``now``
(seconds, any clock) admitted, and what headers went with the answer. They are pure arithmetic on
the time they are given, so the same object serves

- ``ShapedApi``: ``fake_api.RecordingApi`` answering through a shape (429s with the shape's
  Retry-After or body, rate-limit headers on the 200s), for whole-job tests and the benchmark;
- ``simulate``: a discrete-event run of ``backpressure.Controller`` on a virtual clock (slots,
  pace, per-request Retry-After, send jitter), for deterministic tests of its decisions.

Shapes (a limit of ``rate`` requests a second unless said):

- ``SlidingWindow``: at most ``limit`` admitted in any ``window`` seconds (a sliding log);
- ``LeakyBucket``: nginx's ``limit_req`` arithmetic (milliseconds, ``excess`` in thousandths):
  without ``burst`` any two requests closer than 1/rate are one too many;
- ``TokenBucket``: refills continuously, holds ``burst``;
- ``FixedWindow``: ``limit`` per ``period`` counted from the epoch (a per-minute quota that resets
  on the minute), 429 with ``Retry-After`` = seconds to the reset (``retry_after="reset"``), a
  fixed number, or nothing;
- ``TokenLimit``: a token bucket counting each request's ``cost`` in tokens, not requests;
- ``OpenAIHeaders`` / ``AnthropicHeaders``: a continuous per-minute limit that says what is left
  on every answer (``x-ratelimit-limit/remaining/reset-requests``;
  ``anthropic-ratelimit-requests-limit/remaining/reset`` with an RFC 3339 reset);
- ``GeminiBody``: any shape whose 429 carries no header but a ``google.rpc.RetryInfo``
  ``retryDelay`` in its body (the way Gemini's OpenAI-compatible endpoint answers);
- ``RandomRefusals``: noise, a share of requests refused whatever the rate; ``Both``: noise in
  front of a limit.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import heapq
import json
import math
import random
import threading
import time
from collections.abc import Callable

from tests.support.fake_api import RawFault, RecordingApi, _HostileHandler, image_digest
from transforms.core.offline.endpoint import Fault


@dataclasses.dataclass(frozen=True)
class Decision:
    ok: bool
    headers: dict = dataclasses.field(default_factory=dict)
    body: object = None  # a 429's JSON body; None: the endpoint's usual one

    @property
    def retry_after(self) -> float | None:
        value = self.headers.get("Retry-After")
        return float(value) if value is not None else None


def _refused(retry_after) -> Decision:
    if retry_after is None:
        return Decision(False)
    return Decision(False, {"Retry-After": f"{retry_after:g}"})


class SlidingWindow:
    """At most ``limit`` requests admitted in any ``window`` seconds (refusals do not count)."""

    def __init__(self, limit: int, window: float = 1.0, retry_after: float | None = 1.0):
        self.limit, self.window, self.retry_after = limit, window, retry_after
        self.rate = limit / window
        self._log: collections.deque = collections.deque()

    def __call__(self, now: float, cost: float = 1.0) -> Decision:
        log = self._log
        while log and log[0] <= now - self.window:
            log.popleft()
        if len(log) >= self.limit:
            return _refused(self.retry_after)
        log.append(now)
        return Decision(True)


class LeakyBucket:
    """nginx ``limit_req zone=... rate=<rate>r/s burst=<burst> nodelay``, as its source computes it
    (``ngx_http_limit_req_lookup``): times in whole milliseconds, the excess in thousandths of a
    request; a request is refused when the excess it would leave exceeds ``burst``."""

    def __init__(self, rate: float, burst: int = 0, retry_after: float | None = 1.0):
        self.rate, self.burst, self.retry_after = rate, burst, retry_after
        self._excess = 0
        self._last: int | None = None

    def __call__(self, now: float, cost: float = 1.0) -> Decision:
        ms_now = int(now * 1000)
        ms = 0 if self._last is None else max(0, ms_now - self._last)
        if self._last is None:
            ms = 60_000
        excess = max(0, self._excess - int(self.rate * 1000) * ms // 1000 + 1000)
        if excess > self.burst * 1000:
            return _refused(self.retry_after)
        self._excess = excess
        if ms:
            self._last = ms_now
        return Decision(True)


class TokenBucket:
    """``rate`` a second, at most ``burst`` at once (Envoy's local rate limit, most SDKs')."""

    def __init__(self, rate: float, burst: float | None = None, retry_after: float | None = 1.0):
        self.rate = rate
        self.burst = burst if burst is not None else rate
        self.retry_after = retry_after
        self._tokens = self.burst
        self._at: float | None = None

    def take(self, now: float, cost: float) -> bool:
        if self._at is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now if self._at is None else max(self._at, now)
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False

    def __call__(self, now: float, cost: float = 1.0) -> Decision:
        return Decision(True) if self.take(now, 1.0) else _refused(self.retry_after)


class FixedWindow:
    """``limit`` requests per ``period`` seconds, the count reset at every multiple of ``period``
    of the clock given (wall time: on the minute). ``retry_after``: ``"reset"`` (seconds to the
    reset, rounded up, as most such limiters and Gemini's RetryInfo say), a number, or None."""

    def __init__(self, limit: int, period: float = 60.0, retry_after="reset"):
        self.limit, self.period, self.retry_after = limit, period, retry_after
        self.rate = limit / period
        self._window: int | None = None
        self._used = 0

    def reset_in(self, now: float) -> float:
        return (math.floor(now / self.period) + 1) * self.period - now

    def __call__(self, now: float, cost: float = 1.0) -> Decision:
        window = math.floor(now / self.period)
        if window != self._window:
            self._window, self._used = window, 0
        if self._used < self.limit:
            self._used += 1
            return Decision(True)
        if self.retry_after == "reset":
            return _refused(float(math.ceil(self.reset_in(now))))
        return _refused(self.retry_after)


class TokenLimit:
    """A limit on tokens: ``tokens_per_s`` refilled continuously, ``burst`` tokens at most; each
    request costs its ``cost`` (what the caller says it will use, as OpenAI counts
    ``max_tokens`` + the prompt up front)."""

    def __init__(self, tokens_per_s: float, burst: float | None = None, retry_after=1.0):
        self.rate = tokens_per_s
        self._bucket = TokenBucket(tokens_per_s, burst or tokens_per_s, retry_after)
        self.retry_after = retry_after
        self.admitted_tokens = 0.0

    def __call__(self, now: float, cost: float = 1.0) -> Decision:
        if self._bucket.take(now, cost):
            self.admitted_tokens += cost
            return Decision(True)
        return _refused(self.retry_after)


class OpenAIHeaders:
    """OpenAI's per-minute request limit, replenished continuously, with its headers on every
    answer: ``x-ratelimit-limit-requests`` (per minute), ``-remaining-requests`` and
    ``-reset-requests`` (time until the bucket is full again, e.g. ``1.2s``, ``6m0s``)."""

    def __init__(self, per_minute: int, retry_after: float | None = 1.0):
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self._bucket = TokenBucket(self.rate, per_minute, retry_after)
        self.retry_after = retry_after

    def _headers(self) -> dict:
        left = self._bucket._tokens
        reset = (self.per_minute - left) / self.rate
        return {
            "x-ratelimit-limit-requests": str(self.per_minute),
            "x-ratelimit-remaining-requests": str(int(left)),
            "x-ratelimit-reset-requests": _go_duration(reset),
        }

    def __call__(self, now: float, cost: float = 1.0) -> Decision:
        ok = self._bucket.take(now, 1.0)
        headers = self._headers()
        if not ok and self.retry_after is not None:
            headers["Retry-After"] = f"{self.retry_after:g}"
        return Decision(ok, headers)


class AnthropicHeaders(OpenAIHeaders):
    """Anthropic's: ``anthropic-ratelimit-requests-limit`` / ``-remaining`` / ``-reset`` (an RFC
    3339 instant at which the bucket is full again), and ``retry-after`` on a 429."""

    def __init__(self, per_minute: int, retry_after: float | None = 1.0, wall=time.time):
        super().__init__(per_minute, retry_after)
        self._wall = wall

    def _headers(self) -> dict:
        left = self._bucket._tokens
        reset = self._wall() + (self.per_minute - left) / self.rate
        when = datetime.datetime.fromtimestamp(math.ceil(reset), datetime.timezone.utc)
        return {
            "anthropic-ratelimit-requests-limit": str(self.per_minute),
            "anthropic-ratelimit-requests-remaining": str(int(left)),
            "anthropic-ratelimit-requests-reset": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }


def _go_duration(seconds: float) -> str:
    """``6m0s``, ``1.25s``, ``20ms``: the way OpenAI writes its reset headers."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:.3g}s"
    return f"{int(minutes)}m{text}" if minutes else text


class GeminiBody:
    """``inner``'s 429s without any header, the wait only in the body's ``RetryInfo``: Gemini's
    OpenAI-compatible endpoint answers ``[{"error": {"code": 429, "status":
    "RESOURCE_EXHAUSTED", "details": [{"@type": ".../google.rpc.RetryInfo", "retryDelay":
    "37s"}]}}]``."""

    def __init__(self, inner):
        self.inner = inner
        self.rate = getattr(inner, "rate", None)

    def __call__(self, now: float, cost: float = 1.0) -> Decision:
        decision = self.inner(now, cost)
        if decision.ok:
            return decision
        delay = decision.retry_after if decision.retry_after is not None else 1.0
        body = [
            {
                "error": {
                    "code": 429,
                    "message": "Resource has been exhausted (e.g. check quota).",
                    "status": "RESOURCE_EXHAUSTED",
                    "details": [
                        {
                            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                            "violations": [{"quotaId": "GenerateRequestsPerMinutePerProject"}],
                        },
                        {
                            "@type": "type.googleapis.com/google.rpc.RetryInfo",
                            "retryDelay": f"{delay:g}s",
                        },
                    ],
                }
            }
        ]
        return Decision(False, {}, body)


class RandomRefusals:
    """``share`` of requests refused at random, whatever the rate (an aggregator's noise)."""

    def __init__(self, share: float, retry_after: float | None = 1.0, seed: int = 5):
        self.share, self.retry_after = share, retry_after
        self._rng = random.Random(seed)
        self.rate = None

    def __call__(self, now: float, cost: float = 1.0) -> Decision:
        if self._rng.random() < self.share:
            return _refused(self.retry_after)
        return Decision(True)


class Both:
    """Noise in front of a limit: refused by either."""

    def __init__(self, noise, limit):
        self.noise, self.limit = noise, limit
        self.rate = getattr(limit, "rate", None)

    def __call__(self, now: float, cost: float = 1.0) -> Decision:
        first = self.noise(now, cost)
        return first if not first.ok else self.limit(now, cost)


def request_cost(body: dict) -> float:
    """What a token limit charges a request: ``max_tokens`` (or 300) plus ~1 token per 400 bytes
    of the request (an image's base64 weighs most), as providers count prompt + completion up
    front."""
    size = len(json.dumps(body, separators=(",", ":")))
    return float(body.get("max_tokens") or body.get("max_completion_tokens") or 300) + size / 400


_arrival = threading.local()


class _StampingHandler(_HostileHandler):
    """Notes when each request's headers were read, before its body is: where nginx's
    ``limit_req`` (the preaccess phase) takes its time."""

    def do_POST(self):
        _arrival.at = self.server.limit_clock()
        super().do_POST()


class ShapedApi(RecordingApi):
    """``RecordingApi`` behind a rate-limit shape: 429 (or ``status``) with the shape's headers
    and body when refused; the shape's headers on a 200 too. ``answers`` records (arrival,
    admitted, cost) per request, in arrival order.

    ``stamp`` is the time the limit is given: ``"headers"`` (default) when the request's headers
    were read, before its body, as nginx does; ``"parsed"`` after the body was read, parsed and
    checked, as a gateway that limits in its application code does (each request then reaches
    the limit late by a varying lag, under the GIL of a busy server). ``lags`` records that lag
    (seconds from headers read to the limit's decision) per request. Use as a context manager."""

    def __init__(
        self, limit, latency: float = 0.02, clock=time.monotonic, stamp="headers", **kwargs
    ):
        super().__init__(latency=latency, **kwargs)
        if stamp not in ("headers", "parsed"):
            raise ValueError(f"stamp must be 'headers' or 'parsed', not {stamp!r}")
        self.limit = limit
        self.clock = clock
        self.stamp = stamp
        self.answers: list[tuple[float, bool, float]] = []
        self.lags: list[float] = []
        self._limit_lock = threading.Lock()
        self.endpoint.server.RequestHandlerClass = _StampingHandler
        self.endpoint.server.limit_clock = clock

    def _fault(self, body: dict, headers: dict) -> Fault | None:
        fault = super()._fault(body, headers)  # records; a plan's own faults go first
        if fault is not None:
            return fault
        cost = request_cost(body)
        arrived = getattr(_arrival, "at", None)
        with self._limit_lock:
            now = self.clock()
            if arrived is None:
                arrived = now
            decision = self.limit(arrived if self.stamp == "headers" else now, cost)
            self.answers.append((time.monotonic(), decision.ok, cost))
            self.lags.append(now - arrived)
        if not decision.ok:
            with self._lock:
                self.rate_limited += 1
                try:
                    key = image_digest(body)
                    self.attempts[key][-1] = (self.attempts[key][-1][0], "limit")
                except Exception:
                    pass
            if decision.body is not None:
                raw = json.dumps(decision.body).encode()
                return RawFault("raw", 429, headers=decision.headers, raw=raw)
            return Fault("status", 429, headers=decision.headers)
        if decision.headers:
            if self.endpoint.latency:
                time.sleep(self.endpoint.latency)
            raw = json.dumps(self.answer(body)).encode()
            return RawFault("raw", 200, headers=decision.headers, raw=raw)
        return None


def nginx_limit_req(rate: float, burst: int = 0, retry_after: float = 1, log: str | None = None):
    """``tests.support.nginx.Nginx`` arguments for ``limit_req rate=<rate>r/s`` with ``burst``
    (``nodelay``) or without one at all (nginx refuses ``burst=0``, so that one is written as
    raw lines), refusing with 429 + ``Retry-After``; ``log``: a file of each request's arrival
    (``$msec``) and status, for ``nginx_answers``."""
    logging = ("log_format bp '$msec $status';", f"access_log {log} bp;") if log else ()
    if burst:
        return {"limit_req": (rate, burst), "retry_after": retry_after, "extra_http": logging}
    body = '{"error": {"message": "nginx limit_req", "type": "requests", "code": "rate_limit"}}'
    return {
        "extra_http": (
            *logging,
            f"limit_req_zone $binary_remote_addr zone=bp:1m rate={rate:g}r/s;",
        ),
        "extra_location": ("limit_req zone=bp;", "limit_req_status 429;", "error_page 429 = @bp;"),
        "extra_server": (
            "location @bp { default_type application/json; "
            f"add_header Retry-After {retry_after:g} always; return 429 '{body}'; }}",
        ),
    }


def nginx_answers(log: str) -> list[tuple[float, bool, float]]:
    """(arrival, admitted, 1.0) per request from ``nginx_limit_req``'s log, in order."""
    answers = []
    with open(log) as f:
        for line in f:
            msec, status = line.split()
            answers.append((float(msec), status == "200", 1.0))
    return answers


# -- a discrete-event run of the controller ------------------------------------------------------
@dataclasses.dataclass
class SimResult:
    attempts: list  # (arrival, admitted) per request, in arrival order
    done: int  # requests that ended admitted
    gave_up: int
    seconds: float
    control: object

    def window(self, start: float, end: float | None = None) -> list:
        end = self.seconds if end is None else end
        return [ok for t, ok in self.attempts if start <= t < end]

    def accepted_rate(self, start: float = 0.0, end: float | None = None) -> float:
        end = self.seconds if end is None else end
        return sum(self.window(start, end)) / max(1e-9, end - start)

    def refused_share(self, start: float = 0.0, end: float | None = None) -> float:
        part = self.window(start, end)
        return (len(part) - sum(part)) / max(1, len(part))


def simulate(
    make_control: Callable,
    limit,
    seconds: float,
    concurrency: int = 16,
    latency: float = 0.02,
    jitter: float = 0.002,
    wake: float = 0.0,
    seed: int = 1,
    start: float = 1000.0,
    max_retries: int = 20,
    cost: Callable[[random.Random], float] = lambda rng: 1.0,
    tokens: Callable[[float], int] | None = None,
    items: int | None = None,
) -> SimResult:
    """Run ``make_control(clock)`` (a ``Controller`` on the virtual clock) for ``seconds`` against
    ``limit``: ``2 * concurrency + 2`` request threads as the worker has, each taking the next
    row, a slot, the pace, then sending; a thread waiting for its turn wakes a random ``wake``
    seconds late on average, the request reaches the limiter after a random delay of mean
    ``jitter`` (a loaded machine), the answer comes ``latency`` later; a 429 waits its own
    Retry-After (plus the client's spread) off its slot, then tries again. Deterministic."""
    clock = _SimClock(start)
    control = make_control(clock)
    rng = random.Random(seed)
    events: list = []
    seq = 0
    attempts: list = []
    slot_waiters: collections.deque = collections.deque()
    done = gave_up = 0
    remaining = [items]
    costs: dict = {}

    def at(t, fn, *args):
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, fn, args))

    def next_row(thread):
        if remaining[0] is not None:
            if remaining[0] <= 0:
                return
            remaining[0] -= 1
        costs[thread] = cost(rng)  # a row's request costs the same on every try
        want_slot(thread, 0)

    def want_slot(thread, tries):
        if control.slots.try_acquire():
            ticket = control.reserve()
            at(clock.t, wait_turn, thread, tries, ticket)
        else:
            slot_waiters.append((thread, tries))

    def wait_turn(thread, tries, ticket):
        wait = control.claim(ticket)
        if wait is not None:
            late = rng.expovariate(1 / wake) if wake else 0.0
            at(clock.t + wait + late, wait_turn, thread, tries, ticket)
            return
        sent_at = clock.t
        arrive = sent_at + rng.expovariate(1 / jitter) if jitter else sent_at
        at(arrive, arrive_at, thread, tries, sent_at, costs[thread])

    def arrive_at(thread, tries, sent_at, c):
        decision = limit(clock.t, c)
        attempts.append((clock.t - start, decision.ok))
        at(clock.t + latency, answered, thread, tries, sent_at, decision)

    def answered(thread, tries, sent_at, decision):
        nonlocal done, gave_up
        status = 200 if decision.ok else 429
        retry_after = decision.retry_after
        if not decision.ok and retry_after is None and decision.body is not None:
            retry_after = _body_delay(decision.body)
        retry_after = retry_after if not decision.ok else None
        control.release(sent_at, status, retry_after, decision.headers, again=tries > 0)
        if slot_waiters:
            waiter = slot_waiters.popleft()
            at(clock.t, want_slot, *waiter)
        if decision.ok:
            if tokens is not None:
                control.note_tokens(tokens(rng.random()))
            done += 1
            at(clock.t, next_row, thread)
            return
        if tries >= max_retries:
            gave_up += 1
            at(clock.t, next_row, thread)
            return
        back = 2.0 ** min(tries, 5) * rng.uniform(0.5, 1.0)
        if retry_after is not None:
            back = retry_after + rng.uniform(0.0, min(1.0, 0.1 * retry_after + 0.05))
        at(clock.t + back, want_slot, thread, tries + 1)

    for thread in range(2 * concurrency + 2):
        at(start, next_row, thread)
    end = start + seconds
    while events and events[0][0] < end:
        t, _, fn, args = heapq.heappop(events)
        clock.t = max(clock.t, t)
        fn(*args)
    return SimResult(attempts, done, gave_up, seconds, control)


def _body_delay(body) -> float | None:
    try:
        for detail in body[0]["error"]["details"]:
            if detail.get("@type", "").endswith("RetryInfo"):
                return float(detail["retryDelay"].rstrip("s"))
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return None


class _SimClock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:  # only reached by code the simulation does not drive
        self.t += max(0.0, seconds)
