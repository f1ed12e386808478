"""The pace under a found rate limit, and what the answers say about it. No Beam.

- ``RateSearch``: cut the pace to what was accepted when a round of answers draws more 429s than
  the provider's noise explains, climb back towards the pace that drew them (the ceiling), probe
  past it now and then;
- ``ResetWatch``: a fixed window's reset told from the 429s' Retry-After (they count down to one
  instant), and the resets seen, for the quota per window;
- ``AcceptedHistory``: answers per second of sending over the last two minutes, for the
  long-run accepted rate.

``backpressure.Controller`` drives them under its lock; none is thread-safe on its own.
"""

from __future__ import annotations

import collections
import math
from typing import NamedTuple

from transforms.core.api.ratelimit import MIN_RATE

ROUND = 40  # answers per pace decision while limited (fewer when the 429s are plain)


class Round(NamedTuple):
    """One round of answers: the pace it was sent at, its answers and 429s over ``seconds``,
    and of them the answers (and 429s) to requests answered 429 before."""

    pace: float
    n: int
    k: int
    seconds: float
    n2: int
    k2: int

    @property
    def share(self) -> float:
        return self.k / self.n

    @property
    def sent(self) -> float:
        return self.n / self.seconds

    @property
    def accepted(self) -> float:
        return (self.n - self.k) / self.seconds

    @property
    def fresh(self) -> float:
        """The share of 429s among requests not refused before (all, when too few)."""
        n1 = self.n - self.n2
        return (self.k - self.k2) / n1 if n1 >= 5 else self.share


def _mean(rounds, field: str) -> float:
    return sum(getattr(r, field) for r in rounds) / len(rounds)


def refused_again(n1: int, k1: int, n2: int, k2: int) -> bool:
    """Requests answered 429 before (``k2`` of ``n2`` refused again) are refused far more often
    than fresh ones (``k1`` of ``n1``), beyond chance: the 429s pick on the same requests, as a
    limit on tokens does (a large request waits for a bucket kept empty by the small ones),
    where noise refuses a retry as often as a first try. Three standard deviations of the
    fresh requests' share, and 10 points, above it."""
    if n2 < 5 or n1 < 5:
        return False
    p = max(k1 / n1, 0.02)
    return k2 / n2 >= p + 3 * math.sqrt(p * (1 - p) / n2) + 0.10


