"""A request-rate limiter shared by all threads of one worker process (no Beam import).

Requests are spaced evenly (one slot every ``60 / per_minute`` seconds) instead of being let out in
bursts, so a provider that enforces its limit over short windows never sees more than the budget.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RateLimiter:
    """Hands out evenly spaced send slots; ``acquire()`` blocks until the caller's slot comes."""

    def __init__(
        self,
        per_minute: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if per_minute <= 0:
            raise ValueError("per_minute must be positive")
        self.interval = 60.0 / per_minute
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next = 0.0

    def acquire(self) -> float:
        """Wait for the next slot; returns the seconds spent waiting."""
        with self._lock:
            now = self._clock()
            slot = max(now, self._next)
            self._next = slot + self.interval
        wait = slot - now
        if wait > 0:
            self._sleep(wait)
        return max(wait, 0.0)


def worker_share(per_minute: float, workers: int) -> float:
    """A worker's part of a job-wide budget (0 means no budget)."""
    if per_minute <= 0:
        return 0.0
    return per_minute / max(1, workers)
