"""Telling a rate limit from a provider's noise by experiment, for ``backpressure.Controller``.
No Beam.

- ``Watch``: the answers of the last few seconds at full speed; says when their 429s call for a
  trial (more than noise explains, over a second of answers, or a storm at once);
- ``Trial``: pace at the rate the provider accepted for half a second, then at half that, and
  compare: a ``Verdict``, limit or noise.

Neither is thread-safe: the controller's lock guards them.
"""

from __future__ import annotations

import collections
import dataclasses
import math

from transforms.core.api.rate_search import AcceptedHistory, refused_again
from transforms.core.api.ratelimit import MIN_RATE


def vanished(k: int, n: int, before: float) -> bool:
    """``k`` 429s in ``n`` answers are far fewer than the share ``before`` would give, beyond
    chance. The share that started a test is the high end of what noise gives (the test starts
    because a window ran high), so the count is compared with half of it: fewer than 40 % of
    that, and 2.5 standard deviations of a binomial count below it."""
    share = before / 2
    expected = share * n
    return k < 0.4 * expected and expected - k >= 2.5 * math.sqrt(expected * (1 - share))


@dataclasses.dataclass(frozen=True)
class Start:
    """Why a trial starts: the share of 429s over the last ``n`` answers, and the rate to pace
    at first (what the provider accepted)."""

    share: float
    n: int
    rate: float