class RateSearch:
    """The pace under a found limit: cut to what was accepted when a round of answers draws more
    429s than the provider's noise explains, climb back towards the pace that drew them (the
    ceiling), probe past it now and then. Not thread-safe (the controller's lock guards it)."""

    def __init__(self, rate: float, now: float, noise: float = 0.0, ceiling: float | None = None):
        self.rate = max(MIN_RATE, rate)
        # the lowest pace that drew an excess of 429s (the test's, when it says so)
        self.ceiling = max(ceiling, self.rate) if ceiling else None
        self.good: float | None = None  # the pace of the last round that did not
        self.past: collections.deque = collections.deque(maxlen=12)  # the last Rounds
        self._floor = noise  # what the tests before found, until rounds say better
        self._quiet = 0
        self._probe_wait = 2  # quiet rounds at the ceiling before a probe past it
        self._step = 0.02  # a probe's step past the ceiling; doubles while probes find none
        self._probing = False  # the pace is past the last ceiling found
        self._spent = False  # the last round had every answer refused (a quota spent for now)
        self.noise_seen = False  # the 429s did not fall as the pace was cut: not a limit's
        self.rounds = self.cuts = 0
        self._begin(now)

    def _begin(self, now: float) -> None:
        self.start, self.n, self.k = now, 0, 0
        self.n2 = self.k2 = 0  # of them, answers to requests refused before, and their 429s

    @property
    def floor(self) -> float:
        """The provider's own share of 429s, whatever the pace (``_refloor``)."""
        return self._floor

    def _refloor(self) -> None:
        """The floor anew, when the rounds or the pace change (a round appended, its verdict
        given, a window's quota set; not per answer): the mean share of the last
        rounds sent at least 8 % slower than this one (a limit's 429s grow with the pace past
        it, noise's do not), kept from the last time there were two such rounds, or of the
        last rounds when the pace fell by a quarter across them and their 429s did not; until
        then the noise the tests found."""
        # (each round's share among fresh requests: a limit on tokens refuses the same large
        # requests again and again at any pace it binds, and those are no one's noise)
        slower = [r for r in self.past if r.pace <= 0.92 * self.rate]
        near = [r for r in self.past if r.pace > 0.92 * self.rate]
        if len(slower) >= 2 and near:
            # unless the slower rounds were still above the limit: then they got as much
            # accepted as the rounds near this pace, where noise's accepted rate falls with
            # what is sent (a burst allowance lets the pace drift past a limit, and the 429s
            # of rounds sent a little slower, but above it, taken for noise would let it drift
            # further, round after round)
            sent = _mean(slower, "sent") / max(1e-9, _mean(near, "sent"))
            bound = _mean(slower, "accepted") / max(1e-9, _mean(near, "accepted")) > (1 + sent) / 2
            if not bound:
                self._floor = _mean(slower, "fresh")
        # cut round after round by a quarter or more, and the 429s did not fall with the pace:
        # they are the provider's own (a limit lifted under noise, or noise taken for a limit),
        # not a limit's, which would all but vanish below it
        last = list(self.past)[-8:]
        half = len(last) // 2
        early, late = last[:half], last[-half:]  # in the order the rounds ran
        if len(last) >= 4 and _mean(early, "pace") >= 1.2 * _mean(late, "pace"):
            mean = _mean(last, "share")
            spread = sum((r.share - mean) ** 2 for r in last) / len(last)
            # noise refuses some requests, never most (a spent quota is no floor), and as a
            # coin does, round after round: its shares spread no wider than chance's (a
            # window's quota, spent and renewed, swings from none refused to all)
            steady = spread <= 2.5 * mean * (1 - mean) / max(1.0, _mean(last, "n"))
            # and what noise lets through falls with what is sent, where a limit we are still
            # above accepts as much at the slower pace (a limit on tokens keeps its share of
            # 429s up as the pace is cut: its large requests are refused over and over while
            # the bucket is kept empty): the accepted rate must have fallen at least half as
            # much as the sent rate did
            sent = _mean(late, "sent") / max(1e-9, _mean(early, "sent"))
            fell = _mean(late, "accepted") / max(1e-9, _mean(early, "accepted")) <= (1 + sent) / 2
            # and a retry is refused no more often than a first try, as by a coin
            n2, k2 = sum(r.n2 for r in last), sum(r.k2 for r in last)
            n1, k1 = sum(r.n for r in last) - n2, sum(r.k for r in last) - k2
            fair = not refused_again(n1, k1, n2, k2)
            # the 429s stayed as the pace fell, in the order the rounds ran and from the
            # fastest rounds to the slowest (a climb and a cut in one span mixes the two)
            ranked = sorted(last, key=lambda r: r.pace)
            slow, fast = ranked[:half], ranked[-half:]
            share = lambda part: _mean(part, "share")  # noqa: E731
            stayed = share(late) >= 0.75 * share(early) and share(slow) >= 0.75 * share(fast)
            if 0 < share(early) < 0.5 and stayed and steady and fell and fair:
                self._floor = max(self._floor, mean)
                self.noise_seen = True

    def window(self, quota_rate: float, now: float) -> None:
        """A fixed window's quota per second is known: pace just under it. The window's own
        429s (its quota spent before the reset) go to the reset watch, not to the rounds, so
        the rounds see none: probing past a measured quota would only spend it early, so the
        next probe waits 16 quiet rounds (longer than a minute's window at most paces), and
        each reset measures the quota again."""
        self.ceiling = quota_rate
        self.rate = max(MIN_RATE, 0.98 * quota_rate)
        self.good = None
        self._quiet = 0
        self._probe_wait = max(self._probe_wait, 16)
        self._step = 0.02
        self._probing = False
        self._begin(now)
        self._refloor()

    def margin(self, n: int) -> float:
        """429s beyond the floor that chance does not explain: two standard deviations + 3
        points."""
        f = max(self.floor, 0.01)
        return 2 * math.sqrt(f * (1 - f) / n) + 0.03

    def observe(
        self, now: float, sent_at: float, throttled: bool, long_rate: float, again: bool = False
    ) -> tuple[str, float, int] | None:
        """One answer (``again``: to a request answered 429 before). At the end of a round:
        (``'cut'``, ``'raise'`` or ``'hold'``, the round's share of 429s, its answers), the new
        pace in ``rate``."""
        if sent_at < self.start:
            return None  # sent at an older pace
        self.n += 1
        self.k += throttled
        self.n2 += again
        self.k2 += again and throttled
        n, k = self.n, self.k
        elapsed = max(1e-3, now - self.start)
        share = k / n
        floor = self.floor
        # a round ends early when its 429s are plain, or when there are none while climbing
        plain = n >= 8 and k >= 4 and share >= floor + 2 * self.margin(n)
        climbing = self.ceiling is None and k == 0 and n >= ROUND // 2
        if not (plain or climbing or n >= ROUND or (n >= 10 and elapsed >= 10.0)):
            return None
        self.rounds += 1
        rate = self.rate
        self.past.append(Round(rate, n, k, elapsed, self.n2, self.k2))
        spent, self._spent = self._spent, k == n
        if k == n and spent:
            # nothing accepted again: a quota spent until its reset (a window whose 429s do not
            # say when), where a slower pace gets no more through; the round before cut once,
            # the process-wide holds wait for the reset, and cutting each round of refusals
            # would leave the pace far under the quota once it is back
            verdict = "hold"
        else:
            self._refloor()  # with this round, at the pace it was sent at: for the margin
            if share > floor + self.margin(n):
                self._cut(rate, (n - k) / elapsed, long_rate, plain)
                verdict = "cut"
            elif n / elapsed < 0.7 * rate:
                verdict = "hold"  # the pace did not bind (fewer were sent): raising says nothing
            else:
                verdict = self._raise(rate, k)
        self.rate = max(MIN_RATE, self.rate)
        self._begin(now)
        self._refloor()  # at the new pace
        return verdict, share, n

    def _cut(self, rate: float, accepted: float, long_rate: float, plain: bool) -> None:
        """To what the provider accepted (this round, the last pace without excess, the long
        run), by 5 % at least and half at most."""
        self.cuts += 1
        if self._probing and plain:  # a probe past the ceiling found it plainly: probe less
            self._probe_wait = min(16, 2 * self._probe_wait)
        self._probing = False
        self._step = 0.02
        self.ceiling = rate if self.ceiling is None else min(self.ceiling, rate)
        best = max(0.98 * accepted, 0.97 * long_rate)
        if self.good is not None and self.good < rate:
            best = max(best, 0.97 * self.good)
        self.rate = min(0.95 * rate, max(0.5 * rate, best))
        self._quiet = 0

    def _raise(self, rate: float, k: int) -> str:
        """Climb: fast while no ceiling is known, halfway to just under it, then a probe past
        it every ``_probe_wait`` quiet rounds, of 2 %, doubled each time it finds no limit —
        no 429, or none beyond a known noise floor — (a ceiling found by chance, or a limit
        since raised or lifted, is soon left behind)."""
        self.good = rate
        if self._probing:  # past the old ceiling without excess: the limit may have risen
            self._probe_wait = max(2, self._probe_wait // 2)
            # without a single 429, or with only the provider's own (a noise floor is known,
            # and a round within it says as much as a clean one): probe further
            if k == 0 or self._floor >= 0.02:
                self._step = min(0.25, 2 * self._step)
        c = self.ceiling
        if c is None:
            self.rate = rate * (1.25 if k == 0 else 1.05)
            return "raise"
        if rate < 0.965 * c:
            self.rate = min(0.97 * c, rate + max(0.5 * (0.97 * c - rate), 0.02 * rate))
            return "raise"
        self._quiet += 1
        if self._quiet < self._probe_wait:
            return "hold"
        self._quiet = 0
        self.rate = rate * (1 + self._step)
        if self.rate > 0.97 * c:
            self.ceiling = self.rate / 0.97
            self._probing = True
        return "probe"


class ResetWatch:
    """Tells a fixed window's reset from the 429s' Retry-After: a window's 429s all point at one
    instant (their waits count down), a continuous limit's or noise's at now + a constant. Three
    429s asking for 2 s or more, arrived over at least 1.5 s, whose instants agree within a
    second, name a reset. Also keeps the resets seen, for the quota per window."""

    def __init__(self):
        self._recent: collections.deque = collections.deque(maxlen=16)  # (arrived, instant)
        self._last: collections.deque = collections.deque(maxlen=6)  # instants; None: not one
        self.resets: collections.deque = collections.deque(maxlen=4)
        self.count = 0

    def observe(self, now: float, throttled: bool, retry_after: float | None) -> float | None:
        """An answer (a 429 with its wait); the reset instant when this one makes it plain, once
        per reset: three 429s over 1.5 s or more pointing at one instant, or the last six
        answers all 429s pointing at it (the quota is spent: a cold start at full speed spends
        it in a fraction of a second, and every request after it is refused)."""
        if not throttled or retry_after is None or retry_after < 2.0:
            self._last.append(None)
            return None
        instant = now + retry_after
        self._last.append(instant)
        recent = self._recent
        recent.append((now, instant))
        while recent and recent[0][0] < now - 10.0:
            recent.popleft()
        agree = [(t, i) for t, i in recent if abs(i - instant) <= 1.0]
        last = self._last
        spent = len(last) == last.maxlen and all(
            i is not None and abs(i - instant) <= 1.0 for i in last
        )
        if len(agree) < 3 or (agree[-1][0] - agree[0][0] < 1.5 and not spent):
            return None
        reset = max(i for _, i in agree)
        if self.resets and abs(self.resets[-1] - reset) <= 2.0:
            return None  # this reset is known already
        self.resets.append(reset)
        self.count += 1
        return reset

    def period(self) -> tuple[float, float] | None:
        """The last whole window (start, end), once two resets are known: it ends at the last
        reset and lasts the shortest gap seen between two resets (two resets in a row may be
        several windows apart, when the pace held under the quota and no 429 named the ones
        between)."""
        if len(self.resets) < 2:
            return None
        resets = list(self.resets)
        gap = min(b - a for a, b in zip(resets, resets[1:]))
        return resets[-1] - gap, resets[-1]


class AcceptedHistory:
    """Answers per second of sending over the last two minutes: the long-run accepted rate."""

    def __init__(self, seconds: int = 120):
        self._buckets: collections.deque = collections.deque()  # [second, ok, throttled]
        self._seconds = seconds

    def add(self, sent_at: float, ok: bool, throttled: bool) -> None:
        second = math.floor(sent_at)
        buckets = self._buckets
        if not buckets or buckets[-1][0] < second:
            buckets.append([second, 0, 0])
            while buckets[0][0] < second - self._seconds:
                buckets.popleft()
        for bucket in reversed(buckets):  # an answer to an older send lands in its own second
            if bucket[0] <= second:
                if bucket[0] == second:
                    bucket[1] += ok
                    bucket[2] += throttled
                break

    def first(self) -> float:
        return self._buckets[0][0] if self._buckets else 0.0

    def accepted(self, start: float, end: float) -> int:
        """Accepted requests sent in the seconds that overlap [start, end)."""
        return sum(b[1] for b in self._buckets if start < b[0] + 1 and b[0] < end)
