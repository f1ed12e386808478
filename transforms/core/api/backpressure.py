"""Back-pressure that holds a rate limit at its edge, whatever its shape, and keeps the pipe full
under a provider's noise. No Beam.

A 429 means one of two things, and the right answer to each is the opposite of the other's:

- a **limit** (requests or tokens per second or minute, on the account or at a gateway): sending
  slower is the only cure, and the share of 429s falls as we slow down, or the rate the provider
  accepts stays flat;
- **noise** (an aggregator's upstream, a gateway, an overloaded model server refusing some share
  of requests whatever we do): slowing down changes nothing but our own throughput, so the
  refused request waits its own Retry-After and every other slot keeps going.

``Controller`` finds out which by experiment (``limit_trial``): when the share of 429s over the
last few hundred answers (at most 3 s of them) passes a threshold, it paces the process at the
rate the provider accepted for half a second, then at half that, and compares the two stages.
If the accepted rate halved with the send rate while the share of 429s stayed put, it was
noise: back to full speed, and that share is remembered as the provider's noise floor. If the
429s all but stopped when we slowed down, or the provider accepted as much at half the rate, it
was a limit, and the process is paced at its edge by ``rate_search.RateSearch``: sends evenly
spaced (``ratelimit.Pacer``; a leaky bucket without burst refuses any two requests closer than
1/rate), every round of answers judged against the noise floor (cut to what was accepted, climb
back under the pace that drew the 429s, probe past it now and then), and a fixed window's reset,
once the 429s' Retry-After name it (``rate_search.ResetWatch``), waited for by the whole process
(``ThrottleGate``) instead of drawing a 429 per slot, then paced at the quota per window. A
quota spent with no reset to read (429s with ``Retry-After: 1`` until the minute ends) holds
everyone, twice as long each time nothing got through in between.

A 429 that says the provider is short of capacity (OpenAI flex's "resource unavailable") is
noise by its own words: counted, never judged (``release(capacity=True)``).

Noise refuses any request, a retry as often as a first try; a limit on tokens refuses the same
large requests again and again (they wait for a bucket the small ones keep empty), so its 429s
do not fall as soon as the pace is cut. The client says which answers are to requests refused
before (``release(again=True)``), and no verdict calls 429s noise while retries are refused far
more often than first tries (``rate_search.refused_again``), nor a storm (half the answers).

Each request's own Retry-After (or Gemini's ``RetryInfo.retryDelay``, read by
``responses.retry_after_of``) is always honoured for that request. Before any 429, providers
that say what is left are heeded (``rate_headers.header_pace``: OpenAI's, Anthropic's and the
IETF draft's headers).

Requests start at a few in flight and gain one slot per success up to ``--max_concurrency``
(slow start), so a cold job does not open with a burst the provider must refuse.

Every verdict is logged (test results at INFO, each round's decision at DEBUG: limit or noise,
and the pace it settled on), and ``take_counts`` hands the worker the counters the job's summary
turns into its back-pressure line (the rate held, and why).

A little over 400 lines for a reason: ``Controller`` is one state machine (clear, testing,
limited) under one lock; the trial lives in ``limit_trial``, the pace's arithmetic in
``rate_search`` and ``rate_headers``.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping

from transforms.core.api.limit_trial import Trial, Watch
from transforms.core.api.rate_headers import header_pace
from transforms.core.api.rate_search import AcceptedHistory, RateSearch, ResetWatch
from transforms.core.api.ratelimit import Pacer, SlowStartSlots, ThrottleGate, Ticket

_LOGGER = logging.getLogger(__name__)

CLEAR, TESTING, LIMITED = "clear", "testing", "limited"


class Controller:
    """Flow control for one worker process's requests (thread-safe).

    ``acquire()`` before sending (waits for a slot, the gate and the pace; returns the seconds
    waited that a limit cost, and the send time); ``release(...)`` with what came back.
    ``reserve`` / ``claim`` are the same waits without the blocking, for a simulation.
    """

    def __init__(
        self,
        max_concurrency: int,
        *,
        initial: int = 4,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        wall: Callable[[], float] = time.time,
        test_seconds: float = 0.5,
        window_answers: int = 256,
        window_seconds: float = 3.0,
        min_429s: int = 5,
    ):
        self.slots = SlowStartSlots(max_concurrency, initial=initial)
        self.gate = ThrottleGate(clock=clock, sleep=sleep)
        self.pacer = Pacer(clock=clock)
        self._clock, self._sleep, self._wall = clock, sleep, wall
        self._lock = threading.Lock()
        self.state = CLEAR
        self.noise = 0.0  # share of 429s found not to fall when we slowed down
        self.tests = 0
        self.limits_found = 0
        self.noise_found = 0
        self.search: RateSearch | None = None
        self.resets = ResetWatch()
        self._test_seconds = test_seconds
        self.watch = Watch(window_answers, window_seconds, min_429s)
        self.trial: Trial | None = None
        self._history = AcceptedHistory()
        # whether each of the last 8 answers since the last gate hold was a 429 (limited)
        self._round: collections.deque = collections.deque(maxlen=8)
        self._holds = 0  # gate holds in a row with nothing accepted between them
        self._limited_since = -math.inf
        self._quiet_from = -math.inf  # since when the pace could have been used (no hold)
        self._sends: collections.deque = collections.deque()  # send times while limited
        self._hint_rate: float | None = None
        self._hint_until = -math.inf
        self._tokens_per_request: float | None = None
        self._counts: collections.Counter = collections.Counter()
        self._pace_mrps = self._pace_reported = 0  # the last pace held, and as last reported
        self._paced_from: float | None = None
        self._hinted_from: float | None = None

    # -- before sending ------------------------------------------------------------------------
    @property
    def rate(self) -> float | None:
        """The pace this controller set (testing, limited); None at full speed."""
        if self.state == LIMITED and self.search is not None:
            return self.search.rate
        if self.state == TESTING:
            return self.trial.rate
        return None

    @property
    def limited(self) -> bool:
        """True while the process is slowed for a (suspected or found) limit: waits then count
        as throttling (``cumulativeThrottlingSeconds``)."""
        return self.state != CLEAR or self._clock() < self._hint_until

    def acquire(self) -> tuple[float, float]:
        """Wait for a slot, the gate and the pace. Returns the seconds a limit cost and the
        instant the request was let go, which ``release`` takes back as ``sent_at``: the answer
        belongs to the pace in force then."""
        self.slots.acquire()  # slow start and the concurrency cap: our own choice, not a limit
        ticket = self.reserve()
        waited = 0.0
        while True:
            wait = self.claim(ticket)
            if wait is None:
                return waited, self._clock()
            # in short steps: a slower pace or a longer pause set meanwhile is seen in time
            step = min(wait, 0.2)
            self._sleep(step)
            waited += step

    def reserve(self) -> Ticket:
        """A turn at the pace in force (call with a slot held)."""
        self._repace()
        return self.pacer.reserve()

    def claim(self, ticket: Ticket) -> float | None:
        """None: send now; else the seconds to wait before claiming again (the gate, the pace)."""
        self._repace()
        wait = self.pacer.claim(ticket, self.gate.until)
        if wait is None and self.state == LIMITED:
            with self._lock:
                self._sends.append(self._clock())
        return wait

    def _repace(self) -> None:
        """The pacer's rate: the slower of the limit's pace and the headers' while they hold."""
        now = self._clock()
        rates = [self.rate]
        if now < self._hint_until:
            rates.append(self._hint_rate)
        rates = [r for r in rates if r]
        rate = min(rates) if rates else None
        if rate != self.pacer.rate:
            self.pacer.set_rate(rate)

    # -- after the answer ----------------------------------------------------------------------
    def release(
        self,
        sent_at: float,
        status: int | None,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
        capacity: bool = False,
        again: bool = False,
    ) -> None:
        """What came back for a request sent at ``sent_at``: its HTTP status (None: nothing
        came back), a 429's wait, the headers; ``capacity``: a 429 saying the provider is short
        of capacity; ``again``: the request was answered 429 before (a retry after one)."""
        if capacity:
            # the provider short of capacity (flex's 429 "resource unavailable"): its noise by
            # its own words, never a limit; that request waits its own Retry-After, the pipe
            # stays full and the pace is untouched
            self.slots.release(succeeded=False, end_slow_start=False)
            with self._lock:
                self._counts["backpressure_capacity_429"] += 1
            return
        ok, throttled = status == 200, status == 429
        # the first 429 ends the slow start (the slots stop doubling), without halving them
        self.slots.release(succeeded=ok, end_slow_start=throttled)
        if status is None:
            return  # nothing came back (not sent, or no answer): says nothing about a limit
        with self._lock:
            now = self._clock()
            if headers:
                self._read_hints(headers, now)
            self._history.add(sent_at, ok, throttled)
            if self._watch_reset(now, throttled, retry_after):
                return
            if self.state == CLEAR:
                self._observe_clear(now, sent_at, throttled)
            elif self.state == TESTING:
                self._observe_test(now, sent_at, ok, throttled, again)
            else:
                self._counts["backpressure_paced_ok"] += ok
                self._counts["backpressure_paced_429"] += throttled
                self._observe_limited(now, sent_at, ok, throttled, retry_after, again)

    def note_tokens(self, total_tokens: int | None) -> None:
        """A successful answer's token count: the size of a request for the token hints."""
        if not total_tokens or total_tokens <= 0:
            return
        with self._lock:
            t = self._tokens_per_request
            self._tokens_per_request = total_tokens if t is None else 0.9 * t + 0.1 * total_tokens

    def _watch_reset(self, now: float, throttled: bool, retry_after: float | None) -> bool:
        """A fixed window's reset made plain by this answer: hold everyone until it, pace at the
        quota per window once two resets are known. True when it took the answer."""
        reset = self.resets.observe(now, throttled, retry_after)
        if reset is None:
            return False
        self.gate.hold(reset - now + 0.05)
        self._counts["backpressure_window_resets"] += 1
        window = self.resets.period()
        if window is not None:
            start, end = window
            quota = self._history.accepted(start, end) / max(1.0, end - start)
        else:  # what was accepted so far, over the time to this reset
            start = self._history.first()
            quota = self._history.accepted(start, now + 1) / max(1.0, reset - start)
        if self.state != LIMITED:
            self._found(now, 0.98 * quota, 1.0, quota, "a fixed window", quota)
        if window is not None and quota > 0:
            self.search.window(quota, now)
        # the next round starts at the reset: the hold is no time sent at the pace
        self.search._begin(reset)
        self._quiet_from = reset
        _LOGGER.info(
            "back-pressure: 429s count down to one instant, a fixed window's reset: holding "
            "every request %.1f s until it, then pacing at %.2f requests/s (%s)",
            reset - now,
            self.search.rate,
            "the quota per window" if window is not None else "what was accepted so far",
        )
        return True

    def _observe_clear(self, now, sent_at, throttled) -> None:
        start = self.watch.observe(now, sent_at, throttled, self.noise)
        if start is None:
            return
        self.state, self.tests = TESTING, self.tests + 1
        self.trial = Trial(now, start, self._test_seconds, self._history)
        _LOGGER.info(
            "back-pressure: %.0f%% of the last %d answers were 429; pacing at %.1f/s, then at "
            "half that, to tell a limit from noise",
            100 * start.share,
            start.n,
            start.rate,
        )

    def _observe_test(self, now, sent_at, ok, throttled, again) -> None:
        verdict = self.trial.observe(now, sent_at, ok, throttled, again)
        if verdict is None:
            return
        if verdict.limit:
            v = verdict
            return self._found(now, v.rate, v.share, v.accepted, v.why, v.ceiling)
        self.trial = None
        self.state = CLEAR
        share_a, share_b, before = verdict.shares
        self.noise = max(self.noise * 0.5, (share_a + share_b + before) / 3)
        self.noise_found += 1
        self._counts["backpressure_noise_verdicts"] += 1
        _LOGGER.info(
            "back-pressure: verdict noise: 429s stayed at %.0f%% / %.0f%% while the rate was "
            "cut and halved (%.0f%% before); back to full speed, each refused request waits its "
            "own Retry-After",
            100 * share_a,
            100 * share_b,
            100 * before,
        )

    def _found(self, now, rate, share, accepted, why, ceiling=None) -> None:
        self.trial = None
        self.state, self.limits_found = LIMITED, self.limits_found + 1
        self.search = RateSearch(rate, now, self.noise, ceiling)
        self._round.clear()
        self._limited_since = self._quiet_from = now
        self._paced_from = now
        self._sends.clear()
        self._counts["backpressure_limit_verdicts"] += 1
        _LOGGER.info(
            "back-pressure: verdict a rate limit (%s: %.0f%% of answers 429 at the test rate, "
            "%.1f/s accepted); pacing this process at %.1f requests/s",
            why,
            100 * share,
            accepted,
            self.search.rate,
        )

    def _long_rate(self, now: float) -> float:
        """What the provider accepted per second over the long run: over the last whole fixed
        window when two resets are known, else over the last minute of being limited (a
        per-minute window's quota, once a whole one was seen)."""
        window = self.resets.period()
        if window is not None and now - window[1] < 120:
            start, end = window
            return self._history.accepted(start, end) / max(1.0, end - start)
        start = max(self._limited_since, now - 60.0)
        if now - start < 10.0:
            return 0.0
        return self._history.accepted(start, now - 1.0) / max(1.0, now - 1.0 - start)

    def _observe_limited(self, now, sent_at, ok, throttled, retry_after, again) -> None:
        search = self.search
        if sent_at >= search.start:
            last = self._round
            last.append(throttled)
            if ok:
                self._holds = 0
            elif throttled and retry_after and retry_after < 2.0 and sum(last) >= 3:
                if sum(last) > len(last) / 2:
                    # 429s keep coming while paced (most of the last answers since the last
                    # hold): everyone holds off, twice as long each time nothing got through in
                    # between (a quota spent until a reset unsaid)
                    self.gate.hold(min(16.0, retry_after * 2**self._holds))
                    self._holds += 1
                    last.clear()
                    self._quiet_from = self.gate.until  # held: the pace was not for using
        decided = search.observe(now, sent_at, throttled, self._long_rate(now), again)
        if decided is None:
            return
        verdict, share, n = decided
        _LOGGER.debug(
            "back-pressure: round of %d answers, %.0f%% 429 (noise floor %.0f%%): %s; "
            "pace %.2f requests/s (ceiling %s)",
            n,
            100 * share,
            100 * search.floor,
            "a limit, cut" if verdict == "cut" else "within noise, " + verdict,
            search.rate,
            f"{search.ceiling:.2f}" if search.ceiling else "none",
        )
        if search.noise_seen:
            # cut by a quarter across the last rounds and the 429s did not fall: the provider's
            # noise (a limit since lifted, or noise the test took for a limit by chance)
            self.noise = max(self.noise, search.floor)
            self._pacing_off(now)
            self._counts["backpressure_noise_verdicts"] += 1
            _LOGGER.info(
                "back-pressure: the 429s stayed at %.0f%% while the pace was cut by a quarter: "
                "the provider's noise, not a limit; pacing off",
                100 * search.floor,
            )
            return
        # the limit no longer binds: we send well under the pace for a while
        sends = self._sends
        while sends and sends[0] < now - 10.0:
            sends.popleft()
        if now - self._quiet_from > 10.0 and len(sends) / 10.0 < search.rate / 3:
            self._pacing_off(now)
            _LOGGER.info("back-pressure: the limit no longer binds; pacing off")

    def _pacing_off(self, now: float) -> None:
        """Back to full speed (CLEAR), the time paced counted."""
        self.state = CLEAR
        self._settle_paced(now)
        self._paced_from = None
        self.watch.clear()

    def _read_hints(self, headers: Mapping[str, str], now: float) -> None:
        said = header_pace(
            headers, self._wall(), self._tokens_per_request, 2.0 * self.slots.maximum
        )
        if said is None:
            return
        rate, hold = said
        if rate is None:
            if self._hint_until > now:
                self._hint_until = now  # plenty left again
                self._settle_hinted(now)
            return
        if self._hinted_from is None:
            self._hinted_from = now
            self._counts["backpressure_header_paces"] += 1
            _LOGGER.info(
                "back-pressure: the provider's rate-limit headers say little is left; pacing at "
                "%.1f requests/s",
                rate,
            )
        self._hint_rate, self._hint_until = rate, now + hold

    def _settle_paced(self, now: float) -> None:
        if self._paced_from is not None:
            self._counts["backpressure_paced_ms"] += round(1000 * (now - self._paced_from))
            self._paced_from = now

    def _settle_hinted(self, now: float) -> None:
        if self._hinted_from is not None:
            end = min(now, self._hint_until)
            self._counts["backpressure_header_paced_ms"] += round(
                1000 * max(0.0, end - self._hinted_from)
            )
            self._hinted_from = now if now < self._hint_until else None

    def take_counts(self) -> dict[str, int]:
        """The counters' growth since the last call, for the job's metrics: verdicts (limit,
        noise), window resets held for, header paces, time paced (ms) and its answers, and
        ``backpressure_pace_mrps``: the pace in force, in thousandths of a request a second
        (its growth is the change since the last call, so the sum over processes is the job's
        pace)."""
        with self._lock:
            now = self._clock()
            if self.state == LIMITED:
                self._settle_paced(now)
            self._settle_hinted(now)
            pace = self.rate if self.state == LIMITED else None
            if pace is None and now < self._hint_until:
                pace = self._hint_rate
            if pace is not None:  # the last pace held stays once pacing is off
                self._pace_mrps = round(1000 * pace)
            out = {name: value for name, value in self._counts.items() if value}
            if self._pace_mrps != self._pace_reported:
                out["backpressure_pace_mrps"] = self._pace_mrps - self._pace_reported
                self._pace_reported = self._pace_mrps
            self._counts.clear()
            return out

    def describe(self) -> str:
        """For the progress line."""
        if self.state == LIMITED:
            return f"limited, paced at {self.rate:.1f}/s"
        if self.state == TESTING:
            return "testing 429s"
        if self._clock() < self._hint_until and self._hint_rate:
            return f"paced by the provider's headers at {self._hint_rate:.1f}/s"
        return "clear" + (f" (noise {100 * self.noise:.0f}% 429)" if self.noise >= 0.005 else "")
