"""Flow control shared by all threads of one worker process (no Beam import).

- ``RateLimiter``: a budget of units per minute (requests, or tokens). Units are handed out as
  evenly spaced slots instead of bursts, so a provider that enforces its limit over short windows
  never sees more than the budget; a caller may pay for more units than one (a request's
  estimated tokens) and settle the difference later (``adjust``).
- ``AdaptiveConcurrency``: how many requests may be in flight, from a slow start, lowered
  multiplicatively when told of throttling and raised additively as requests succeed again.
- ``ThrottleGate``: a process-wide "not before" instant (used by ``backpressure.Controller`` when a
  429 means the account's limit, not one request's bad luck).
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


class AdaptiveConcurrency:
    """A limit on requests in flight that halves on throttling and creeps back on success.

    One halving per ``cooldown`` seconds at most: a burst of 429s that all answer requests sent
    before the first one arrived is one signal, not sixteen.
    """

    def __init__(
        self,
        maximum: int,
        minimum: int = 1,
        cooldown: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        initial: int | None = None,
    ):
        self.maximum = max(1, maximum)
        self.minimum = max(1, min(minimum, self.maximum))
        self.cooldown = cooldown
        self._clock = clock
        # slow start: from ``initial`` slots, one more per success until the first throttling
        self._slow_start = initial is not None and initial < self.maximum
        self._limit = float(self.maximum if initial is None else max(1, min(initial, maximum)))
        self._in_flight = 0
        self._last_cut = -math.inf
        self._cond = threading.Condition()

    @property
    def limit(self) -> int:
        return int(self._limit)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def acquire(self) -> float:
        """Take a slot; returns the seconds waited while the limit was cut below the maximum
        (time the provider's throttling cost us, as opposed to our own concurrency cap)."""
        throttled = 0.0
        with self._cond:
            while self._in_flight >= int(self._limit):
                cut = int(self._limit) < self.maximum
                start = self._clock()
                self._cond.wait(0.5)
                if cut:
                    throttled += self._clock() - start
            self._in_flight += 1
        return throttled

    def release(
        self, throttled: bool = False, succeeded: bool = False, end_slow_start: bool = False
    ) -> None:
        with self._cond:
            self._in_flight -= 1
            if end_slow_start:
                self._slow_start = False
            if throttled:
                self._slow_start = False
                now = self._clock()
                if now - self._last_cut >= self.cooldown:
                    self._limit = max(float(self.minimum), self._limit / 2)
                    self._last_cut = now
            elif succeeded and self._limit < self.maximum:
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


def worker_share(per_minute: float, workers: int) -> float:
    """A worker process's part of a job-wide budget (0 means no budget)."""
    if per_minute <= 0:
        return 0.0
    return per_minute / max(1, workers)


def worker_count_share(total: int, workers: int) -> int:
    """A worker process's whole-number part of a job-wide count (at least 1 when there is one)."""
    return max(1, total // max(1, workers)) if total > 0 else 0
