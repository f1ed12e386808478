"""Back-pressure that keeps the pipe full: tell an account's limit from a provider's noise. No Beam.

A 429 means one of two things, and the right answer to each is the opposite of the other's:

- a **limit** (requests or tokens per minute on the account): sending slower is the only cure, and
  the share of 429s falls as we slow down, or the rate the provider accepts stays flat;
- **noise** (an aggregator's upstream, a gateway, an overloaded model server refusing some share
  of requests whatever we do): slowing down changes nothing but our own throughput, so the
  refused request waits its own Retry-After and every other slot keeps going.

``Controller`` finds out which by experiment, the way the question is posed: when the share of
429s over the last few hundred answers (at most 3 s of them) passes a threshold, it paces the
process at the rate the provider accepted for half a second, then at half that, and compares the
two stages (both after the provider's burst allowance is spent). If the accepted rate halved with
the send rate while the share of 429s stayed put, it was noise: the controller goes back to full
speed and remembers that share as the provider's noise floor (later tests start only above twice
it). If the 429s all but stopped (under 40 % of the share before) when we slowed down, or the
provider accepted as much at half the rate, it was a limit: the
process is paced at the rate the provider accepted, then, every 40 answers, raises the pace by
5 % or, when that round saw more 429s than the provider's own noise explains (the mean share of
the last rounds right after a cut that saw fewer 429s than the one before, plus two standard
deviations and 3 points), lowers it to 85 % — AIMD on the rate, as TCP does on its window — so
it sits just under the limit with few 429s. Beam's ``AdaptiveThrottler`` (the client-side
throttling of Google's SRE book) throttles only when accepts fall below requests / K; with K = 2
it tolerates 50 % 429s, which is what this avoids.

Each request's own Retry-After is always honoured for that request (the client's back-off). The
process-wide pause (``ThrottleGate``) is used only for a limit: when one is found, and when 429s
keep coming while paced. Before any 429, providers that say how much is left are heeded:
OpenAI's ``x-ratelimit-remaining-requests`` / ``-tokens`` with ``x-ratelimit-reset-*`` (and the
IETF draft's ``ratelimit-remaining`` / ``ratelimit-reset``) cap the rate at what is left over the
time to the reset once little is left.

Requests start at a few in flight and gain one slot per success up to ``--max_concurrency``
(slow start), so a cold job does not open with a burst the provider must refuse.
"""

from __future__ import annotations

import collections
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping

from transforms.core.api.ratelimit import AdaptiveConcurrency, ThrottleGate

_LOGGER = logging.getLogger(__name__)

CLEAR, TESTING, LIMITED = "clear", "testing", "limited"
ROUND = 40  # answers per pace adjustment while limited

_DURATION = re.compile(
    r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?"
    r"(?:(\d+(?:\.\d+)?)ms)?$"
)


def _vanished(k: int, n: int, before: float) -> bool:
    """``k`` 429s in ``n`` answers are far fewer than the share ``before`` would give, beyond
    chance. The share that started a test is the high end of what noise gives (the test starts
    because a window ran high), so the count is compared with half of it: fewer than 40 % of
    that, and 2.5 standard deviations of a binomial count below it."""
    share = before / 2
    expected = share * n
    return k < 0.4 * expected and expected - k >= 2.5 * math.sqrt(expected * (1 - share))


def parse_duration(text: str | None) -> float | None:
    """Seconds in ``1s``, ``6m0s``, ``20ms``, ``1h2m3.5s`` (OpenAI's reset headers) or a bare
    number of seconds; None when unreadable, negative or absurd."""
    if text is None:
        return None
    text = str(text).strip().lower()[:40]
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        match = _DURATION.match(text)
        if not match or not any(match.groups()):
            return None
        h, m, s, ms = (float(g) if g else 0.0 for g in match.groups())
        value = h * 3600 + m * 60 + s + ms / 1000
    if not math.isfinite(value) or value < 0 or value > 86_400:
        return None
    return value


def _int_header(headers: Mapping[str, str], *names: str) -> int | None:
    for name in names:
        value = headers.get(name)
        if value is None:
            continue
        try:
            number = int(float(str(value).split(",")[0].strip()[:30]))
        except (ValueError, OverflowError):
            continue
        if 0 <= number < 2**53:
            return number
    return None


