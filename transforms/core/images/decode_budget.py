"""A per-process budget of decoded megapixels in flight. No Beam import.

Decoding is where an image costs memory: an 80 MP PNG holds ~240 MB of RGB pixels, and more while
it is converted and scaled. A worker prepares images on ``--max_concurrency + 2`` threads, so
without a bound its peak memory grows with the concurrency flag. ``DecodeBudget`` is a weighted
semaphore counted in pixels: a decode holds the pixels it will decode (after JPEG draft scaling)
from ``load`` to the end of encoding, and further decodes wait while the sum would pass the
budget. One process shares one budget per size (``for_megapixels``), whatever the number of
loaders or threads.

- Waiters are served in arrival order, so a large image is not starved by a stream of small ones.
- An image larger than the whole budget waits until nothing else is decoding, then decodes alone.
- Freed pixels go back to the OS: glibc serves large allocations from per-thread arenas and keeps
  what is freed there, so without ``_return_freed_memory`` each of 16 threads would keep the peak
  of the largest image it ever decoded resident (5 GB for 16 x 80 MP PNGs, budget or not).
- Waiting has no deadline of its own: a decode waits only for other decodes, each bounded by its
  own (finite) pixel count and by the time one decode takes, so the queue always drains. The row's
  wall-clock deadlines belong to the reads before it and the request after it.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import threading
from collections.abc import Iterator


class DecodeBudget:
    def __init__(self, capacity: int):
        if capacity <= 0:
            raise ValueError("a decode budget needs a positive number of pixels")
        self.capacity = capacity
        self._used = 0
        self._active = 0
        self._queue: collections.deque[object] = collections.deque()
        self._cond = threading.Condition()

    @property
    def in_use(self) -> int:
        with self._cond:
            return self._used

    def _fits(self, weight: int) -> bool:
        if self._active == 0:
            return True  # alone: always runs, even when larger than the whole budget
        return self._used + weight <= self.capacity

    def acquire(self, pixels: int) -> int:
        """Wait for ``pixels`` (at least 1) and take them; returns what was taken."""
        weight = max(1, int(pixels))
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            try:
                while self._queue[0] is not ticket or not self._fits(weight):
                    self._cond.wait()
            finally:
                self._queue.remove(ticket)
            self._used += weight
            self._active += 1
            # the next in line may fit as well
            self._cond.notify_all()
        return weight

    def release(self, weight: int) -> None:
        with self._cond:
            self._used -= weight
            self._active -= 1
            self._cond.notify_all()

    @contextlib.contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        weight = self.acquire(pixels)
        try:
            yield
        finally:
            self.release(weight)


_BUDGETS: dict[int, DecodeBudget] = {}
_LOCK = threading.Lock()
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 1024 * 1024


def _return_freed_memory() -> None:
    """Have glibc map every allocation of 1 MiB or more (Pillow's 16 MiB pixel blocks, file
    bytes) on its own and unmap it on free, instead of keeping it in the allocating thread's
    arena. Fixing the threshold also stops glibc from raising it after the first large free.
    Process-wide; a no-op where there is no glibc ``mallopt``."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def for_megapixels(megapixels: float) -> DecodeBudget | None:
    """The process's budget of ``megapixels`` (one per size); None for 0 (no limit)."""
    if not megapixels or megapixels <= 0:
        return None
    capacity = max(1, int(megapixels * 1_000_000))
    with _LOCK:
        budget = _BUDGETS.get(capacity)
        if budget is None:
            if not _BUDGETS:
                _return_freed_memory()
            budget = _BUDGETS[capacity] = DecodeBudget(capacity)
        return budget


@contextlib.contextmanager
def held(budget: DecodeBudget | None, pixels: int) -> Iterator[None]:
    """``budget.hold(pixels)``, or nothing when there is no budget."""
    if budget is None:
        yield
        return
    with budget.hold(pixels):
        yield
