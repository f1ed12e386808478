"""Flow control shared by all threads of one worker process (no Beam import).

- ``RateLimiter``: a budget of units per minute (requests, or tokens). Units are handed out as
  evenly spaced slots instead of bursts, so a provider that enforces its limit over short windows
  never sees more than the budget; a caller may pay for more units than one (a request's
  estimated tokens) and settle the difference later (``adjust``).
- ``SlowStartSlots``: how many requests may be in flight, from a slow start up to the cap.
- ``ThrottleGate``: a process-wide "not before" instant (used by ``backpressure.Controller`` when a
  429 means the account's limit, not one request's bad luck).
- ``Pacer``: sends at a rate that can change, spaced by the time each was actually let go (a late
  thread does not let the next one go early: a leaky bucket without burst refuses any two
  requests closer than 1/rate). Non-blocking (``reserve`` / ``claim``), so a simulation on a
  virtual clock drives the same code as the worker's threads.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable


class RateLimiter:
    """Evenly spaced units; ``acquire(cost)`` blocks until the caller's share of time comes."""

    def __init__(
        self,
        per_minute: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if per_minute <= 0:
            raise ValueError("per_minute must be positive")
        self.per_minute = per_minute
        self.interval = 60.0 / per_minute
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next = 0.0

    def acquire(self, cost: float = 1.0) -> float:
        """Wait for ``cost`` units; returns the seconds spent waiting."""
        with self._lock:
            now = self._clock()
            slot = max(now, self._next)
            self._next = slot + cost * self.interval
        wait = slot - now
        if wait > 0:
            self._sleep(wait)
        return max(wait, 0.0)

    def adjust(self, units: float) -> None:
        """Settle an estimate: positive ``units`` were used beyond what was paid, negative
        ones were paid but not used (they come back, but never as a burst from the past)."""
        with self._lock:
            self._next += units * self.interval
            if units < 0:
                self._next = max(self._clock(), self._next)


class SlowStartSlots:
    """How many requests may be in flight: from ``initial`` slots, one more per success until the
    first 429 ends the slow start, then one more per ``limit`` successes, up to ``maximum``. It
    never shrinks: what a 429 means (a limit or noise) is the back-pressure controller's to
    decide, and it answers with a pace, not fewer slots (fewer slots at the same latency is a
    slower pace that also idles the pool under noise)."""

    def __init__(self, maximum: int, initial: int | None = None):
        self.maximum = max(1, maximum)
        self._slow_start = initial is not None and initial < self.maximum
        self._limit = float(self.maximum if initial is None else max(1, min(initial, maximum)))
        self._in_flight = 0
        self._cond = threading.Condition()

    @property
    def limit(self) -> int:
        return int(self._limit)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def try_acquire(self) -> bool:
        """Take a slot if one is free now (for a simulation's virtual threads)."""
        with self._cond:
            if self._in_flight >= int(self._limit):
                return False
            self._in_flight += 1
            return True

    def acquire(self) -> None:
        """Take a slot, waiting for one to be free."""
        with self._cond:
            while self._in_flight >= int(self._limit):
                self._cond.wait(0.5)
            self._in_flight += 1

    def release(self, succeeded: bool = False, end_slow_start: bool = False) -> None:
        with self._cond:
            self._in_flight -= 1
            if end_slow_start:
                self._slow_start = False
            if succeeded and self._limit < self.maximum:
                step = 1.0 if self._slow_start else 1.0 / self._limit
                self._limit = min(float(self.maximum), self._limit + step)
            self._cond.notify_all()


class ThrottleGate:
    """A shared "not before" instant that every thread waits for before sending."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._until = 0.0

    @property
    def until(self) -> float:
        """The instant (on the gate's clock) before which nothing is sent."""
        return self._until

    def hold(self, seconds: float) -> None:
        with self._lock:
            self._until = max(self._until, self._clock() + seconds)

    def wait(self) -> float:
        with self._lock:
            wait = self._until - self._clock()
        if wait > 0:
            self._sleep(wait)
            return wait
        return 0.0


MIN_RATE = 0.2  # requests/s: the slowest pace any controller sets (a 12-per-minute limit)
GAP = 0.97  # the least gap between two sends, in turns: late ones catch up, by this much only


class Ticket:
    """A turn handed out by ``Pacer.reserve``: not before ``at``, valid for one pace (``epoch``)."""

    __slots__ = ("at", "epoch")

    def __init__(self, at: float, epoch: int):
        self.at, self.epoch = at, epoch


class Pacer:
    """Evenly spaced sends at ``rate`` a second (None: no pace). Thread-safe.

    ``reserve()`` hands out turns in order, one every 1/rate; ``claim(ticket)`` is called when the
    turn comes and lets the request go (None) or says how much longer to wait: until the turn,
    and never sooner than 1/rate after the last request actually let go, so a thread that woke
    late pushes the next turns back instead of letting two go together. A slower pace voids the
    turns handed out at the old one (their holders take new ones), so requests queued at a fast
    pace do not pour out at it afterwards.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self.rate: float | None = None
        self.epoch = 0
        self._next = -math.inf
        self._last = -math.inf

    def set_rate(self, rate: float | None) -> None:
        """A new pace from now on; turns handed out at a faster one are void."""
        with self._lock:
            old = self.rate
            if rate is not None and old is not None and 0.9 * old <= rate <= old:
                self.rate = rate  # a small trim: the queue keeps its order
                return
            self.rate = rate
            if rate is None or old is None or rate < old:
                self.epoch += 1
                self._next = self._clock()

    def reserve(self) -> Ticket:
        with self._lock:
            now = self._clock()
            if self.rate is None:
                return Ticket(now, self.epoch)
            at = max(now, self._next)
            self._next = at + 1.0 / self.rate
            return Ticket(at, self.epoch)

    def claim(self, ticket: Ticket, not_before: float = -math.inf) -> float | None:
        """None: go now (the send is counted); else the seconds to wait before claiming again."""
        with self._lock:
            now = self._clock()
            if ticket.epoch != self.epoch:  # the pace changed: a new turn at the new one
                ticket.epoch = self.epoch
                ticket.at = now
                if self.rate is not None:
                    ticket.at = max(now, self._next)
                    self._next = ticket.at + 1.0 / self.rate
            at = max(ticket.at, not_before)
            if self.rate is not None:
                at = max(at, self._last + GAP / self.rate)
            if at > now:
                return at - now
            self._last = now
            return None


def worker_share(per_minute: float, workers: int) -> float:
    """A worker process's part of a job-wide budget (0 means no budget)."""
    if per_minute <= 0:
        return 0.0
    return per_minute / max(1, workers)


def worker_count_share(total: int, workers: int) -> int:
    """A worker process's whole-number part of a job-wide count (at least 1 when there is one)."""
    return max(1, total // max(1, workers)) if total > 0 else 0