class Watch:
    """The answers of the last ``window_seconds`` (at most ``window_answers`` once over a
    second old) while at full speed."""

    def __init__(self, window_answers: int, window_seconds: float, min_429s: int):
        self._window_answers = window_answers
        self._window_seconds = window_seconds
        self._min_429s = min_429s
        self._recent: collections.deque = collections.deque()  # (sent_at, throttled)
        self._last_look = -math.inf

    def clear(self) -> None:
        self._recent.clear()

    def observe(self, now: float, sent_at: float, throttled: bool, noise: float):
        """One answer; a ``Start`` when the 429s call for a trial (the window is then cleared).
        ``noise``: the share of 429s found to be the provider's own."""
        recent = self._recent
        recent.append((sent_at, throttled))
        while len(recent) > 20 and (
            recent[0][0] < now - self._window_seconds
            or (len(recent) > self._window_answers and recent[1][0] < now - 1.0)
        ):
            recent.popleft()
        n = len(recent)
        # look at every 429 while the window is short (a cold start against a limit sends a
        # hundred requests in half a second), at most ten times a second once it is long
        if not throttled or (n > 64 and now - self._last_look < 0.1):
            return None
        self._last_look = now
        n429 = sum(1 for _, t in recent if t)
        share = n429 / n
        span = now - recent[0][0]
        if n429 < self._min_429s or share <= max(0.1, 2 * noise + 0.02):
            return None
        # a storm (half the answers refused) is no provider's everyday noise: test at once;
        # otherwise wait for a second of answers (a provider's burst allowance is about a
        # second of its limit, and a cold start spends it in the first few hundred milliseconds)
        storm = share >= 0.5 and n >= 10
        if span < 1.0 and not storm:
            return None
        sent_rate = n / max(0.1, span)
        accepted = (n - n429) / max(1.0, span)
        recent.clear()
        # first at the rate the provider accepted (just under a limit, a little under noise)
        return Start(share, n, max(MIN_RATE, sent_rate / 32, min(accepted, sent_rate)))


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A trial's end. A limit: the pace to start at (``rate``), the share of 429s and the rate
    accepted at the test's pace, why, and the pace that drew the 429s (``ceiling``). Noise:
    ``shares``, the 429s at each stage and before, and ``why`` is empty."""

    limit: bool
    rate: float = 0.0
    share: float = 0.0
    accepted: float = 0.0
    why: str = ""
    ceiling: float | None = None
    shares: tuple = ()


class Trial:
    """Pace at ``rate`` for ``seconds`` (or until the answers make a fall certain), then at half
    what was sent, and compare the two stages with the share ``before``. ``history``: the
    answers so far, for a quota spent with no reset to read."""

    def __init__(self, now: float, start: Start, seconds: float, history: AcceptedHistory):
        self.before = start.share
        self.rate = start.rate
        self._seconds = seconds
        self._history = history
        self._stages: list = []  # (rate, share, accepted, n) per stage run
        self._fresh = [0, 0]  # over both stages: answers to requests not refused before, 429s
        self._again = [0, 0]  # and to requests answered 429 before
        self._stage(now, start.rate)

    def _stage(self, now: float, rate: float) -> None:
        self.rate = rate
        self._start, self._n, self._ok, self._k = now, 0, 0, 0

    def observe(self, now, sent_at, ok, throttled, again) -> Verdict | None:
        if sent_at < self._start:
            return None  # sent before this stage's rate: says nothing about it
        self._n += 1
        self._ok += ok
        self._k += throttled
        counts = self._again if again else self._fresh
        counts[0] += 1
        counts[1] += throttled
        elapsed, n, k, before = now - self._start, self._n, self._k, self.before
        if elapsed < self._seconds or n < 10:
            return None
        first = not self._stages
        rate = self.rate
        if vanished(k, n, before):
            # the 429s all but stopped at this stage's rate: a limit, and this rate is under it;
            # after a first stage above it, what that stage got accepted is the limit's measure
            accepted = self._ok / elapsed
            if first:
                return Verdict(True, rate, k / n, accepted, "the 429s stopped")
            rate_a, _, accepted_a, _ = self._stages[0]
            # the first stage's pace drew the 429s: the ceiling to climb back under
            found = max(rate, 0.95 * accepted_a)
            return Verdict(True, found, k / n, accepted, "the 429s stopped", rate_a)
        # the share did not fall by much (as vanished counts it), or the stage ran long enough:
        # otherwise wait for the answers that make a fall certain either way
        settled = n >= 20 and k >= 0.4 * (before / 2) * n
        if not settled and elapsed < 8 * self._seconds:
            return None
        self._stages.append((rate, k / n, self._ok / elapsed, n))
        if first:
            # half of what was actually sent: the first stage's pace may not have bound (a job
            # short of CPU sends slower than any pace)
            self._stage(now, max(MIN_RATE, min(rate, n / elapsed) / 2))
            return None
        return self._judge(now)

    def _judge(self, now: float) -> Verdict:
        (rate_a, share_a, accepted_a, n_a), (_, share_b, accepted_b, n_b) = self._stages
        before = self.before
        pooled = (share_a * n_a + share_b * n_b) / (n_a + n_b)
        if vanished(round(pooled * (n_a + n_b)), n_a + n_b, before) or (
            before >= 0.5 and pooled < 0.5 * before
        ):
            # over both stages the 429s fell well below their share before (for a storm: to
            # under half of it; no provider's noise refuses half of all requests): a limit,
            # and the first stage's rate (what the provider had accepted) is at or under it
            return Verdict(
                True, max(rate_a, 0.95 * accepted_a), pooled, accepted_a, "the 429s fell"
            )
        if accepted_a < 0.5 and accepted_b < 0.5:
            # nothing was accepted at either rate: a quota spent for now (a window without a
            # reset to read); what it accepted so far is the only measure of it
            start = self._history.first()
            so_far = self._history.accepted(start, now + 1) / max(1.0, now - start)
            return Verdict(True, so_far, pooled, accepted_a, "a quota spent for now")
        ceiling = 1.1 * max(accepted_a, accepted_b)
        if accepted_b >= 0.7 * accepted_a:
            # both stages above the limit (its burst allowance spent): it accepted as much at
            # half the rate
            why = "as much was accepted at half the rate"
            return Verdict(True, 0.95 * accepted_b, share_b, accepted_b, why, ceiling)
        if before >= 0.5 or refused_again(*self._fresh, *self._again):
            # a storm (half of all answers refused) did not fall by half within the test's
            # short stages (a large burst allowance spent meanwhile, retries landing), or the
            # 429s picked on the requests refused before, as a limit on tokens does (its large
            # requests wait for a bucket the small ones keep empty): neither is noise
            why = "a storm of 429s" if before >= 0.5 else "refused again and again"
            return Verdict(True, 0.95 * accepted_b, share_b, accepted_b, why, ceiling)
        return Verdict(False, shares=(share_a, share_b, before))