class Controller:
    """Flow control for one worker process's requests (thread-safe).

    ``acquire()`` before sending (waits for a slot, the gate and the pace; returns the seconds
    waited that a limit cost, and the send time); ``release(...)`` with what came back.
    """

    def __init__(
        self,
        max_concurrency: int,
        *,
        initial: int = 4,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        test_seconds: float = 0.5,
        window_answers: int = 256,
        window_seconds: float = 3.0,
        min_429s: int = 5,
    ):
        self.slots = AdaptiveConcurrency(max_concurrency, initial=initial, clock=clock)
        self.gate = ThrottleGate(clock=clock, sleep=sleep)
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self.state = CLEAR
        self.rate: float | None = None  # paced requests per second (testing, limited)
        self.noise = 0.0  # share of 429s found not to fall when we slowed down
        self.tests = 0
        self.limits_found = 0
        self._test_seconds = test_seconds
        self._window_answers = window_answers
        self._window_seconds = window_seconds
        self._min_429s = min_429s
        self._recent: collections.deque = collections.deque()  # (sent_at, ok, throttled)
        self._last_look = -math.inf
        self._test: dict | None = None
        self._next_send = -math.inf
        self._epoch = 0  # bumped when the pace slows: waiters then take new turns
        self._last_cut = -math.inf
        self._round = [0, 0]  # answers and 429s since the pace last changed (limited)
        self._floors: collections.deque = collections.deque(maxlen=5)  # shares after cuts
        self._after_cut = False
        self._cut_share = 1.0
        self._limited_since = -math.inf
        self._last_429 = -math.inf
        self._sends: collections.deque = collections.deque()  # send times while limited
        self._hint_rate: float | None = None
        self._hint_until = -math.inf
        self._tokens_per_request: float | None = None

    # -- before sending ------------------------------------------------------------------------
    @property
    def limited(self) -> bool:
        """True while the process is slowed for a (suspected or found) limit: waits then count
        as throttling (``cumulativeThrottlingSeconds``)."""
        return self.state != CLEAR or self._clock() < self._hint_until

    def acquire(self) -> tuple[float, float]:
        """Wait for a slot, the gate and the pace. Returns the seconds a limit cost and the
        instant the pace was granted: the request belongs to the rate in force then (a thread
        that was given a slot at one test stage's rate and woke in the next counts for the
        first), which ``release`` takes back as ``sent_at``."""
        self.slots.acquire()  # slow start and the concurrency cap: our own choice, not a limit
        throttled = self.gate.wait()
        waited, granted = self._pace()
        if self.state == LIMITED:
            with self._lock:
                self._sends.append(granted)
        return throttled + waited, granted

    def _pace(self) -> tuple[float, float]:
        """Wait for this request's turn at the pace in force. A slower pace set while waiting
        (a test stage, a cut) voids the turns handed out at the old one: the waiters queue
        again, so requests granted at the old rate do not pour out at it afterwards."""
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                rate = self._effective_rate(now)
                if rate is None:
                    return waited, now
                slot = max(now, self._next_send)
                self._next_send = slot + 1.0 / rate
                epoch = self._epoch
            while True:
                wait = slot - self._clock()
                if wait <= 0:
                    return waited, now
                step = min(wait, 0.2)
                self._sleep(step)
                waited += step
                if self._epoch != epoch:
                    break  # the pace changed under us: take a new turn

    def _effective_rate(self, now: float) -> float | None:
        rates = [r for r in (self.rate, self._hint_rate if now < self._hint_until else None) if r]
        return min(rates) if rates else None

    # -- after the answer ----------------------------------------------------------------------
    def release(
        self,
        sent_at: float,
        status: int | None,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        ok, throttled = status == 200, status == 429
        # the first 429 ends the slow start (the slots stop doubling), without halving them
        self.slots.release(succeeded=ok, end_slow_start=throttled)
        with self._lock:
            now = self._clock()
            if headers:
                self._read_hints(headers, now)
            if self.state == CLEAR:
                self._observe_clear(now, sent_at, ok, throttled, retry_after)
            elif self.state == TESTING:
                self._observe_test(now, sent_at, ok, throttled, retry_after)
            else:
                self._observe_limited(now, sent_at, ok, throttled, retry_after)
            if throttled:
                self._last_429 = now

    def note_tokens(self, total_tokens: int | None) -> None:
        """A successful answer's token count: the size of a request for the token hints."""
        if not total_tokens or total_tokens <= 0:
            return
        with self._lock:
            t = self._tokens_per_request
            self._tokens_per_request = total_tokens if t is None else 0.9 * t + 0.1 * total_tokens

    def _observe_clear(self, now, sent_at, ok, throttled, retry_after) -> None:
        recent = self._recent
        recent.append((sent_at, ok, throttled))
        while len(recent) > 20 and (
            recent[0][0] < now - self._window_seconds
            or (len(recent) > self._window_answers and recent[1][0] < now - 1.0)
        ):
            recent.popleft()
        n = len(recent)
        # look at every 429 while the window is short (a cold start against a limit sends a
        # hundred requests in half a second), at most ten times a second once it is long
        if not throttled or (n > 64 and now - self._last_look < 0.1):
            return
        self._last_look = now
        n429 = sum(1 for _, _, t in recent if t)
        share = n429 / n
        span = now - recent[0][0]
        if n429 < self._min_429s or share <= max(0.1, 2 * self.noise + 0.02):
            return
        # a storm (half the answers refused) is no provider's everyday noise: test at once;
        # otherwise wait for a second of answers (a provider's burst allowance is about a
        # second of its limit, and a cold start spends it in the first few hundred milliseconds)
        storm = share >= 0.5 and n >= 10
        if span < 1.0 and not storm:
            return
        sent_rate = n / max(0.1, span)
        accepted = (n - n429) / max(1.0, span)
        self.state, self.tests = TESTING, self.tests + 1
        self._test = {"stages": [], "before": share}
        recent.clear()
        # first at the rate the provider accepted (just under a limit, a little under noise),
        # then at half that
        self._stage(now, max(0.2, sent_rate / 32, min(accepted, sent_rate)))
        _LOGGER.info(
            "back-pressure: %.0f%% of the last %d answers were 429; pacing at %.1f/s, then at "
            "half that, to tell a limit from noise",
            100 * share,
            n,
            self.rate,
        )

    def _repace(self, now: float, rate: float | None) -> None:
        """A new (slower, or no) pace from now on: turns granted at the old one are void."""
        self.rate = rate
        self._next_send = now
        self._epoch += 1

    def _stage(self, now: float, rate: float) -> None:
        self._repace(now, rate)
        self._test.update(start=now, n=0, ok=0, t=0)

    def _observe_test(self, now, sent_at, ok, throttled, retry_after) -> None:
        test = self._test
        if sent_at < test["start"]:
            return  # sent before this stage's rate: says nothing about it
        test["n"] += 1
        test["ok"] += ok
        test["t"] += throttled
        elapsed, n, k, before = now - test["start"], test["n"], test["t"], test["before"]
        if elapsed < self._test_seconds or n < 10:
            return
        first = not test["stages"]
        if _vanished(k, n, before):
            # the 429s all but stopped at this stage's rate: a limit, and this rate is under it;
            # after a first stage above it, what that stage got accepted is the limit's measure
            rate = self.rate if first else max(self.rate, 0.95 * test["stages"][0][2])
            return self._found(now, rate, k / n, test["ok"] / elapsed, None)
        # the share did not fall by much (as _vanished counts it), or the stage ran long enough:
        # otherwise wait for the answers that make a fall certain either way
        settled = n >= 20 and k >= 0.4 * (before / 2) * n
        if not settled and elapsed < 8 * self._test_seconds:
            return
        test["stages"].append((self.rate, k / n, test["ok"] / elapsed, n))
        if first:
            # half of what was actually sent: the first stage's pace may not have bound (a job
            # short of CPU sends slower than any pace)
            return self._stage(now, max(0.2, min(self.rate, n / elapsed) / 2))
        (rate_a, share_a, accepted_a, n_a), (_, share_b, accepted_b, n_b) = test["stages"]
        pooled = (share_a * n_a + share_b * n_b) / (n_a + n_b)
        if _vanished(round(pooled * (n_a + n_b)), n_a + n_b, before) or (
            before >= 0.5 and pooled < 0.5 * before
        ):
            # over both stages the 429s fell well below their share before (for a storm: to
            # under half of it; no provider's noise refuses half of all requests): a limit,
            # and the first stage's rate (what the provider had accepted) is at or under it
            return self._found(now, max(rate_a, 0.95 * accepted_a), pooled, accepted_a, None)
        if accepted_b >= 0.7 * accepted_a:
            # both stages above the limit (its burst allowance spent): it accepted as much at
            # half the rate
            return self._found(now, 0.95 * accepted_b, share_b, accepted_b, retry_after)
        self._test = None
        self.state = CLEAR
        self._repace(now, None)
        self.noise = max(self.noise * 0.5, (share_a + share_b + before) / 3)
        _LOGGER.info(
            "back-pressure: 429s stayed at %.0f%% / %.0f%% while the rate was cut and halved "
            "(%.0f%% before): the provider's noise, not a limit; back to full speed, each "
            "refused request waits its own Retry-After",
            100 * share_a,
            100 * share_b,
            100 * before,
        )

    def _found(self, now, rate, share, accepted, retry_after) -> None:
        self._test = None
        self.state, self.limits_found = LIMITED, self.limits_found + 1
        self._repace(now, max(0.2, rate))
        self._last_cut = now
        self._round = [0, 0]
        self._floors.clear()
        self._after_cut, self._cut_share = True, 1.0
        self._limited_since = now
        self._sends.clear()
        if retry_after:
            self.gate.hold(retry_after)
        _LOGGER.info(
            "back-pressure: a rate limit (%.0f%% of answers 429 at the test rate, %.1f/s "
            "accepted); pacing this process at %.1f requests/s",
            100 * share,
            accepted,
            self.rate,
        )

    def _observe_limited(self, now, sent_at, ok, throttled, retry_after) -> None:
        if sent_at < self._last_cut:
            return  # sent at the old pace
        win = self._round
        win[0] += 1
        win[1] += throttled
        if throttled and retry_after and win[1] >= 3 and win[1] > win[0] / 2:
            self.gate.hold(retry_after)  # 429s keep coming while paced: everyone holds off
        if win[0] < ROUND:
            return
        share = win[1] / win[0]
        if self._after_cut and share < self._cut_share:
            # a round right after a cut that saw fewer 429s than the one before it ran under
            # the limit, or closer to it: the mean share of the last few such rounds is the
            # provider's own noise
            self._floors.append(share)
        floor = sum(self._floors) / len(self._floors) if self._floors else 0.0
        # beyond what chance would give at the noise floor (two standard deviations)
        margin = 2 * math.sqrt(floor * (1 - floor) / win[0]) + 0.03
        self._after_cut = share > floor + margin
        if self._after_cut:
            self._cut_share = share
            self._repace(now, max(0.2, self.rate * 0.85))
        else:
            self.rate *= 1.05
        self._last_cut = now
        self._round = [0, 0]
        # the limit no longer binds: we send well under the pace for a while
        sends = self._sends
        while sends and sends[0] < now - 10.0:
            sends.popleft()
        if now - self._limited_since > 10.0 and len(sends) / 10.0 < self.rate / 3:
            self.state = CLEAR
            self._repace(now, None)
            self._recent.clear()
            _LOGGER.info("back-pressure: the limit no longer binds; pacing off")

    def _read_hints(self, headers: Mapping[str, str], now: float) -> None:
        lower = {str(k).lower(): v for k, v in headers.items()}
        cap = None
        reset_at = -math.inf
        floor = 2 * self.slots.maximum
        left = _int_header(lower, "x-ratelimit-remaining-requests", "ratelimit-remaining")
        reset = parse_duration(
            lower.get("x-ratelimit-reset-requests") or lower.get("ratelimit-reset")
        )
        if left is not None and reset and left <= floor:
            cap = max(left, 1) / reset
            reset_at = now + reset
        tokens = _int_header(lower, "x-ratelimit-remaining-tokens")
        tokens_reset = parse_duration(lower.get("x-ratelimit-reset-tokens"))
        size = self._tokens_per_request
        if tokens is not None and tokens_reset and size and tokens <= floor * size:
            token_cap = max(tokens / size, 1) / tokens_reset
            cap = token_cap if cap is None else min(cap, token_cap)
            reset_at = max(reset_at, now + tokens_reset)
        if cap is not None:
            self._hint_rate, self._hint_until = max(0.2, cap), reset_at
        elif left is not None and left > floor:
            self._hint_until = -math.inf  # plenty left again

    def describe(self) -> str:
        """For the progress line."""
        if self.state == LIMITED:
            return f"limited, paced at {self.rate:.1f}/s"
        if self.state == TESTING:
            return "testing 429s"
        return "clear" + (f" (noise {100 * self.noise:.0f}% 429)" if self.noise >= 0.005 else "")
